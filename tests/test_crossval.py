"""The cross-validated figure (unet_jax.crossval) against numpy over the cases of all runs.

The figure is the mean and median over every test case of every run (each case weighs
alike), not the mean of the runs' means; files written by the volume reporter of a real
run go through it unchanged. Dice values are float64 read back from CSV text (Python
writes the shortest repr, which parses back to the same float), so the sums compare with
numpy's on the same values in the same order exactly; rtol 1e-12 only absorbs pairwise
versus sequential summation.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from unet_jax import crossval
from unet_jax.crossval import FoldRun, load_run, summarize
from unet_jax.data.base import DataError, Example
from unet_jax.volumes import VolumeReporter
from unet_jax.workdir import atomic_write_csv, atomic_write_json

RTOL = 1e-12


def _rows(dice, lcc=None, voxels=None, prefix="c"):
    lcc = dice if lcc is None else lcc
    voxels = [100] * len(dice) if voxels is None else voxels
    return [{"case": f"{prefix}{i}", "dice": float(d), "dice_lcc": float(dl), "label_voxels": v}
            for i, (d, dl, v) in enumerate(zip(dice, lcc, voxels))]


def _run_folder(path: Path, rows, *, folds=None, fold=None, split_seed=0, finished=True) -> Path:
    atomic_write_csv(path / "per_volume.csv", rows)
    atomic_write_json(path / "config.json", {"data": {"dataset": "lgg", "options": {
        "folds": folds, "fold": fold, "split_seed": split_seed, "split": None}}, "model": {"arch": "unet"}})
    if finished:
        atomic_write_json(path / "results.json", {"test": {}})
    return path


@settings(max_examples=40, deadline=None)
@given(st.lists(st.floats(0, 1), min_size=1, max_size=20), st.integers(0, 2**31 - 1), st.integers(1, 5))
def test_figure_is_over_all_cases_of_all_runs(dice, seed, num_runs):
    rng = np.random.default_rng(seed)
    lcc = rng.random(len(dice))
    cuts = np.sort(rng.integers(0, len(dice) + 1, num_runs - 1))
    rows = _rows(dice, lcc)
    runs = [FoldRun(name=f"run{i}", rows=list(part)) for i, part in enumerate(np.split(np.array(rows, object), cuts))]
    s = summarize(runs)
    assert s["num_volumes"] == s["num_volumes_scored"] == len(dice)
    assert s["dice_per_volume_mean"] == pytest.approx(np.mean(dice), rel=RTOL, abs=1e-15)
    assert s["dice_per_volume_median"] == pytest.approx(np.median(dice), rel=RTOL, abs=1e-15)
    assert s["dice_per_volume_lcc_mean"] == pytest.approx(np.mean(lcc), rel=RTOL, abs=1e-15)
    assert s["dice_per_volume_lcc_median"] == pytest.approx(np.median(lcc), rel=RTOL, abs=1e-15)
    for run, part in zip(s["runs"], np.split(np.asarray(dice), cuts)):
        assert run["num_volumes"] == part.size
        if part.size:
            assert run["dice_per_volume_mean"] == pytest.approx(np.mean(part), rel=RTOL, abs=1e-15)


def test_unequal_folds_are_not_averaged_as_fold_means_and_empty_labels_follow_ignore_empty():
    a = FoldRun("a", _rows([0.2, 0.4], prefix="a"))
    b = FoldRun("b", _rows([0.9, 0.9, 0.9, 0.1], voxels=[100, 100, 100, 0], prefix="b"))
    s = summarize([a, b])
    assert s["num_volumes"] == 6 and s["num_volumes_scored"] == 5  # b3's label is empty
    assert s["dice_per_volume_mean"] == pytest.approx((0.2 + 0.4 + 0.9 * 3) / 5)
    assert s["dice_per_volume_mean"] != pytest.approx((0.3 + 0.9) / 2)  # not the mean of the runs' means
    assert s["dice_per_volume_median"] == pytest.approx(0.9)
    kept = summarize([a, b], ignore_empty=False)
    assert kept["num_volumes_scored"] == 6 and kept["dice_per_volume_mean"] == pytest.approx(3.4 / 6)


def test_per_class_figures_leave_out_the_volumes_without_the_class():
    dice2, lcc2, voxels2 = [0.5, 0.9, 0.1, 0.7], [0.6, 0.8, 0.0, 0.3], [50, 10, 0, 7]
    rows = [{**r, "dice_class1": 1.0, "dice_lcc_class1": 1.0, "label_voxels_class1": 9,
             "dice_class2": d, "dice_lcc_class2": dl, "label_voxels_class2": v}
            for r, d, dl, v in zip(_rows([0.5] * 4), dice2, lcc2, voxels2)]
    s = summarize([FoldRun("a", rows[:1]), FoldRun("b", rows[1:])])
    has = np.asarray(voxels2) > 0  # the third volume has no class 2
    assert s["dice_class2_per_volume_mean"] == pytest.approx(np.mean(np.asarray(dice2)[has]), rel=RTOL)
    assert s["dice_class2_per_volume_median"] == pytest.approx(np.median(np.asarray(dice2)[has]), rel=RTOL)
    assert s["dice_class2_per_volume_lcc_mean"] == pytest.approx(np.mean(np.asarray(lcc2)[has]), rel=RTOL)
    assert s["dice_class2_per_volume_lcc_median"] == pytest.approx(np.median(np.asarray(lcc2)[has]), rel=RTOL)
    assert summarize([FoldRun("a", rows)], ignore_empty=False)["dice_class2_per_volume_lcc_median"] == \
        pytest.approx(np.median(lcc2), rel=RTOL)


def _reporter_volumes(rng, num_classes, cases):
    """(case, pred, label) volumes of 3 slices; one case with an empty label, one without class 2."""
    out = []
    for i, case in enumerate(cases):
        label = (rng.integers(0, num_classes, (3, 12, 12)) * (rng.random((3, 12, 12)) < 0.4)).astype(np.uint8)
        if i == 1:
            label[:] = 0
        if i == 2 and num_classes > 2:
            label[label == 2] = 1
        pred = np.where(rng.random(label.shape) < 0.3, rng.integers(0, num_classes, label.shape), label)
        out.append((case, pred.astype(np.uint8), label))
    return out


@pytest.mark.parametrize("num_classes", [2, 3])
def test_runs_written_by_the_volume_reporter_give_the_reporters_figures(tmp_path, num_classes):
    rng = np.random.default_rng(num_classes)
    summaries, folders, volumes = [], [], []
    for fold, cases in enumerate([["p0", "p1", "p2", "p3"], ["q0", "q1", "q2"]]):
        folder = tmp_path / f"fold{fold}"
        rep = VolumeReporter(folder, num_classes, overlays=False, gifs=False)
        vols = _reporter_volumes(rng, num_classes, cases)
        for case, pred, label in vols:
            for z in range(3):
                rep.add(Example(f"{case}_{z + 1}", np.zeros((12, 12, 3), np.uint8), label[z], case=case), None, pred[z])
        summaries.append(rep.finish())
        folders.append(folder)
        atomic_write_json(folder / "config.json", {"data": {"options": {"folds": 2, "fold": fold, "split_seed": 0}}})
        atomic_write_json(folder / "results.json", {})
        volumes += vols
    s = summarize([load_run(f) for f in folders])
    assert s["folds"] == 2 and s["folds_held"] == [0, 1]
    for run, rep_summary in zip(s["runs"], summaries):
        for key in ("dice_per_volume_mean", "dice_per_volume_median", "dice_per_volume_lcc_mean"):
            assert run[key] == pytest.approx(rep_summary[key], rel=RTOL)
        for k in range(1, num_classes if num_classes > 2 else 1):
            assert run[f"dice_class{k}_per_volume_mean"] == pytest.approx(
                rep_summary[f"dice_class{k}_per_volume_mean"], rel=RTOL)

    def set_dice(p, y, k):  # 2|P & Y| / (|P| + |Y|) over the voxels of a volume
        p, y = p == k, y == k
        return 2 * np.sum(p & y) / (np.sum(p) + np.sum(y))

    if num_classes == 2:  # ignore_empty leaves the empty label out
        expected = [set_dice(p, y, 1) for _, p, y in volumes if y.any()]
        assert s["dice_per_volume_mean"] == pytest.approx(np.mean(expected), rel=1e-9)
        assert s["dice_per_volume_median"] == pytest.approx(np.median(expected), rel=1e-9)
    else:  # per class: the volumes whose label lacks the class are left out of that class
        tumour = [set_dice(p, y, 2) for _, p, y in volumes if (y == 2).any()]
        assert s["num_volumes_scored"] == 5
        assert s["dice_class2_per_volume_mean"] == pytest.approx(np.mean(tumour), rel=1e-9)


def test_command_writes_summary_table_and_chart_and_says_partial(tmp_path, capsys):
    f0 = _run_folder(tmp_path / "f0", _rows([0.5, 0.7], prefix="a"), folds=5, fold=0)
    f3 = _run_folder(tmp_path / "f3", _rows([0.9], prefix="b"), folds=5, fold=3)
    other = tmp_path / "other.csv"
    atomic_write_csv(other, _rows([0.1], prefix="c"))
    assert crossval.main([str(f0), str(f3), str(other), "--output", str(tmp_path / "cv")]) == 0
    out = capsys.readouterr().out
    assert "fold 3:" in out and "all 4 cases (2 of 5 folds and 1 run(s) with another split)" in out
    assert "mean 0.5500, median 0.6000" in out
    summary = json.loads((tmp_path / "cv" / "crossval.json").read_text())
    assert summary["dice_per_volume_mean"] == pytest.approx(0.55) and summary["folds_held"] == [0, 3]
    lines = (tmp_path / "cv" / "per_volume.csv").read_text().splitlines()
    assert lines[0].startswith("run,case,dice") and len(lines) == 5 and lines[-1].startswith(str(other))
    assert (tmp_path / "cv" / "dsc.png").stat().st_size > 0
    assert crossval.main([str(f0), str(f3)]) == 0
    assert "2 of 5 folds: a partial cross-validation" in capsys.readouterr().out


def test_bad_input_names_the_run_and_the_fix(tmp_path, capsys):
    a = _run_folder(tmp_path / "a", _rows([0.5, 0.6]), folds=5, fold=0)
    b = _run_folder(tmp_path / "b", _rows([0.7], prefix="x") + _rows([0.8]), folds=5, fold=1)

    def error(*args: str) -> str:
        assert crossval.main(list(args)) == 2
        return capsys.readouterr().err

    assert "case c0 is a test case of both" in error(str(a), str(b)) and str(b) in error(str(a), str(b))
    c = _run_folder(tmp_path / "c", _rows([0.7], prefix="y"), folds=5, fold=0)
    assert "both fold 0" in error(str(a), str(c))
    d = _run_folder(tmp_path / "d", _rows([0.7], prefix="z"), folds=4, fold=1)
    assert "different cross-validations" in error(str(a), str(d))
    e = _run_folder(tmp_path / "e", _rows([0.7], prefix="w"), finished=False)
    assert f"{e} has no results.json" in error(str(e)) and "--resume" in error(str(e))
    assert "does not exist" in error(str(tmp_path / "nowhere"))
    bad = tmp_path / "bad.csv"
    bad.write_text("case,dice,dice_lcc,label_voxels\np,0.5,oops,3\n")
    assert f"{bad}, line 2: column dice_lcc holds 'oops'" in error(str(bad))
    unlabelled = tmp_path / "unlabelled.csv"
    unlabelled.write_text("case,slices,pred_voxels\np,3,10\n")
    assert "lacks column(s) dice, dice_lcc, label_voxels" in error(str(unlabelled))
    (tmp_path / "f").mkdir()
    atomic_write_json(tmp_path / "f" / "results.json", {})
    assert "has no per_volume.csv" in error(str(tmp_path / "f"))
    with pytest.raises(DataError, match="no runs"):
        summarize([])
