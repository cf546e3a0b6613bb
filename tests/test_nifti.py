"""NIfTI volumes (Decathlon layout) on small volumes written here with nibabel: slice order,
CT windowing, MR percentiles, 2.5D channels, multi-class per-volume Dice, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from unet_jax import data
from unet_jax.config import PreprocessConfig
from unet_jax.data import DataError
from unet_jax.data.nifti import NiftiDataset
from unet_jax.volumes import volume_dice


def write_volumes(root: Path, n: int = 3, shape=(12, 10, 5), *, seed: int = 0, affine=None) -> dict:
    rng = np.random.default_rng(seed)
    (root / "imagesTr").mkdir(parents=True, exist_ok=True)
    (root / "labelsTr").mkdir(parents=True, exist_ok=True)
    out = {}
    for i in range(n):
        image = rng.uniform(-1000, 1000, shape).astype(np.float32)
        image[..., :] += np.arange(shape[2]) * 1000.0  # slice k's values identify it
        label = np.zeros(shape, np.uint8)
        label[2:6, 2:6, 1:4] = 1
        label[3:5, 3:5, 2] = 2
        a = np.diag([0.8, 0.8, 2.5, 1.0]) if affine is None else affine
        nib.save(nib.Nifti1Image(image, a), root / "imagesTr" / f"liver_{i}.nii.gz")
        nib.save(nib.Nifti1Image(label, a), root / "labelsTr" / f"liver_{i}.nii.gz")
        out[f"liver_{i}"] = (image, label)
    (root / "imagesTr" / "._liver_0.nii.gz").write_bytes(b"macOS junk")  # ignored, as in the Decathlon tarballs
    return out


def test_slices_windowing_and_context(tmp_path):
    vols = write_volumes(tmp_path)
    ds = data.get("nifti", root=tmp_path, window=(-100, 400), context=1, test_fraction=0.34, progress=False)
    assert ds.num_classes == 3 and ds.channels == 3
    src = ds.test()
    case = src[0].case
    image, label = vols[case]
    assert [src[k].id for k in range(5)] == [f"{case}_{k:04d}" for k in range(5)]
    for k in range(5):
        ex = src[k]
        np.testing.assert_array_equal(ex.label, label[..., k])
        # Channels: slices k-1, k, k+1 (repeated at the ends).
        for c, j in enumerate((max(k - 1, 0), k, min(k + 1, 4))):
            np.testing.assert_allclose(ex.image[..., c], image[..., j])
        x = ds.preprocess(ex).image
        np.testing.assert_allclose(x, np.clip((ex.image + 100) / 500, 0, 1), atol=1e-6)
    assert len(ds.train()) + len(src) == 15 and set(ds.train().cases).isdisjoint(src.cases)


def test_mr_percentiles_map_each_volume_to_unit_range(tmp_path):
    write_volumes(tmp_path, n=2, shape=(20, 20, 4))
    ds = NiftiDataset(tmp_path, percentiles=(1, 99), test_fraction=0.5, progress=False)
    src = ds.train()
    x = np.stack([ds.preprocess(src[k]).image for k in range(len(src))])
    raw = np.stack([src[k].image for k in range(len(src))])
    lo, hi = np.percentile(raw, (1, 99))  # 4 slices < 16: every slice is in the estimate
    np.testing.assert_allclose(x, np.clip((raw - lo) / (hi - lo), 0, 1), atol=1e-5)


@pytest.mark.parametrize("size", [8, 17])
def test_resized_labels_keep_class_ids_and_pixel_centres(tmp_path, size):
    """--image-size resizes a slice's label by nearest neighbour about pixel centres: output
    pixel i is stored pixel floor((i + 0.5) * scale) (numpy reference), class ids unchanged."""
    vols = write_volumes(tmp_path, n=2, shape=(12, 10, 5))
    ds = NiftiDataset(tmp_path, window=(-100, 400), test_fraction=0.5, progress=False,
                      preprocess=PreprocessConfig(channels="gray", clahe=False, normalize="unit", image_size=size))
    src = ds.test()
    label = vols[src[0].case][1]
    rows = ((np.arange(size) + 0.5) * 12 / size).astype(int)
    cols = ((np.arange(size) + 0.5) * 10 / size).astype(int)
    for k in range(5):
        ex = ds.preprocess(src[k])
        assert ex.image.shape[:2] == (size, size)
        np.testing.assert_array_equal(ex.label, label[..., k][np.ix_(rows, cols)])


def test_multiclass_volume_dice_per_class():
    label = np.zeros((3, 6, 6), np.uint8)
    label[:, 1:4, 1:4] = 1
    label[1, 2, 2] = 2
    pred = label.copy()
    pred[0] = 0  # loses 9 voxels of class 1
    pred[2, 5, 5] = 2  # one false tumour voxel
    d = volume_dice(pred, label, 3)
    assert d[0] == pytest.approx(2 * 17 / (2 * 17 + 9))  # class 1: 26 labelled, 17 found
    assert d[1] == pytest.approx(2 * 1 / (2 * 1 + 1))


@pytest.mark.parametrize("break_it, message", [
    (lambda r: nib.save(nib.Nifti1Image(np.zeros((12, 10, 6), np.uint8), np.diag([0.8, 0.8, 2.5, 1.0])),
                        r / "labelsTr" / "liver_1.nii.gz"), "has shape"),
    (lambda r: nib.save(nib.Nifti1Image(np.zeros((12, 10, 5), np.uint8), np.eye(4)),
                        r / "labelsTr" / "liver_1.nii.gz"), "different affines"),
    (lambda r: (r / "imagesTr" / "liver_2.nii.gz").write_bytes(b"\x1f\x8bnot a nifti"), "liver_2.nii.gz"),
    (lambda r: (r / "labelsTr" / "liver_0.nii.gz").unlink(), "without a label"),
    (lambda r: (r / "imagesTr" / "liver_0.nii.gz").unlink(), "without an image"),
])
def test_bad_volumes_name_the_file(tmp_path, break_it, message):
    write_volumes(tmp_path)
    break_it(tmp_path)
    with pytest.raises(DataError, match=message):
        NiftiDataset(tmp_path, window=(-100, 400), progress=False)


def test_entry_point_builds_the_run_and_the_test_report_scores_volumes(tmp_path):
    """The entry point's flags (``--window -100,400`` as typed) build the config and the
    dataset; the test report on a prediction that is the label itself scores 1 per class."""
    from experiments import volumes as volumes_cli
    from unet_jax.evaluation import evaluate

    write_volumes(tmp_path / "vol", n=4, shape=(16, 16, 3))
    argv = volumes_cli._join_negative_values(["--root", str(tmp_path / "vol"), "--window", "-100,400",
                                              "--context", "1", "--patch-size", "16", "--no-progress"])
    cfg, ds = volumes_cli.build(volumes_cli.build_parser().parse_args(argv))
    assert cfg.data.options["window"] == (-100.0, 400.0) and cfg.data.options["classes"] == 3
    assert ds.channels == 3 and len(ds.test().volumes) == 1
    labels = {ds.test()[i].id: ds.test()[i].label for i in range(len(ds.test()))}
    order = iter(labels)

    def perfect(batch):  # one-hot of the label of the slice being evaluated (in source order)
        return np.eye(3, dtype=np.float32)[labels[next(order)]][None]

    reporter = ds.test_reporter(tmp_path / "run")
    ev = evaluate(perfect, ds.test(), ds.preprocess, num_classes=3, restore=ds.restore_probs,
                  on_image=reporter.add)
    out = reporter.finish()
    assert out["num_volumes"] == 1 and ev.summary["dice_class2"] == 1.0
    assert out["dice_class1_per_volume_mean"] == out["dice_class2_per_volume_mean"] == 1.0
    assert out["dice_per_slice_mean"] == 1.0 and (tmp_path / "run" / "per_volume.csv").is_file()
    assert len(list((tmp_path / "run" / "gifs").iterdir())) == 1


def test_chunked_reading_gives_every_slice_in_any_order(tmp_path):
    vols = write_volumes(tmp_path, n=2, shape=(4, 3, 40))
    ds = NiftiDataset(tmp_path, window=(-100, 400), context=2, test_fraction=0.5, progress=False)
    src = ds.train()
    image, label = vols[src[0].case]
    for k in list(range(40))[::-1] + [15, 16, 31, 32, 0, 39]:  # backwards, and across chunk borders
        ex = src[k]
        assert ex.id.endswith(f"_{k:04d}")
        np.testing.assert_array_equal(ex.label, label[..., k])
        for c, j in enumerate(range(k - 2, k + 3)):
            np.testing.assert_array_equal(ex.image[..., c], image[..., min(max(j, 0), 39)])


@pytest.mark.slow
def test_a_trained_run_predicts_volumes_as_nifti_on_the_inputs_grid(tmp_path):
    """``unet_jax.predict`` on a NIfTI run: the final weights give the run's own test
    probabilities, written as NIfTI with the input's shape and affine; Dice of the written
    label volume is the summary's; without --labels the same volumes and no scores. The
    run refuses single images (the app and ``Predictor(image)``)."""
    from experiments import volumes as volumes_cli
    from unet_jax import app, predict
    from unet_jax.data.imageio import read_mask
    from unet_jax.predictor import PredictorError, load_predictor

    affine = np.array([[0, -0.7, 0, 10], [0.7, 0, 0, -5], [0, 0, 2.5, 3], [0, 0, 0, 1]], float)
    vols = write_volumes(tmp_path / "vol", n=3, shape=(16, 16, 4), affine=affine)
    run = tmp_path / "run"
    assert volumes_cli.main(["--root", str(tmp_path / "vol"), "--window", "-100,400", "--context", "1",
                             "--patch-size", "16", "--features", "4", "--depth", "1", "--steps", "2",
                             "--batch-size", "2", "--eval-every", "2", "--no-progress", "--workdir", str(run)]) == 0
    (case,) = json.loads((run / "results.json").read_text())["data"]["test_volumes"]
    image_file = tmp_path / "vol" / "imagesTr" / f"{case}.nii.gz"
    out = tmp_path / "pred"
    assert predict.main(["--run", str(run), "--which", "final", str(image_file), "--labels",
                         str(tmp_path / "vol" / "labelsTr"), "--output", str(out), "--no-progress"]) == 0
    pred_img, prob_img = nib.load(out / f"{case}_pred.nii.gz"), nib.load(out / f"{case}_prob.nii.gz")
    np.testing.assert_allclose(pred_img.affine, affine, atol=1e-6)
    pred, prob = np.asarray(pred_img.dataobj), np.asarray(prob_img.dataobj)
    assert pred.shape == (16, 16, 4) and pred.dtype == np.uint8 and prob.shape == (16, 16, 4, 2)
    for k in range(4):  # the run's PNG holds round(255 (1 - p0)); ours round(255 p1), round(255 p2): 2 levels
        saved = read_mask(run / "predictions" / f"{case}_{k:04d}_prob.png").astype(int)
        assert np.abs(prob[..., k, :].astype(int).sum(-1) - saved).max() <= 2
    label = vols[case][1]
    summary = json.loads((out / "summary.json").read_text())
    for c in (1, 2):
        p, y = set(zip(*np.nonzero(pred == c))), set(zip(*np.nonzero(label == c)))
        assert summary["per_volume"][f"dice_class{c}_per_volume_mean"] == pytest.approx(
            2 * len(p & y) / (len(p) + len(y)))
    bare = tmp_path / "bare"
    assert predict.main(["--run", str(run), "--which", "final", str(image_file.parent), "--output", str(bare),
                         "--no-progress"]) == 0
    assert not json.loads((bare / "summary.json").read_text())["labelled"]
    np.testing.assert_array_equal(np.asarray(nib.load(bare / f"{case}_pred.nii.gz").dataobj), pred)
    assert len(list(bare.glob("*_pred.nii.gz"))) == 3  # a folder: every volume in it
    with pytest.raises(PredictorError, match="whole volumes.*unet_jax.predict"):
        load_predictor(run)(np.zeros((16, 16), np.uint8))
    assert app.main(["--run", str(run)]) == 2
    assert predict.main(["--run", str(run), str(image_file), "--labels", str(tmp_path), "--output", str(bare)]) == 2
