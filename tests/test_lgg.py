"""The LGG brain MRI dataset, patient-level splits, weighted slice sampling, per-volume
figures (Dice, LCC, pictures) and a few-step run on 3 real patients.

Real data: 2-3 patients of ``../shared/data/lgg_mri/kaggle_3m`` (symlinked into a temporary
folder, never copied); those tests skip without it. Bad-input tests write small generated
patients."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from unet_jax import metrics
from unet_jax.config import AugmentConfig, DataConfig, PreprocessConfig, RunConfig
from unet_jax.data import DataError, Example, InMemorySource
from unet_jax.data.imageio import read_mask
from unet_jax.data.lgg import (SEQUENCES, LggDataset, fold_patients, list_patients, make_patient_split,
                               patient_sampling_weights)
from unet_jax.data.pipeline import PatchSampler
from unet_jax.predictor import PredictorError
from unet_jax.training.run import split_train_val
from unet_jax.volumes import VolumeReporter, keep_largest, largest_component, slice_dice, volume_dice

REPO = Path(__file__).resolve().parent.parent
LGG_DIR = REPO / ".." / "shared" / "data" / "lgg_mri" / "kaggle_3m"
SPLIT_50 = REPO / "experiments" / "splits" / "lgg_50.json"
REAL = ["TCGA_CS_4941_19960909", "TCGA_CS_4942_19970222", "TCGA_CS_5393_19990606"]
needs_lgg = pytest.mark.skipif(not all((LGG_DIR / p).is_dir() for p in REAL), reason=f"no LGG data at {LGG_DIR}")
PRE = PreprocessConfig(channels="rgb", clahe=False, normalize="zscore", image_size=64)


def real_subset(tmp_path: Path, patients=REAL) -> Path:
    root = tmp_path / "lgg"
    root.mkdir()
    for p in patients:
        (root / p).symlink_to((LGG_DIR / p).resolve(), target_is_directory=True)
    return root


def write_patient(root: Path, name: str, n: int, *, seed: int = 0, size: int = 32) -> dict[int, np.ndarray]:
    """A generated patient folder in the Kaggle layout; returns slice number -> label."""
    rng = np.random.default_rng(seed)
    folder = root / name
    folder.mkdir(parents=True)
    labels = {}
    for k in range(1, n + 1):
        image = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        label = np.zeros((size, size), np.uint8)
        if k % 2:
            label[8:8 + k, 10:20] = 1
        assert cv2.imwrite(str(folder / f"{name}_{k}.tif"), image)
        assert cv2.imwrite(str(folder / f"{name}_{k}_mask.tif"), label * 255)
        labels[k] = label
    return labels


# ----------------------------------------------------------------------------- reading


@needs_lgg
def test_real_slices_in_numeric_order_with_their_masks_and_cases(tmp_path):
    root = real_subset(tmp_path, REAL[:2])
    ds = LggDataset(root, split="all", preprocess=PRE, progress=False)
    test = ds.test()
    assert len(ds.train()) == 0
    expected = []
    for p in REAL[:2]:
        files = [f.name for f in (LGG_DIR / p).iterdir() if f.suffix == ".tif" and not f.stem.endswith("_mask")]
        numbers = sorted(int(f[len(p) + 1:-4]) for f in files)
        assert numbers == list(range(1, len(files) + 1))
        expected += [(p, k) for k in numbers]
    assert len(test) == len(expected)
    assert [(test[i].case, test[i].id) for i in range(len(test))] == [(p, f"{p}_{k}") for p, k in expected]
    assert [test[i].id for i in range(3)][:3] != sorted(test[i].id for i in range(len(test)))[:3]  # not lexical
    for i in (0, 9, 10, len(test) - 1):
        ex = test[i]
        p, k = expected[i]
        mask = np.asarray(Image.open(LGG_DIR / p / f"{p}_{k}_mask.tif"))
        stored = np.asarray(Image.open(LGG_DIR / p / f"{p}_{k}.tif"))
        assert ex.image.shape == (256, 256, 3) and ex.image.dtype == np.uint8
        np.testing.assert_array_equal(ex.image, stored)  # channel order as stored
        assert set(np.unique(ex.label).tolist()) <= {0, 1}
        np.testing.assert_array_equal(ex.label, (mask > 0).astype(np.uint8))


@needs_lgg
def test_volume_preprocessing_standardises_each_volume_and_maps_back(tmp_path):
    root = real_subset(tmp_path, REAL[:1])
    ds = LggDataset(root, split="all", preprocess=PreprocessConfig(channels="rgb", clahe=False, normalize="zscore",
                                                                   image_size=None), progress=False)
    src = ds.test()
    xs = np.stack([ds.preprocess(src[i]).image for i in range(len(src))]).astype(np.float64)
    np.testing.assert_allclose(xs.mean(axis=(0, 1, 2)), 0.0, atol=1e-4)
    np.testing.assert_allclose(xs.std(axis=(0, 1, 2)), 1.0, atol=1e-4)
    vol = ds.volume(REAL[0])
    y0, y1, x0, x1 = vol.box
    assert xs.shape[1] == xs.shape[2] == max(y1 - y0, x1 - x0)  # cropped to the brain, padded to a square
    raw = np.stack([src[i].image for i in range(len(src))])
    inside = np.zeros(raw.shape[1:3], bool)
    inside[y0:y1, x0:x1] = True
    assert raw[:, ~inside].max(initial=0) < 0.1 * raw.max() <= raw[:, inside].max()  # the box: what is >= 10%
    for axis, (a, b) in ((1, (y0, y1)), (2, (x0, x1))):  # tight: its edge rows / columns hold such voxels
        edge = np.take(raw, [a, b - 1], axis=axis)
        assert (edge >= 0.1 * raw.max()).any(axis=tuple(i for i in range(4) if i != axis)).all()
    for i in range(len(src)):  # no resize: mapping the preprocessed label back gives the stored one
        ex = src[i]
        back = ds.restore_probs(ex, ds.preprocess(ex).label.astype(np.float32))
        np.testing.assert_array_equal(back > 0.5, ex.label > 0)


def write_disc_patient(root: Path) -> list[np.ndarray]:
    """Patient P: three 48x48 noise slices (no crop) whose masks are discs of radius 11-15
    around off-grid centres; returns the masks."""
    rng = np.random.default_rng(0)
    (root / "P").mkdir(parents=True)
    yy, xx = np.mgrid[:48, :48]
    discs = []
    for k in (1, 2, 3):
        disc = ((yy - 20.3 - 2 * k) ** 2 + (xx - 25.6 + k) ** 2 < (9 + 2 * k) ** 2).astype(np.uint8)
        assert cv2.imwrite(str(root / "P" / f"P_{k}.tif"), rng.integers(0, 256, (48, 48, 3), dtype=np.uint8))
        assert cv2.imwrite(str(root / "P" / f"P_{k}_mask.tif"), disc * 255)
        discs.append(disc)
    return discs


def disc_dataset(root: Path, image_size: int) -> LggDataset:
    pre = PreprocessConfig(channels="rgb", clahe=False, normalize="zscore", image_size=image_size)
    ds = LggDataset(root, split="all", progress=False, preprocess=pre)
    assert ds.volume("P").box == (0, 48, 0, 48)
    return ds


@pytest.mark.parametrize("image_size", [32, 64])
def test_resized_masks_stay_where_they_were(tmp_path, image_size):
    """A mask on the model's grid is the stored one sampled about pixel centres (output pixel
    i: stored pixel floor((i + 0.5) * scale), numpy reference), and mapped back by
    restore_probs it keeps its place. cv2.INTER_NEAREST took floor(i * scale) and moved every
    mask by half a model pixel (its centroid 0.5 stored pixels off after 48 -> 32 and back)."""
    stored = write_disc_patient(tmp_path)
    ds = disc_dataset(tmp_path, image_size)
    src = ds.test()
    idx = ((np.arange(image_size) + 0.5) * 48 / image_size).astype(int)
    for i, disc in enumerate(stored):
        np.testing.assert_array_equal(ds.preprocess(src[i]).label, disc[np.ix_(idx, idx)])
    back = np.stack([ds.restore_probs(src[i], ds.preprocess(src[i]).label.astype(np.float32))
                     for i in range(len(src))]).astype(np.float64)
    ref = np.stack(stored).astype(np.float64)

    def centroid(v):
        return np.array([(v * g).sum() / v.sum() for g in np.mgrid[:v.shape[0], :v.shape[1], :v.shape[2]]])

    assert np.abs(centroid(back) - centroid(ref)).max() < 0.25  # sampling about centres: 0.13 at most here


def test_soft_labels_are_the_masks_area_fractions(tmp_path):
    """soft_labels: each model pixel holds the share of its area that the stored mask covers.
    References: at 24x24 (48 -> 24, a factor of 2) the mean of its 2x2 stored pixels; at 32x32
    (a factor of 1.5) fractions in [0, 1] whose total area, times 1.5 ** 2, is the mask's,
    with 1 where the pixel lies inside the disc. The images and what is scored do not change."""
    stored = write_disc_patient(tmp_path)
    for size in (24, 32):
        hard = disc_dataset(tmp_path, size)
        pre = PreprocessConfig(channels="rgb", clahe=False, normalize="zscore", image_size=size)
        soft = LggDataset(tmp_path, split="all", soft_labels=True, progress=False, preprocess=pre)
        assert soft.describe()["preprocessing"]["training_labels"] == "area fractions"
        assert hard.describe()["preprocessing"]["training_labels"] == "nearest"
        for i, disc in enumerate(stored):
            ex = soft.test()[i]
            x, y = soft.preprocess(ex), hard.preprocess(hard.test()[i])
            np.testing.assert_array_equal(x.image, y.image)
            assert x.label.dtype == np.float32 and 0 <= x.label.min() and x.label.max() <= 1
            if size == 24:
                blocks = disc.reshape(24, 2, 24, 2).astype(np.float64).mean(axis=(1, 3))
                np.testing.assert_allclose(x.label, blocks, rtol=0, atol=1e-6)
            assert x.label.astype(np.float64).sum() * (48 / size) ** 2 == pytest.approx(disc.sum(), rel=1e-5)
            assert np.array_equal(ex.label, disc)  # figures are computed on the stored mask


def test_resize_ceiling_scores_the_masks_round_trip(tmp_path):
    """benchmarks.lgg_resize_ceiling: 1 without a resize; after 48 -> 32 and back, the Dice of
    the round trip as computed here with numpy, for each label resize."""
    from benchmarks.lgg_resize_ceiling import RESIZES, resize_ceiling

    stored = np.stack(write_disc_patient(tmp_path)) > 0
    ds = disc_dataset(tmp_path, 48)
    assert len(ds.test()) == 3
    for interpolation in RESIZES.values():
        assert resize_ceiling(ds, 48, interpolation) == {"P": 1.0}
        small = [cv2.resize(m.astype(np.float32), (32, 32), interpolation=interpolation) for m in stored]
        back = np.stack([cv2.resize(m, (48, 48), interpolation=cv2.INTER_LINEAR) for m in small]) > 0.5
        ref = 2 * np.count_nonzero(back & stored) / (np.count_nonzero(back) + np.count_nonzero(stored))
        assert resize_ceiling(ds, 32, interpolation) == {"P": pytest.approx(ref, abs=1e-12)}


def test_generated_patients_and_bad_input(tmp_path):
    labels = write_patient(tmp_path / "ok", "P_1", 11)
    write_patient(tmp_path / "ok", "P_2", 3, seed=1)
    ds = LggDataset(tmp_path / "ok", split="all", preprocess=PRE, progress=False)
    assert [ds.test()[i].id for i in range(11)] == [f"P_1_{k}" for k in range(1, 12)]
    np.testing.assert_array_equal(ds.test()[9].label, labels[10])
    # Each broken folder: a DataError naming the file or folder.
    cases = {
        "no_mask": (lambda f: (f / "P_1" / "P_1_3_mask.tif").unlink(), "P_1_3.tif"),
        "no_slice": (lambda f: (f / "P_1" / "P_1_4.tif").unlink(), "P_1_4_mask.tif"),
        "gap": (lambda f: [(f / "P_1" / n).unlink() for n in ("P_1_5.tif", "P_1_5_mask.tif")], "5 missing"),
        "unreadable": (lambda f: (f / "P_1" / "P_1_2.tif").write_bytes(b"II*\x00garbage"), "P_1_2.tif"),
        "empty_patient": (lambda f: (f / "P_3").mkdir(), "P_3"),
    }
    for name, (break_it, message) in cases.items():
        root = tmp_path / name
        write_patient(root, "P_1", 6)
        break_it(root)
        with pytest.raises(DataError, match=message.replace(".", r"\.")):
            LggDataset(root, split="all", preprocess=PRE, progress=False)
    (tmp_path / "none").mkdir()
    with pytest.raises(DataError, match="no patient folders"):
        LggDataset(tmp_path / "none", preprocess=PRE, progress=False)
    with pytest.raises(DataError, match="does not exist"):
        LggDataset(tmp_path / "missing", preprocess=PRE, progress=False)


def write_head_patient(root: Path, name: str, *, grey_field: bool, n: int = 3, size: int = 48) -> None:
    """A patient whose head is a disc of tissue (values 60-200) on a black background, with a
    hole inside (0 in FLAIR and post-contrast, 100 in pre-contrast); with `grey_field`, the
    pre-contrast channel's background is 100 instead of 0 (as in TCGA_FG_7637)."""
    rng = np.random.default_rng(3)
    folder = root / name
    folder.mkdir(parents=True)
    yy, xx = np.mgrid[:size, :size]
    head = (yy - 24) ** 2 + (xx - 22) ** 2 < 15 ** 2
    hole = (yy - 24) ** 2 + (xx - 22) ** 2 < 3 ** 2
    for k in range(1, n + 1):
        image = np.where(head[..., None], rng.integers(60, 201, (size, size, 3)), 0).astype(np.uint8)
        image[hole] = (100, 0, 0)
        if grey_field:
            image[~head, 0] = 100
        label = np.zeros((size, size), np.uint8)
        label[20:26, 18:24] = 255
        assert cv2.imwrite(str(folder / f"{name}_{k}.tif"), image[..., ::-1])  # stored as BGR
        assert cv2.imwrite(str(folder / f"{name}_{k}_mask.tif"), label)


@pytest.mark.parametrize("context", [0, 1])
def test_head_mask_clears_a_grey_field_and_leaves_dark_volumes_alone(tmp_path, context):
    """The grey-field patient with head_mask preprocesses exactly as the same patient on a
    black background (crop box, statistics, every input voxel; the hole inside the head is
    kept); without it the crop box is the whole slice. A dark volume is untouched."""
    write_head_patient(tmp_path / "grey", "G", grey_field=True)
    write_head_patient(tmp_path / "dark", "G", grey_field=False)
    pre = PreprocessConfig(channels="rgb", clahe=False, normalize="zscore", image_size=32)

    def inputs(root, head_mask):
        ds = LggDataset(root, split="all", preprocess=pre, progress=False, head_mask=head_mask, context=context)
        return ds, np.stack([ds.preprocess(ds.test()[i]).image for i in range(len(ds.test()))])

    grey, x_grey = inputs(tmp_path / "grey", True)
    dark, x_dark = inputs(tmp_path / "dark", True)
    _, x_dark_off = inputs(tmp_path / "dark", False)
    plain, _ = inputs(tmp_path / "grey", False)
    r = 14  # the largest offset with offset**2 < 15**2: the disc spans centre +- 14
    assert grey.volume("G").box == dark.volume("G").box == (24 - r, 24 + r + 1, 22 - r, 22 + r + 1)
    assert plain.volume("G").box == (0, 48, 0, 48)  # the grey field defeats the crop
    np.testing.assert_array_equal(x_grey, x_dark)
    np.testing.assert_array_equal(x_dark, x_dark_off)
    assert grey.describe()["preprocessing"]["bright_background"] == {"G": [0]}
    assert dark.describe()["preprocessing"]["bright_background"] == {}


FG_GREY = "TCGA_FG_7637_20000922"  # its pre-contrast channel lies on a grey field


@pytest.mark.skipif(not (LGG_DIR / FG_GREY).is_dir(), reason=f"no {FG_GREY} at {LGG_DIR}")
def test_head_mask_finds_the_real_grey_field_patient(tmp_path):
    root = real_subset(tmp_path, [FG_GREY, REAL[0]])
    on = LggDataset(root, split="all", preprocess=PRE, progress=False, head_mask=True)
    off = LggDataset(root, split="all", preprocess=PRE, progress=False)
    assert on.bright_background == {FG_GREY: [0]}
    assert off.volume(FG_GREY).box == (0, 256, 0, 256)
    y0, y1, x0, x1 = on.volume(FG_GREY).box
    assert (y1 - y0) * (x1 - x0) < 0.8 * 256 * 256  # cropped to the head
    assert on.volume(REAL[0]).box == off.volume(REAL[0]).box


def test_context_stacks_each_slices_neighbours_preprocessed_as_the_2d_dataset(tmp_path):
    """2.5D input against the 2D dataset as the reference: channels 3j..3j+2 of slice k are
    slice k-c+j of the same patient (clamped to its first and last slice), through the same
    volume preprocessing; the label is slice k's own."""
    for i, n in enumerate((5, 2, 1)):
        write_patient(tmp_path, f"P_{i}", n, seed=i)
    flat = LggDataset(tmp_path, split="all", preprocess=PRE, progress=False)
    with pytest.raises(DataError, match="--context -1"):
        LggDataset(tmp_path, split="all", context=-1, preprocess=PRE, progress=False)
    for c in (1, 2):
        ds = LggDataset(tmp_path, split="all", context=c, preprocess=PRE, progress=False)
        assert ds.channels == 3 * (2 * c + 1) and flat.channels == 3
        src, ref = ds.test(), flat.test()
        assert len(src) == len(ref) == 8
        for k in range(len(src)):
            case = ref[k].case
            same = [j for j in range(len(ref)) if ref[j].case == case]
            ex, x = src[k], ds.preprocess(src[k])
            # The cubic resize may round differently with 9 channels than with 3: up to 16
            # float32 terms of at most ~2x255, scaled by the rescale and standardisation.
            vol = flat.volume(case)
            tol = 16 * np.finfo(np.float32).eps * 2 * 255 / ((vol.hi - vol.lo) * float(vol.std.min()))
            assert ex.image.shape == (32, 32, 3 * (2 * c + 1)) and x.image.shape == (64, 64, 3 * (2 * c + 1))
            for j, d in enumerate(range(-c, c + 1)):
                nb = min(max(k + d, same[0]), same[-1])
                np.testing.assert_array_equal(ex.image[..., 3 * j:3 * j + 3], ref[nb].image)
                np.testing.assert_allclose(x.image[..., 3 * j:3 * j + 3], flat.preprocess(ref[nb]).image,
                                           rtol=0, atol=tol)
            np.testing.assert_array_equal(x.label, flat.preprocess(ref[k]).label)
        assert ds.describe()["preprocessing"]["context"] == c


@pytest.mark.parametrize("context", [0, 1])
def test_sequences_keep_the_chosen_channels_of_the_three_sequence_input(tmp_path, context):
    """--sequences against the three-sequence dataset as the reference: the model's input is
    its channels s of every slice (of three each), in the order named, preprocessed with all
    three (the same statistics, so equal to the last bit); labels unchanged."""
    for i, n in enumerate((4, 3)):
        write_patient(tmp_path, f"P_{i}", n, seed=i)
    full = LggDataset(tmp_path, split="all", context=context, preprocess=PRE, progress=False)
    for seq in (("flair",), ("post", "pre"), ("flair", "post")):
        ds = LggDataset(tmp_path, split="all", context=context, sequences=list(seq), preprocess=PRE, progress=False)
        assert ds.channels == len(seq) * (2 * context + 1)
        keep = [3 * j + SEQUENCES.index(s) for j in range(2 * context + 1) for s in seq]
        for k in range(len(ds.test())):
            x, ref = ds.preprocess(ds.test()[k]), full.preprocess(full.test()[k])
            np.testing.assert_array_equal(x.image, ref.image[..., keep])
            np.testing.assert_array_equal(x.label, ref.label)
        assert ds.describe()["preprocessing"]["sequences"] == list(seq)
    assert SEQUENCES == ("pre", "flair", "post")
    for bad in (["t1"], [], ["flair", "flair"], "flair"):
        with pytest.raises(DataError, match="--sequences"):
            LggDataset(tmp_path, split="all", sequences=bad, preprocess=PRE, progress=False)
    predicting = LggDataset.for_prediction([str(tmp_path)], options={"sequences": ["flair"], "context": context},
                                           preprocess=PRE, progress=False)
    assert predicting.channels == 2 * context + 1


# ----------------------------------------------------------------------------- splits


def test_patient_split_is_disjoint_deterministic_and_complete():
    patients = [f"TCGA_X_{i:04d}" for i in range(50)]
    s = make_patient_split(patients, seed=0)
    parts = [set(s[k]) for k in ("train", "val", "test")]
    assert sum(map(len, parts)) == 50 and set().union(*parts) == set(patients)
    assert (len(parts[1]), len(parts[2])) == (5, 10)
    assert make_patient_split(list(reversed(patients)), seed=0) == s  # order of listing does not matter
    assert make_patient_split(patients, seed=1)["test"] != s["test"]
    folds = fold_patients(patients, 5, seed=3)
    assert sorted(p for f in folds for p in f) == sorted(patients) and all(len(f) == 10 for f in folds)
    assert fold_patients(patients, 5, seed=3) == folds


def test_folds_give_disjoint_train_and_test_patients(tmp_path):
    for i in range(4):
        write_patient(tmp_path, f"P_{i}", 2, seed=i, size=16)
    tests = []
    for fold in range(2):
        ds = LggDataset(tmp_path, folds=2, fold=fold, preprocess=PRE, progress=False)
        train, test = set(ds.train().cases), set(ds.test().cases)
        assert not train & test and len(train | test) == 4 and ds.validation() is None
        tests.append(test)
    assert tests[0] | tests[1] == {f"P_{i}" for i in range(4)} and not tests[0] & tests[1]
    with pytest.raises(DataError, match="--fold"):
        LggDataset(tmp_path, folds=2, fold=2, preprocess=PRE, progress=False)


def test_entry_point_folds_leave_validation_patients_to_the_engine(tmp_path):
    from experiments import brain_mri

    for i in range(6):
        write_patient(tmp_path, f"P_{i}", 3, seed=i, size=16)
    args = brain_mri.build_parser().parse_args(["--data-dir", str(tmp_path), "--folds", "3", "--fold", "1",
                                                "--val-size", "1", "--image-size", "16", "--no-progress"])
    cfg, ds = brain_mri.build(args)
    assert cfg.data.options["folds"] == 3 and ds.validation() is None and len(set(ds.test().cases)) == 2
    fit, val = split_train_val(cfg, ds.train())
    assert len(set(val.cases)) == 1 and not set(val.cases) & set(fit.cases)
    assert not (set(val.cases) | set(fit.cases)) & set(ds.test().cases)
    assert len(val) == 3 and len(fit) == 9
    assert cfg.data.augment == AugmentConfig(flips=True, vertical_flip=False, rot90=False, brightness=0.0,
                                             contrast=0.0, scale=0.05, rotate=15.0, substitute=0.3,
                                             substitute_channels=(0, 2), substitute_source=1, channel_group=3)
    assert cfg.data.options["head_mask"] is True and ds.head_mask  # on by default when training
    cfg, ds = brain_mri.build(brain_mri.build_parser().parse_args(
        ["--data-dir", str(tmp_path), "--no-head-mask", "--image-size", "16", "--no-progress"]))
    assert cfg.data.options["head_mask"] is False and not ds.head_mask
    cfg, _ = brain_mri.build(brain_mri.build_parser().parse_args(
        ["--data-dir", str(tmp_path), "--flair-substitute", "0", "--image-size", "16", "--no-progress"]))
    assert cfg.data.augment.substitute == 0 and cfg.data.augment.substitute_channels == ()
    assert not cfg.data.augment.per_channel and cfg.data.augment.channel_group == 0
    cfg, _ = brain_mri.build(brain_mri.build_parser().parse_args(
        ["--data-dir", str(tmp_path), "--flair-substitute", "0", "--aug-gamma", "0.4", "--aug-contrast", "0.2",
         "--image-size", "16", "--no-progress"]))
    a = cfg.data.augment
    assert (a.gamma, a.contrast, a.brightness, a.per_channel, a.channel_group) == (0.4, 0.2, 0.0, True, 3)
    # --sequences: FLAIR fills in for the other chosen sequences, at their place in the model's input.
    for names, channels, source, group in (("flair,post", (1,), 0, 2), ("post,pre,flair", (0, 1), 2, 3),
                                           ("flair", (), 0, 0), ("pre,post", (), 0, 0)):
        cfg, ds = brain_mri.build(brain_mri.build_parser().parse_args(
            ["--data-dir", str(tmp_path), "--sequences", names, "--image-size", "16", "--no-progress"]))
        a = cfg.data.augment
        assert (a.substitute_channels, a.substitute_source, a.channel_group) == (channels, source, group)
        assert a.substitute == (0.3 if channels else 0.0)
        assert cfg.data.options["sequences"] == names.split(",") and ds.channels == len(names.split(","))
    assert "soft_labels" not in cfg.data.options and not ds.soft_labels  # old runs' options still --resume
    cfg, ds = brain_mri.build(brain_mri.build_parser().parse_args(
        ["--data-dir", str(tmp_path), "--soft-labels", "--image-size", "16", "--no-progress"]))
    assert cfg.data.options["soft_labels"] is True and ds.soft_labels
    assert ds.preprocess(ds.train()[0]).label.dtype == np.float32


@pytest.mark.parametrize("flag, value", [("--aug-gamma", "5"), ("--aug-scale", "1.5"), ("--aug-contrast", "-0.1")])
def test_entry_point_names_the_augmentation_flag_of_a_bad_value(tmp_path, capsys, flag, value):
    from experiments import brain_mri

    for i in range(3):
        write_patient(tmp_path / "data", f"P_{i}", 3, seed=i, size=16)
    code = brain_mri.main(["--data-dir", str(tmp_path / "data"), flag, value, "--image-size", "16", "--no-progress",
                           "--workdir", str(tmp_path / "run")])
    assert code == 2 and f"invalid value for {flag}: {float(value)!r}" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("flags, message", [
    (["--aux-heads", "4"], "invalid value for --aux-heads: 4 (must be in 0..depth - 1 = 3)"),
    (["--arch", "unetpp", "--aux-heads", "1"], "invalid value for --aux-heads: 1 (unetpp has no auxiliary heads"),
])
def test_entry_point_names_the_aux_heads_flag_of_a_bad_value(tmp_path, capsys, flags, message):
    from experiments import brain_mri

    for i in range(3):
        write_patient(tmp_path / "data", f"P_{i}", 3, seed=i, size=16)
    code = brain_mri.main(["--data-dir", str(tmp_path / "data"), *flags, "--image-size", "16", "--no-progress",
                           "--workdir", str(tmp_path / "run")])
    assert code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_entry_point_patch_size_defaults_to_the_whole_slice_and_is_checked(tmp_path):
    from experiments import brain_mri

    for i in range(3):
        write_patient(tmp_path, f"P_{i}", 2, seed=i, size=16)
    common = ["--data-dir", str(tmp_path), "--image-size", "32", "--no-progress"]
    cfg, _ = brain_mri.build(brain_mri.build_parser().parse_args(common))
    assert (cfg.data.patch_size, cfg.data.foreground_bias, cfg.data.preprocess.image_size) == (32, 0.0, 32)
    cfg, _ = brain_mri.build(brain_mri.build_parser().parse_args(
        common + ["--patch-size", "16", "--foreground-bias", "0.5"]))
    assert (cfg.data.patch_size, cfg.data.foreground_bias, cfg.data.preprocess.image_size) == (16, 0.5, 32)
    run = tmp_path / "run"
    assert brain_mri.main(common + ["--patch-size", "64", "--workdir", str(run)]) == 2
    assert not run.exists()


@needs_lgg
def test_committed_split_is_the_seeded_split_of_the_shared_patients():
    spec = json.loads(SPLIT_50.read_text())
    patients = list_patients(LGG_DIR)
    s = make_patient_split(patients, seed=spec["seed"], val_fraction=spec["val_fraction"],
                           test_fraction=spec["test_fraction"])
    assert {k: spec[k] for k in ("train", "val", "test")} == {k: s[k] for k in ("train", "val", "test")}
    named = spec["train"] + spec["val"] + spec["test"]
    assert len(named) == len(set(named)) == 50


def _old_split(n: int, n_val: int, seed: int) -> set[int]:  # the engine's carving before cases
    return set(np.random.default_rng(seed).permutation(n)[:n_val].tolist())


class _CaseSource(InMemorySource):
    def __init__(self, cases):
        super().__init__([Example(f"e{i}", np.zeros((4, 4, 1), np.uint8), np.zeros((4, 4), np.uint8), case=c)
                          for i, c in enumerate(cases)])
        self.cases = list(cases)


@pytest.mark.parametrize("seed", [0, 7])
def test_validation_carving_holds_out_whole_cases_and_keeps_drive_behaviour(seed):
    cfg = RunConfig(data=DataConfig(val_size=2), train=RunConfig().train.__class__(seed=seed))
    # DRIVE / folder: no cases known, or each image its own case: exactly the old choice.
    for src in (InMemorySource(_CaseSource(range(20)).examples), _CaseSource([f"c{i}" for i in range(20)])):
        fit, val = split_train_val(cfg, src)
        assert {int(val[i].id[1:]) for i in range(len(val))} == _old_split(20, 2, seed)
        assert len(fit) == 18
    cases = [f"p{i // 5}" for i in range(30)]  # 6 patients of 5 slices
    fit, val = split_train_val(cfg, _CaseSource(cases))
    val_cases, fit_cases = set(val.cases), set(fit.cases)
    assert len(val_cases) == 2 and not val_cases & fit_cases and len(val) == 10 and len(fit) == 20
    assert val_cases == {f"p{i}" for i in _old_split(6, 2, seed)}


def test_val_size_0_trains_on_every_patient():
    """`--val-size 0`: no validation source, every training patient's slices fit."""
    cases = [f"p{i // 5}" for i in range(30)]
    fit, val = split_train_val(RunConfig(data=DataConfig(val_size=0)), _CaseSource(cases))
    assert val is None and len(fit) == 30 and sorted(set(fit.cases)) == sorted(set(cases))


def test_learning_curve_splits_halve_fold_0s_training_patients():
    """The two half splits keep `--folds 5 --fold 0`'s test patients and the validation
    patients the engine carves there (seed 0, 10%), and share its other 36 between them."""
    s50 = json.loads(SPLIT_50.read_text())
    patients = sorted(s50["train"] + s50["val"] + s50["test"])
    test = fold_patients(patients, 5, 0)[0]
    rest = [p for p in patients if p not in test]
    # The LGG training source lists slices patient by patient, in sorted order: 3 each here.
    slices = _CaseSource([p for p in rest for _ in range(3)])
    fit, val = split_train_val(RunConfig(data=DataConfig(val_size=0.1)), slices)
    halves = [json.loads((SPLIT_50.parent / f"lgg_50_fold0_{name}.json").read_text())
              for name in ("half", "other_half")]
    for h in halves:
        assert h["test"] == test and h["val"] == sorted(set(val.cases)) and len(h["train"]) == 18
    assert sorted(halves[0]["train"] + halves[1]["train"]) == sorted(set(fit.cases))


# ----------------------------------------------------------------------------- sampling


def test_weighted_sampling_frequencies_match_the_weights():
    n, draws = 5, 20000
    examples = [Example(f"e{k}", np.full((8, 8, 1), k, np.float32), np.zeros((8, 8), np.uint8)) for k in range(n)]
    weights = np.array([0.5, 0.0, 3.0, 1.0, 0.5])
    sampler = PatchSampler(InMemorySource(examples), patch_size=8, augment=AugmentConfig.none(), weights=weights)
    counts = np.bincount([int(sampler(None, np.random.default_rng([11, i]))["image"][0, 0, 0]) for i in range(draws)],
                         minlength=n)
    p = weights / weights.sum()
    # Each count is Binomial(draws, p_k): within 5 standard deviations except with probability
    # < 6e-7 per example (normal tail; draws * p_k >= 2500 where p_k > 0), so this fails only
    # when the frequencies do not follow the weights (uniform draws would miss by > 30 sd).
    sd = np.sqrt(draws * p * (1 - p))
    assert np.all(np.abs(counts - draws * p) <= 5 * sd), (counts, draws * p)
    assert counts[1] == 0
    with pytest.raises(ValueError, match="weights"):
        PatchSampler(InMemorySource(examples), patch_size=8, weights=[1, 2])


def test_lgg_sampling_weights_follow_area_plus_uniform_share(tmp_path):
    labels = write_patient(tmp_path, "P_1", 5)
    write_patient(tmp_path, "P_2", 4, seed=1)
    (tmp_path / "split.json").write_text(json.dumps({"train": ["P_1", "P_2"], "val": [], "test": ["P_2"]}))
    with pytest.raises(DataError, match="more than one split"):
        LggDataset(tmp_path, split=tmp_path / "split.json", preprocess=PRE, progress=False)
    for p in ("P_3", "P_4"):
        write_patient(tmp_path, p, 2, seed=3)
    (tmp_path / "split.json").write_text(json.dumps({"train": ["P_1", "P_2"], "val": ["P_3"], "test": ["P_4"]}))
    ds = LggDataset(tmp_path, split=tmp_path / "split.json", uniform_share=0.25, preprocess=PRE, progress=False)
    w = ds.sampling_weights(ds.train())
    cases = ds.train().cases
    area = np.array([labels[k].sum() for k in range(1, 6)], float)
    expected = (area + 0.25 * area.sum() / 5) / (area.sum() * 1.25) / 2  # each of 2 patients: half the mass
    np.testing.assert_allclose(w[: cases.count("P_1")], expected)
    np.testing.assert_allclose(w.sum(), 1.0)
    assert LggDataset(tmp_path, split=tmp_path / "split.json", uniform_share=None, preprocess=PRE,
                      progress=False).sampling_weights(ds.train()) is None


def test_lgg_patient_weight_power_draws_small_lesions_more_often(tmp_path):
    labels = {p: write_patient(tmp_path, p, n, seed=i) for i, (p, n) in enumerate([("P_1", 5), ("P_2", 4), ("P_3", 1)])}
    write_patient(tmp_path, "P_4", 2, seed=3)
    (tmp_path / "split.json").write_text(json.dumps({"train": ["P_1", "P_2", "P_3"], "val": [], "test": ["P_4"]}))

    def weights(power, share=0.25):
        ds = LggDataset(tmp_path, split=tmp_path / "split.json", uniform_share=share, patient_weight_power=power,
                        preprocess=PRE, progress=False)
        cases = np.array(ds.train().cases)
        return {p: ds.sampling_weights(ds.train())[cases == p] for p in ("P_1", "P_2", "P_3")}

    totals = {p: sum(int(m.sum()) for m in labels[p].values()) for p in labels}
    assert sorted(totals.values()) == [10, 40, 90]  # abnormal pixels: slice k has 10 k where k is odd
    base, inverse, half = weights(0.0), weights(1.0), weights(0.5)
    for p in base:
        # The slices of a patient keep their area-weighted proportions; only the patient's mass changes.
        np.testing.assert_allclose(inverse[p] / inverse[p].sum(), base[p] / base[p].sum(), rtol=1e-12)
        np.testing.assert_allclose(base[p].sum(), 1 / 3, rtol=1e-12)
    # Power 1: every patient's probability times its abnormal volume is the same.
    mass = [inverse[p].sum() * totals[p] for p in base]
    np.testing.assert_allclose(mass, mass[0], rtol=1e-12)
    # Power 1/2: probability ratios are the square roots of the volume ratios.
    np.testing.assert_allclose(half["P_2"].sum() / half["P_1"].sum(), np.sqrt(totals["P_1"] / totals["P_2"]),
                               rtol=1e-12)
    # Uniform slices within each patient, patients still weighted.
    flat = weights(1.0, share=None)
    for p in base:
        np.testing.assert_allclose(flat[p], inverse[p].sum() / len(flat[p]), rtol=1e-12)
    with pytest.raises(DataError, match="--patient-weight-power"):
        LggDataset(tmp_path, split=tmp_path / "split.json", patient_weight_power=-1, preprocess=PRE, progress=False)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.one_of(st.just(0), st.integers(1, 10**6)), min_size=1, max_size=12),
       st.sampled_from([0.0, 0.5, 1.0, 2.0]))
def test_patient_sampling_weights_formula(totals, power):
    w = patient_sampling_weights(totals, power)
    t = np.asarray(totals, float)
    assert w.shape == t.shape and np.isclose(w.sum(), 1.0) and np.all(w > 0)
    if power == 0 or not (t > 0).any():
        np.testing.assert_allclose(w, 1 / len(t))
        return
    # Reference by hand: lesioned patients (v / median)^-power, the others as a median patient.
    m = float(np.median(t[t > 0]))
    ref = np.array([(v / m) ** -power if v > 0 else 1.0 for v in t])
    np.testing.assert_allclose(w, ref / ref.sum(), rtol=1e-9)
    # A smaller lesion is never drawn less often than a larger one.
    order = np.argsort(t[t > 0], kind="stable")
    assert np.all(np.diff(w[t > 0][order]) <= 1e-15)


def test_patient_sampling_weights_reject_bad_totals():
    for bad in ([], [1, -2], [float("nan")]):
        with pytest.raises(ValueError, match="patient totals"):
            patient_sampling_weights(bad, 1.0)


# ----------------------------------------------------------------------------- volume metrics


def _set_dice(pred, label, k):  # an independent reference: Dice of the sets of voxel coordinates
    p, y = set(zip(*np.nonzero(pred == k))), set(zip(*np.nonzero(label == k)))
    return 1.0 if not p and not y else 2 * len(p & y) / (len(p) + len(y))


def _random_volume(rng, depth, num_classes, shape=(6, 7)):
    label = rng.integers(0, num_classes, (depth, *shape)) * (rng.random((depth, *shape)) < 0.4)
    pred = np.where(rng.random(label.shape) < 0.3, rng.integers(0, num_classes, label.shape), label)
    return pred.astype(np.uint8), label.astype(np.uint8)


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 6), st.integers(0, 2**31 - 1), st.sampled_from([2, 3, 4]))
def test_volume_and_slice_dice_match_a_set_reference(depth, seed, num_classes):
    pred, label = _random_volume(np.random.default_rng(seed), depth, num_classes)
    d, s = volume_dice(pred, label, num_classes), slice_dice(pred, label, num_classes)
    assert s.shape == (depth, num_classes - 1)
    for k in range(1, num_classes):
        assert d[k - 1] == pytest.approx(_set_dice(pred, label, k))
        for z in range(depth):
            assert s[z, k - 1] == pytest.approx(_set_dice(pred[z], label[z], k))


def test_volume_dice_equals_the_engines_pooled_case_counts():
    pred, label = _random_volume(np.random.default_rng(5), 4, 3, (16, 16))
    counts = metrics.class_confusion_counts(pred, label, 3, per_case=True)  # per slice
    per_case = metrics.sum_by_case(counts, np.zeros(4, np.int32), 1)  # one volume
    np.testing.assert_allclose(volume_dice(pred, label, 3), np.asarray(metrics.dice(per_case))[0, 1:], rtol=1e-6)
    assert not np.allclose(volume_dice(pred, label, 3), slice_dice(pred, label, 3).mean(axis=0))


def test_largest_component_in_3d_and_per_slice_without_scipy():
    m = np.zeros((4, 8, 8), bool)
    m[0:3, 0:3, 0:3] = True  # 27 voxels
    m[3, 3, 3] = True  # touches the cube only diagonally (26-connectivity joins it)
    m[0:2, 6:8, 6:8] = True  # 8 voxels, separate
    m[3, 6, 0] = True  # a lone voxel
    expected = np.zeros_like(m)
    expected[0:3, 0:3, 0:3] = True
    expected[3, 3, 3] = True
    np.testing.assert_array_equal(largest_component(m, use_scipy=True), expected)
    per_slice = largest_component(m, use_scipy=False)
    assert per_slice[3, 3, 3] and not per_slice[3, 6, 0] and per_slice[1, 6, 6] is np.False_
    np.testing.assert_array_equal(per_slice[0], m[0] & (np.arange(8)[:, None] < 3) & (np.arange(8) < 3))
    assert not largest_component(np.zeros((2, 3, 3), bool)).any()
    two = np.zeros((1, 5, 5), np.uint8)
    two[0, 0, 0], two[0, 3:5, 3:5] = 2, 2
    two[0, 0, 3] = 1
    np.testing.assert_array_equal(keep_largest(two, 3)[0] == 2, (two[0] == 2) & (np.arange(5)[:, None] >= 3))
    assert keep_largest(two, 3)[0, 0, 3] == 1


def test_reporter_scores_each_volume_and_writes_pictures(tmp_path):
    rep = VolumeReporter(tmp_path, num_classes=2)
    y = np.zeros((3, 16, 16), np.uint8)
    y[:, 4:10, 4:10] = 1
    p = y.copy()
    p[0] = 0  # misses the first slice
    p[2, 14:16, 14:16] = 1  # a small false positive
    for k in range(3):
        img = np.full((16, 16, 3), 50 * k, np.uint8)
        rep.add(Example(f"A_{k + 1}", img, y[k], case="A"), None, p[k])
    rep.add(Example("B_1", np.zeros((16, 16, 3), np.uint8), np.zeros((16, 16), np.uint8), case="B"), None,
            np.zeros((16, 16), np.uint8))
    out = rep.finish()
    tp, fp, fn = 72, 4, 36
    assert out["dice_per_volume_mean"] == pytest.approx(2 * tp / (2 * tp + fp + fn))
    assert out["dice_per_volume_lcc_mean"] == pytest.approx(2 * tp / (2 * tp + fn))  # LCC drops the speck
    assert out["num_volumes"] == 2 and out["num_volumes_scored"] == 1  # B's label is empty
    assert out["dice_per_slice_mean"] == pytest.approx((0 + 1 + 72 / 76 + 1) / 4)
    assert out["dice_per_slice_mean_nonempty_label"] == pytest.approx((0 + 1 + 72 / 76) / 3)
    with Image.open(tmp_path / "gifs" / "A.gif") as gif:
        assert gif.n_frames == 3
    overlay = cv2.imread(str(tmp_path / "overlays" / "A_2.png"))[..., ::-1]
    assert tuple(overlay[4, 4]) == (255, 255, 0) and tuple(overlay[7, 7]) == (50, 50, 50)  # both outlines
    assert tuple(cv2.imread(str(tmp_path / "overlays" / "A_1.png"))[4, 4][::-1]) == (0, 255, 0)  # label only
    assert (tmp_path / "dsc.png").stat().st_size > 0 and (tmp_path / "per_volume.csv").is_file()
    assert not (tmp_path / "overlays" / "B_1.png").exists()
    rep2 = VolumeReporter(tmp_path / "r2")
    rep2.add(Example("A_1", img, y[0], case="A"), None, p[0])
    rep2.add(Example("B_1", img, y[0], case="B"), None, p[0])
    with pytest.raises(ValueError, match="not contiguous"):
        rep2.add(Example("A_2", img, y[0], case="A"), None, p[0])


# ----------------------------------------------------------------------------- end to end


@pytest.mark.slow
@needs_lgg
def test_few_step_run_on_three_patients_writes_results_dsc_and_gifs(tmp_path, capsys):
    """Training with 2.5D input (--context 1), evaluation of the run on another folder and
    prediction of patient folders."""
    from experiments import brain_mri

    root = real_subset(tmp_path)
    run = tmp_path / "run"
    flags = ["--data-dir", str(root), "--image-size", "32", "--features", "4", "--depth", "2", "--steps", "2",
             "--batch-size", "2", "--eval-every", "2", "--context", "1", "--no-progress", "--workdir", str(run)]
    assert brain_mri.main(flags) == 0
    results = json.loads((run / "results.json").read_text())
    vol = results["volumes"]
    split = results["data"]["split"]
    assert len(split["train"]) == len(split["val"]) == len(split["test"]) == 1
    assert vol["num_volumes"] == 1 and vol["lcc"].startswith("3D")
    assert vol["dice_per_volume_mean"] == pytest.approx(results["test"]["dice_per_case_mean"], abs=1e-6)
    assert (run / "dsc.png").is_file() and (run / "gifs" / f"{split['test'][0]}.gif").is_file()
    n_test = len([f for f in (LGG_DIR / split["test"][0]).iterdir() if not f.stem.endswith("_mask")])
    assert results["test"]["num_images"] == n_test
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["data"]["augment"]["rotate"] == 15.0 and cfg["data"]["augment"]["vertical_flip"] is False
    # 2.5D input: the slice and one neighbour on each side, kept by --evaluate and predict below.
    assert json.loads((run / "dataset.json").read_text())["channels"] == 9 and cfg["data"]["options"]["context"] == 1
    # The trained run on every patient of another folder (here: the test patient alone, so
    # that nothing new is compiled), into a new folder: the final weights reproduce the
    # run's own test figures.
    other = tmp_path / "other"
    other.mkdir()
    (other / split["test"][0]).symlink_to((LGG_DIR / split["test"][0]).resolve(), target_is_directory=True)
    out = tmp_path / "eval"
    assert brain_mri.main(["--evaluate", str(run), "--data-dir", str(other), "--workdir", str(out), "--which", "final",
                           "--no-progress"]) == 0
    ev = json.loads((out / "results.json").read_text())
    assert ev["volumes"]["num_volumes"] == 1 and (out / "gifs" / f"{split['test'][0]}.gif").is_file()
    assert [r["case"] for r in ev["volumes_per_patient"]] == split["test"]
    for key in ("dice", "dice_per_case_mean", "sensitivity", "num_images"):
        assert ev["test"][key] == pytest.approx(results["test"][key], abs=1e-6)
    assert ev["tta"] == "none" and ev["weights"] == "live"
    # --live-weights asks for the weights behind a moving average this run never kept.
    capsys.readouterr()
    assert brain_mri.main(["--evaluate", str(run), "--data-dir", str(other), "--workdir", str(tmp_path / "eval_live"),
                           "--which", "final", "--live-weights", "--no-progress"]) == 2
    assert f"--live-weights: {run} trained without --ema-decay" in capsys.readouterr().err
    assert not (tmp_path / "eval_live").exists()
    # With flip TTA: recorded, and the same patient's slices evaluated.
    assert brain_mri.main(["--evaluate", str(run), "--data-dir", str(other), "--workdir", str(tmp_path / "eval_tta"),
                           "--which", "final", "--tta", "hflip", "--no-progress"]) == 0
    ev_tta = json.loads((tmp_path / "eval_tta" / "results.json").read_text())
    assert ev_tta["tta"] == "hflip" and ev_tta["test"]["num_images"] == ev["test"]["num_images"]
    # An ensemble of the run with itself: the mean of equal probabilities is each of them,
    # so the figures are the run's own, exactly.
    assert brain_mri.main(["--evaluate", str(run), str(run), "--data-dir", str(other), "--workdir",
                           str(tmp_path / "eval_ens"), "--which", "final", "--no-progress"]) == 0
    ev_ens = json.loads((tmp_path / "eval_ens" / "results.json").read_text())
    assert ev_ens["ensemble"] == "mean" and len(ev_ens["evaluated_runs"]) == 2
    assert ev_ens["volumes_per_patient"] == ev["volumes_per_patient"] and ev_ens["test"] == ev["test"]
    # A run trained on another input (here: another image size) is refused, naming both runs.
    other_run = tmp_path / "other_run"
    other_run.mkdir()
    cfg["data"]["preprocess"]["image_size"] = 64
    (other_run / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(PredictorError, match=f"{other_run} and {run} differ in preprocess"):
        brain_mri.evaluate_run([run, other_run], str(other), tmp_path / "eval_bad", progress=False)
    assert not (tmp_path / "eval_bad").exists()
    # The run folder and the evaluation folder as crossval reads them: the run's own figure;
    # refused together, since both tested the same patient.
    from unet_jax import crossval

    assert crossval.summarize([crossval.load_run(run)])["dice_per_volume_mean"] == pytest.approx(
        vol["dice_per_volume_mean"], rel=1e-12)
    with pytest.raises(DataError, match=f"{split['test'][0]} is a test case of both"):
        crossval.summarize([crossval.load_run(run), crossval.load_run(out)])
    assert brain_mri.main(["--evaluate", str(tmp_path / "nowhere"), "--data-dir", str(root)]) == 2
    _predict_patient_folders(run, other, split["test"][0], tmp_path)


def _predict_patient_folders(run: Path, folder: Path, patient: str, tmp_path: Path) -> None:
    """``unet_jax.predict`` on a folder of patient folders: the final weights give the run's
    own test probabilities (PNG grey levels: rounding alone allows one level), Dice of the
    written masks is the summary's; without masks beside the slices, the same masks and
    no scores."""
    from unet_jax import predict

    out = tmp_path / "pred"
    assert predict.main(["--run", str(run), "--which", "final", str(folder), "--output", str(out),
                         "--no-progress"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    saved = sorted((run / "predictions").glob(f"{patient}_*_prob.png"))
    assert summary["labelled"] and summary["volumes"] == 1 and summary["slices"] == len(saved) > 0
    for f in saved:
        mine = read_mask(out / patient / f.name).astype(int)
        assert mine.shape == (256, 256) and np.abs(mine - read_mask(f).astype(int)).max() <= 1
    numbers = [int(f.name.split("_")[-2]) for f in saved]
    pred = np.stack([read_mask(out / patient / f"{patient}_{k}_pred.png") > 0 for k in numbers])
    label = np.stack([read_mask(LGG_DIR / patient / f"{patient}_{k}_mask.tif") > 0 for k in numbers])
    if label.any():
        assert summary["per_volume"]["dice_per_volume_mean"] == pytest.approx(_set_dice(pred, label, True))
    bare = tmp_path / "bare" / patient  # the slices alone: a patient folder given directly
    bare.mkdir(parents=True)
    for f in (LGG_DIR / patient).glob("*.tif"):
        if not f.stem.endswith("_mask"):
            (bare / f.name).symlink_to(f.resolve())
    assert predict.main(["--run", str(run), "--which", "final", str(bare), "--output", str(tmp_path / "bare_pred"),
                         "--no-progress"]) == 0
    summary = json.loads((tmp_path / "bare_pred" / "summary.json").read_text())
    assert not summary["labelled"] and "test" not in summary
    for k in numbers:
        name = f"{patient}/{patient}_{k}_pred.png"
        np.testing.assert_array_equal(read_mask(tmp_path / "bare_pred" / name), read_mask(out / name))
    assert (tmp_path / "bare_pred" / "gifs" / f"{patient}.gif").is_file()
    assert predict.main(["--run", str(run), str(bare / f"{patient}_1.tif"), "--output", str(tmp_path / "x")]) == 2
