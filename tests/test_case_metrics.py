"""Per-case (per-volume, per-patient) metrics against numpy references.

A case's Dice comes from the confusion counts summed over all of its images (a volume's
voxels pooled), not from the mean of its slices' Dice; `ignore_empty` (MONAI's name)
leaves cases whose label has no foreground out of the per-case Dice, IoU and sensitivity.

Tolerances: counts are sums of 0/1 indicators and compare exactly; a ratio of two exact
integer counts below 2**24 is computed in float32 with one rounding of the quotient, so it
is within 2**-23 (relative) of the float64 reference: rtol 1e-6 covers that on any CPU.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from unet_jax import metrics
from unet_jax.data.base import Example
from unet_jax.evaluation import Evaluator, exact_auc

from test_metrics import np_auc_ranks  # the average-rank formula in float64

SETTINGS = settings(max_examples=25, deadline=None)
RTOL = 1e-6  # float32 quotient of exact counts (module docstring)

# Under jit, as a training or evaluation loop calls them. Every hypothesis example has a new
# shape: one compiled program per shape costs a third of eager mode's op-by-op compiles.
confusion_counts = jax.jit(metrics.confusion_counts, static_argnames=("threshold", "axis", "per_case"))
class_confusion_counts = jax.jit(metrics.class_confusion_counts, static_argnames=("num_classes", "per_case"))
sum_by_case = jax.jit(metrics.sum_by_case, static_argnames="num_cases")


def np_counts(pred: np.ndarray, label: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
    """(tp, fp, tn, fn) of binary arrays, as int64, within `valid`."""
    w = np.ones(pred.shape, bool) if valid is None else valid.astype(bool)
    p, y = pred.astype(bool), label.astype(bool)
    return np.array([(w & p & y).sum(), (w & p & ~y).sum(), (w & ~p & ~y).sum(), (w & ~p & y).sum()], np.int64)


def np_dice(c: np.ndarray) -> float:
    tp, fp, _, fn = c
    den = 2 * tp + fp + fn
    return 2 * tp / den if den else 1.0  # nothing labelled, nothing predicted: a perfect 1


@st.composite
def cased_batches(draw):
    """(preds, labels, valid, case_index, num_cases): binary (B, H, W) images grouped into cases."""
    b = draw(st.integers(1, 8))
    h, w = draw(st.integers(1, 6)), draw(st.integers(1, 6))
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    num_cases = draw(st.integers(1, b))
    case_index = np.concatenate([np.arange(num_cases), rng.integers(0, num_cases, b - num_cases)])
    rng.shuffle(case_index)
    p_fg = draw(st.sampled_from([0.0, 0.1, 0.5, 1.0]))
    labels = (rng.random((b, h, w)) < p_fg).astype(np.float32)
    preds = rng.random((b, h, w)).astype(np.float32)
    valid = (rng.random((b, h, w)) < 0.8).astype(np.float32)
    return preds, labels, valid, case_index, num_cases


@SETTINGS
@given(cased_batches())
def test_sum_by_case_pools_each_cases_pixels(batch):
    preds, labels, valid, case_index, num_cases = batch
    per_image = confusion_counts(preds, labels, mask=valid, per_case=True)
    got = sum_by_case(per_image, case_index, num_cases=num_cases)
    for k in range(num_cases):
        mine = case_index == k
        expected = np_counts(preds[mine] >= 0.5, labels[mine], valid[mine])
        np.testing.assert_array_equal([np.asarray(c)[k] for c in got], expected)


@SETTINGS
@given(st.integers(2, 5), st.integers(1, 4), st.integers(0, 2**31 - 1))
def test_class_confusion_counts_are_one_vs_rest_of_argmax(num_classes, b, seed):
    rng = np.random.default_rng(seed)
    probs = rng.random((b, 5, 7, num_classes)).astype(np.float32)
    labels = rng.integers(0, num_classes, (b, 5, 7))
    valid = rng.random((b, 5, 7)) < 0.7
    got = class_confusion_counts(probs, labels, num_classes=num_classes, mask=valid, per_case=True)
    pred = probs.argmax(-1)
    for i in range(b):
        for k in range(num_classes):
            expected = np_counts(pred[i] == k, labels[i] == k, valid[i])
            np.testing.assert_array_equal([np.asarray(c)[i, k] for c in got], expected)


@SETTINGS
@given(cased_batches(), st.booleans())
def test_summarize_per_case_dice_and_ignore_empty(batch, ignore_empty):
    preds, labels, valid, case_index, num_cases = batch
    per_case = sum_by_case(confusion_counts(preds, labels, mask=valid, per_case=True), case_index, num_cases=num_cases)
    out = metrics.summarize(per_case, ignore_empty=ignore_empty)
    counts = [np_counts(preds[case_index == k] >= 0.5, labels[case_index == k], valid[case_index == k])
              for k in range(num_cases)]
    empty = [c[0] + c[3] == 0 for c in counts]
    scored = [np_dice(c) for c, e in zip(counts, empty) if not (ignore_empty and e)]
    assert out["num_cases"] == num_cases and out["num_cases_empty"] == sum(empty)
    np.testing.assert_allclose(out["dice"], np_dice(np.sum(counts, axis=0)), rtol=RTOL)
    if scored:
        np.testing.assert_allclose(out["dice_per_case_mean"], np.mean(scored), rtol=RTOL)
        np.testing.assert_allclose(out["dice_per_case_median"], np.median(scored), rtol=RTOL)
    else:  # every case left out: undefined, not a made-up number
        assert np.isnan(out["dice_per_case_mean"]) and np.isnan(out["dice_per_case_median"])


def test_volume_dice_is_not_the_mean_of_slice_dice():
    # One case of two slices: a large, well-predicted lesion and a tiny missed one. Pooled,
    # the volume's Dice is high; the slice mean is dragged down to about 0.5.
    big = np.zeros((10, 10)), np.zeros((10, 10))
    big[0][:8, :8] = 1  # label: 64 px
    big[1][:8, :8] = 1  # predicted exactly
    small_label, small_pred = np.zeros((10, 10)), np.zeros((10, 10))
    small_label[0, 0] = 1
    ev = Evaluator(2, ignore_empty=True, with_auc=False)
    for i, (label, pred) in enumerate([big, (small_label, small_pred)]):
        ev.add(Example(id=f"s{i}", image=np.zeros((10, 10)), label=label.astype(np.uint8), case="p1"), pred)
    result = ev.result()
    assert [r["dice"] for r in result.per_image] == [1.0, 0.0]
    np.testing.assert_allclose(result.per_case[0]["dice"], 2 * 64 / (2 * 64 + 1), rtol=RTOL)
    assert result.per_case[0]["images"] == 2


@pytest.mark.parametrize("ignore_empty", [True, False])
def test_evaluator_groups_images_by_case(ignore_empty):
    """Binary task with a FOV: the per-case rows and summary equal numpy on each case's pooled pixels."""
    rng = np.random.default_rng(3)
    cases = ["a", "a", "b", "c", "c", "c", "d"]  # d: no foreground anywhere
    ev = Evaluator(2, ignore_empty=ignore_empty, with_auc=False)
    per_case: dict[str, np.ndarray] = {}
    for i, case in enumerate(cases):
        label = (rng.random((6, 9)) < (0.0 if case == "d" else 0.3)).astype(np.uint8)
        valid = (rng.random((6, 9)) < 0.9).astype(np.uint8)
        probs = rng.random((6, 9)).astype(np.float32)
        ev.add(Example(id=f"{case}{i}", image=np.zeros((6, 9)), label=label, valid=valid, case=case), probs)
        per_case[case] = per_case.get(case, 0) + np_counts(probs >= 0.5, label, valid)
    result = ev.result()
    assert [r["case"] for r in result.per_case] == ["a", "b", "c", "d"]
    assert [r["images"] for r in result.per_case] == [2, 1, 3, 1]
    for row in result.per_case:
        np.testing.assert_allclose(row["dice"], np_dice(per_case[row["case"]]), rtol=RTOL)
    scored = [np_dice(c) for k, c in per_case.items() if not (ignore_empty and k == "d")]
    np.testing.assert_allclose(result.summary["dice_per_case_mean"], np.mean(scored), rtol=RTOL)
    np.testing.assert_allclose(result.summary["dice_per_case_median"], np.median(scored), rtol=RTOL)
    assert result.summary["ignore_empty"] is ignore_empty and result.summary["num_cases_empty"] == 1


def test_evaluator_multiclass_per_class_dice():
    rng = np.random.default_rng(5)
    ev = Evaluator(3, with_auc=False)
    totals = np.zeros((3, 4), np.int64)  # class -> counts over all pixels (row 0 unused)
    for i in range(4):
        label = rng.integers(0, 3, (7, 5)).astype(np.uint8)
        probs = rng.random((7, 5, 3)).astype(np.float32)
        ev.add(Example(id=str(i), image=np.zeros((7, 5)), label=label), probs)
        for k in (1, 2):
            c = np_counts(probs.argmax(-1) == k, label == k)
            totals[k] += c
            np.testing.assert_allclose(ev.per_image[i][f"dice_class{k}"], np_dice(c), rtol=RTOL)
    s = ev.result().summary
    for k in (1, 2):  # foreground classes only; background Dice would flatter every model
        np.testing.assert_allclose(s[f"dice_class{k}"], np_dice(totals[k]), rtol=RTOL)
    np.testing.assert_allclose(s["dice"], (np_dice(totals[1]) + np_dice(totals[2])) / 2, rtol=RTOL)
    assert "dice_class0" not in s


def test_evaluator_auc_per_image_case_and_pooled_matches_the_rank_formula():
    """The exact AUC within each image's FOV, each case's pooled pixels and all pixels.

    Images of many sizes exercise the padding to shared lengths; scores on a coarse grid
    (0 included, the padding's value) tie often. The float32 AUC is the exact pair count
    over n_pos * n_neg, rounded once or twice: rtol 1e-6."""
    rng = np.random.default_rng(8)
    ev = Evaluator(2)
    pixels: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}
    for i, (h, w) in enumerate([(5, 7), (9, 9), (16, 4), (11, 13), (6, 10)]):
        label = (rng.random((h, w)) < 0.3).astype(np.uint8)
        label[0, 0], label[-1, -1] = 1, 0  # both classes in every image
        valid = (rng.random((h, w)) < 0.8).astype(np.uint8)
        valid[0, 0] = valid[-1, -1] = 1
        probs = rng.integers(0, 5, (h, w)).astype(np.float32) / 4
        case = "ab"[i % 2] if i < 4 else "c"  # c: a case of one image
        ev.add(Example(id=f"i{i}", image=np.zeros((h, w)), label=label, valid=valid, case=case), probs)
        inside = valid > 0
        pixels.setdefault(case, []).append((probs[inside], label[inside] > 0))
        np.testing.assert_allclose(ev.per_image[-1]["auc"], np_auc_ranks(probs[inside], label[inside] > 0), rtol=1e-6)
    result = ev.result()

    def pooled(pairs):
        return np_auc_ranks(np.concatenate([p[0] for p in pairs]), np.concatenate([p[1] for p in pairs]))

    for row in result.per_case:
        np.testing.assert_allclose(row["auc"], pooled(pixels[row["case"]]), rtol=1e-6)
    assert [r["images"] for r in result.per_case] == [2, 2, 1]
    np.testing.assert_allclose(result.summary["auc"], pooled(pixels["a"] + pixels["b"] + pixels["c"]), rtol=1e-6)


@given(n=st.integers(0, 70), seed=st.integers(0, 2**32 - 1))
@settings(max_examples=12, deadline=None)  # each length compiles once
def test_exact_auc_padding_changes_nothing(n, seed):
    rng = np.random.default_rng(seed)
    s = rng.integers(0, 3, n).astype(np.float32) / 2  # ties, and the padding's 0
    y = rng.random(n) < 0.5
    got = exact_auc(s, y)
    want = np_auc_ranks(s, y)
    if np.isnan(want):
        assert np.isnan(got)
    else:
        np.testing.assert_allclose(got, want, rtol=1e-6)
