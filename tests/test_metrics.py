"""Metrics vs independent numpy references: counts, ratios, summaries and exact ROC AUC."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from unet_jax import metrics

SETTINGS = settings(max_examples=25, deadline=None)
roc_auc = jax.jit(metrics.roc_auc)  # one compile per input layout instead of op-by-op dispatch

# --------------------------------------------------------------------------- numpy references


def np_counts(p, y, w, threshold, axis):
    pb, yb = p >= threshold, y >= 0.5
    return tuple(
        (w * (a & b)).sum(axis=axis) for a, b in [(pb, yb), (pb, ~yb), (~pb, ~yb), (~pb, yb)]
    )  # tp, fp, tn, fn


def np_ratio(num, den, fp, fn):
    """num/den; 0/0 is 1 when prediction agrees with label (fp + fn == 0), else 0."""
    num, den = np.asarray(num, np.float64), np.asarray(den, np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / den, np.where(np.asarray(fp) + np.asarray(fn) == 0, 1.0, 0.0))


NP_METRICS = {
    "dice": lambda tp, fp, tn, fn: np_ratio(2 * tp, 2 * tp + fp + fn, fp, fn),
    "iou": lambda tp, fp, tn, fn: np_ratio(tp, tp + fp + fn, fp, fn),
    "sensitivity": lambda tp, fp, tn, fn: np_ratio(tp, tp + fn, fp, fn),
    "specificity": lambda tp, fp, tn, fn: np_ratio(tn, tn + fp, fp, fn),
    "precision": lambda tp, fp, tn, fn: np_ratio(tp, tp + fp, fp, fn),
    "accuracy": lambda tp, fp, tn, fn: np_ratio(tp + tn, tp + fp + tn + fn, fp, fn),
}


def np_average_ranks(a):
    """1-based ranks, ties get the average of the ranks they span."""
    order = np.argsort(a, kind="mergesort")
    sorted_a = a[order]
    ranks = np.empty(len(a))
    i = 0
    while i < len(a):
        j = i
        while j + 1 < len(a) and sorted_a[j + 1] == sorted_a[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1  # mean of ranks i+1 .. j+1
        i = j + 1
    return ranks


def np_auc_ranks(s, y):
    s, y = np.asarray(s, np.float64).ravel(), np.asarray(y).ravel().astype(bool)
    n_pos, n_neg = y.sum(), (~y).sum()
    if n_pos == 0 or n_neg == 0:
        return np.nan
    r = np_average_ranks(s)
    return (r[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def np_auc_pairs(s, y):
    s, y = np.asarray(s, np.float64).ravel(), np.asarray(y).ravel().astype(bool)
    d = s[y][:, None] - s[~y][None, :]
    return ((d > 0) + 0.5 * (d == 0)).mean()


# --------------------------------------------------------------------------- random cases


@st.composite
def seg_cases(draw):
    """preds/labels/mask in varied layouts, plus (B, H, W) float64/bool references."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    b, h, w = draw(st.sampled_from([(1, 4, 5), (3, 6, 6), (4, 3, 7)]))
    p = rng.random((b, h, w)).astype(np.float32)
    if draw(st.booleans()):
        p = np.round(p * 4) / 4  # values exactly at the threshold
    y = rng.random((b, h, w)) < draw(st.sampled_from([0.0, 0.3, 0.7, 1.0]))
    if draw(st.booleans()):
        p[y == 0] = 0.0  # sometimes an empty prediction where the label is empty
    mask_kind = draw(st.sampled_from(["none", "float", "bool", "trailing", "zeros", "weights", "hw"]))
    if mask_kind == "none":
        mask, w_ref = None, np.ones((b, h, w))
    elif mask_kind == "hw":
        mask = (rng.random((h, w)) < 0.6).astype(np.float32)
        w_ref = np.broadcast_to(mask, (b, h, w)).astype(np.float64)
    else:
        m = rng.random((b, h, w)) < 0.6
        if mask_kind == "zeros":
            m[:] = False
        w_ref = m.astype(np.float64)
        mask = {"float": m.astype(np.float32), "bool": m, "trailing": m[..., None].astype(np.uint8)}.get(
            mask_kind, m
        )
        if mask_kind == "weights":
            mask = rng.random((b, h, w)).astype(np.float32)
            w_ref = mask.astype(np.float64)
    channel = draw(st.sampled_from(["none", "preds", "labels", "both"]))
    preds = p[..., None] if channel in ("preds", "both") else p
    labels = y.astype(np.float32)
    labels = labels[..., None] if channel in ("labels", "both") else labels
    return preds, labels, mask, p.astype(np.float64), y, w_ref


# --------------------------------------------------------------------------- counts


@SETTINGS
@given(case=seg_cases(), threshold=st.sampled_from([0.25, 0.5, 0.75]))
def test_confusion_counts_match_numpy(case, threshold):
    preds, labels, mask, p, y, w = case
    glob = metrics.confusion_counts(preds, labels, mask=mask, threshold=threshold)
    assert isinstance(glob, metrics.ConfusionCounts)
    for got, exp in zip(glob, np_counts(p, y, w, threshold, axis=None)):
        assert got.dtype == jnp.float32 and got.shape == ()
        np.testing.assert_allclose(got, exp, rtol=1e-5)
    per_case = metrics.confusion_counts(preds, labels, mask=mask, threshold=threshold, per_case=True)
    by_axis = metrics.confusion_counts(preds, labels, mask=mask, threshold=threshold, axis=(1, 2))
    for got, alt, exp in zip(per_case, by_axis, np_counts(p, y, w, threshold, axis=(1, 2))):
        assert got.shape == (p.shape[0],)
        np.testing.assert_allclose(got, exp, rtol=1e-5)
        np.testing.assert_array_equal(got, alt)


def test_confusion_counts_per_case_vs_loop_and_vmap():
    rng = np.random.default_rng(0)
    p = rng.random((5, 9, 8)).astype(np.float32)
    y = (rng.random((5, 9, 8)) < 0.3).astype(np.float32)
    m = (rng.random((5, 9, 8)) < 0.8).astype(np.float32)
    per_case = metrics.confusion_counts(p, y, mask=m, per_case=True)
    vm = jax.vmap(lambda a, b, c: metrics.confusion_counts(a, b, mask=c))(p, y, m)
    jit = jax.jit(lambda a, b, c: metrics.confusion_counts(a, b, mask=c, per_case=True))(p, y, m)
    for i in range(5):
        exp = np_counts(p[i], y[i] > 0.5, m[i], 0.5, axis=None)
        for k in range(4):
            assert per_case[k][i] == exp[k] == vm[k][i] == jit[k][i]


def test_confusion_counts_rejects_axis_and_per_case():
    with pytest.raises(ValueError):
        metrics.confusion_counts(np.zeros((2, 3, 3)), np.zeros((2, 3, 3)), axis=(1, 2), per_case=True)


# --------------------------------------------------------------------------- ratios


counts_strategy = st.tuples(*[st.integers(0, 6)] * 4)


@SETTINGS
@given(rows=st.lists(counts_strategy, min_size=8, max_size=8))  # fixed length: one compile
def test_ratio_metrics_match_numpy_elementwise(rows):
    arr = np.asarray(rows, np.float64)  # small counts so zeros in every position are common
    counts = metrics.ConfusionCounts(*(jnp.asarray(arr[:, k], jnp.float32) for k in range(4)))
    for name, fn in metrics.METRICS.items():
        got = fn(counts)
        assert got.shape == (len(rows),) and got.dtype == jnp.float32
        np.testing.assert_allclose(got, NP_METRICS[name](*arr.T), rtol=1e-6, err_msg=name)
        # Scalar counts give the same numbers (global and per-case paths share the code).
        one = fn(metrics.ConfusionCounts(*(np.float32(v) for v in rows[-1])))
        np.testing.assert_allclose(one, got[-1], rtol=1e-6)


@SETTINGS
@given(rows=st.lists(st.tuples(*[st.integers(0, 2**40)] * 4) | counts_strategy, min_size=1, max_size=9))
def test_host_metrics_match_numpy_in_float64(rows):
    """The host-side figures: float64 (exact for counts beyond float32's 2**24), the same
    0/0 convention; one division each, so within 1 ulp of the reference (rtol 1e-15)."""
    arr = np.asarray(rows, np.float64)
    got = metrics.host_metrics(metrics.ConfusionCounts(*arr.T))
    assert list(got) == list(metrics.METRICS)
    for name, values in got.items():
        assert values.shape == (len(rows),) and values.dtype == np.float64
        np.testing.assert_allclose(values, NP_METRICS[name](*arr.T), rtol=1e-15, atol=0, err_msg=name)
    zero = metrics.host_metrics(metrics.ConfusionCounts(*np.zeros((4, 1))))
    assert all(v.tolist() == [1.0] for v in zero.values())  # nothing to find, nothing found


def test_empty_prediction_and_label_score_one():
    z = np.zeros((2, 5, 5), np.float32)
    c = metrics.confusion_counts(z, z)
    for name in ["dice", "iou", "sensitivity", "precision", "specificity", "accuracy"]:
        assert float(metrics.METRICS[name](c)) == 1.0
    # All pixels masked out: nothing to judge, every metric agrees with the convention.
    ones = np.ones_like(z)
    cm = metrics.confusion_counts(ones, z, mask=z)
    assert all(float(fn(cm)) == 1.0 for fn in metrics.METRICS.values())
    # Empty label, false positives: sensitivity is 0/0 but the prediction disagrees.
    cf = metrics.confusion_counts(ones, z)
    assert float(metrics.sensitivity(cf)) == 0.0 and float(metrics.dice(cf)) == 0.0


def test_ratio_gradients_finite_at_zero():
    def f(t):
        c = metrics.ConfusionCounts(t, t, t, t)
        return sum(fn(c) for fn in metrics.METRICS.values())

    assert np.isfinite(jax.grad(f)(jnp.float32(0.0)))
    assert np.all(np.isfinite(jax.vmap(jax.grad(f))(jnp.array([0.0, 1.0, 3.0]))))


@SETTINGS
@given(case=seg_cases())
def test_summarize_global_and_per_case_mean(case):
    preds, labels, mask, p, y, w = case
    out = metrics.summarize(metrics.confusion_counts(preds, labels, mask=mask, per_case=True))
    per_case = np_counts(p, y, w, 0.5, axis=(1, 2))
    total = [c.sum() for c in per_case]
    expected_keys = (set(metrics.METRICS) | {f"{k}_per_case_mean" for k in metrics.METRICS}
                     | {f"{k}_per_case_median" for k in metrics.METRICS} | {"num_cases", "num_cases_empty"})
    assert set(out) == expected_keys
    assert all(isinstance(v, float) for v in out.values())
    assert out["num_cases"] == p.shape[0]
    for name, ref in NP_METRICS.items():
        np.testing.assert_allclose(out[name], ref(*total), rtol=1e-5, err_msg=name)
        np.testing.assert_allclose(out[f"{name}_per_case_mean"], ref(*per_case).mean(), rtol=1e-5)
        np.testing.assert_allclose(out[f"{name}_per_case_median"], np.median(ref(*per_case)), rtol=1e-5)


# --------------------------------------------------------------------------- ROC AUC


@st.composite
def auc_cases(draw):
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    shape = draw(st.sampled_from([(37,), (2, 5, 6), (3, 8, 8, 1)]))
    y = rng.random(shape) < draw(st.sampled_from([0.1, 0.5, 0.9]))
    s = (rng.normal(size=shape) + draw(st.floats(0.0, 2.0)) * y).astype(np.float32)
    levels = draw(st.sampled_from([None, 2, 5, 20]))
    if levels is not None:  # quantized scores force many ties, within and across classes
        s = (np.round(s * levels / 4) / levels).astype(np.float32)
    # Always an array (all ones half the time): fewer layouts to compile than mask=None.
    mask = np.ones(shape, bool) if draw(st.booleans()) else rng.random(shape) < 0.7
    return s, y, mask


@SETTINGS
@given(case=auc_cases())
def test_roc_auc_matches_rank_reference(case):
    s, y, mask = case
    ref = np_auc_ranks(s[mask], y[mask])
    got = roc_auc(s, y.astype(np.float32), mask=mask.astype(np.float32))
    assert got.shape == () and got.dtype == jnp.float32
    if np.isnan(ref):
        assert np.isnan(float(got))
    else:
        np.testing.assert_allclose(float(got), ref, rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(ref, np_auc_pairs(s[mask], y[mask]), rtol=1e-9)


@settings(max_examples=10, deadline=None)
@given(case=auc_cases(), seed=st.integers(0, 2**32 - 1))
def test_roc_auc_ignores_masked_pixels(case, seed):
    s, y, _ = case
    rng = np.random.default_rng(seed)
    mask = rng.random(s.shape) < 0.6
    s2 = np.where(mask, s, rng.normal(size=s.shape)).astype(np.float32)
    y2 = np.where(mask, y, rng.random(s.shape) < 0.5)
    y, y2, mask = y.astype(np.float32), y2.astype(np.float32), mask.astype(np.float32)
    a, b = float(roc_auc(s, y, mask=mask)), float(roc_auc(s2, y2, mask=mask))
    assert (np.isnan(a) and np.isnan(b)) or a == b


def test_roc_auc_degenerate_is_nan():
    s = np.random.default_rng(0).random((4, 4)).astype(np.float32)
    assert np.isnan(float(roc_auc(s, np.ones((4, 4)))))
    assert np.isnan(float(roc_auc(s, np.zeros((4, 4)))))
    y = np.eye(4)
    assert np.isnan(float(roc_auc(s, y, mask=np.zeros((4, 4)))))
    assert np.isnan(float(roc_auc(s, y, mask=y)))  # only positives left


def test_roc_auc_jit_vmap_and_invariances():
    rng = np.random.default_rng(1)
    y = rng.random((3, 8, 8, 1)) < 0.3  # a layout `auc_cases` already compiled
    s = (rng.normal(size=y.shape) + y).astype(np.float32)
    m = rng.random(y.shape) < 0.8
    yf, mf = y.astype(np.float32), m.astype(np.float32)
    ref = np_auc_ranks(s[m], y[m])
    np.testing.assert_allclose(float(roc_auc(s, yf, mask=mf)), ref, rtol=1e-6)
    per = jax.vmap(lambda a, b, c: roc_auc(a, b, mask=c))(s, yf, mf)
    np.testing.assert_allclose(per, [np_auc_ranks(s[i][m[i]], y[i][m[i]]) for i in range(3)], rtol=1e-6)
    # AUC depends only on the order of scores and flips under negation.
    np.testing.assert_allclose(float(roc_auc(np.tanh(s) * 3 + 1, yf, mask=mf)), ref, rtol=1e-6)
    np.testing.assert_allclose(float(roc_auc(-s, yf, mask=mf)), 1 - ref, rtol=1e-5)


def test_roc_auc_large_counts_exact():
    """~6.5e4 pixels with heavy ties: the int32 / digit-sum accumulation stays exact."""
    rng = np.random.default_rng(2)
    n = 1 << 16
    y = rng.random(n) < 0.2
    s = (np.round((rng.normal(size=n) + y) * 8) / 8).astype(np.float32)
    # Tie-aware reference in exact integer arithmetic (Python ints).
    vals, inv = np.unique(s, return_inverse=True)
    pos = np.bincount(inv, weights=y, minlength=len(vals)).astype(np.int64)
    neg = np.bincount(inv, weights=~y, minlength=len(vals)).astype(np.int64)
    below = np.cumsum(neg) - neg
    twice_u = int(np.sum(pos * (2 * below + neg)))
    ref = twice_u / (2 * int(pos.sum()) * int(neg.sum()))
    np.testing.assert_allclose(float(roc_auc(s, y)), ref, rtol=1e-6)
