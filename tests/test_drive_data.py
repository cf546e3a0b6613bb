"""DRIVE reading/validation, and the tfds (ArrayRecord) round trip.

Real-data tests read the shared, read-only DRIVE copy at ../shared/data/DRIVE
(or $UNET_JAX_DRIVE_DIR) and skip when it is absent. Bad-input tests build
small layouts in tmp_path.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from unet_jax.data import (
    DRIVE_URL,
    DriveDataError,
    DriveNotFoundError,
    read_drive_split,
    resolve_drive_dir,
)
from unet_jax.data.synthetic import make_synthetic_example

DRIVE_DIR = Path(os.environ.get("UNET_JAX_DRIVE_DIR") or Path(__file__).parents[2] / "shared/data/DRIVE")
needs_drive = pytest.mark.skipif(not DRIVE_DIR.is_dir(), reason=f"DRIVE not found at {DRIVE_DIR}")


# ---------------------------------------------------------------------------
# Helpers: a tiny DRIVE-like layout on disk.


def _write_gif(path: Path, mask01: np.ndarray) -> None:
    # Pillow, because OpenCV < 4.11 cannot write (or read) GIF.
    Image.fromarray((mask01 > 0).astype(np.uint8) * 255).save(path)


def _write_example(root: Path, split: str, image_id: str, image_rgb, label, fov) -> None:
    d = root / split
    for sub in ("images", "1st_manual", "mask"):
        (d / sub).mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(d / "images" / f"{image_id}_{split}.tif"), image_rgb[..., ::-1])
    _write_gif(d / "1st_manual" / f"{image_id}_manual1.gif", label)
    _write_gif(d / "mask" / f"{image_id}_{split}_mask.gif", fov)


def _make_layout(root: Path, size=(24, 20), ids=None) -> Path:
    """Small random layout: 2 training and 1 test image of `size` (H, W)."""
    rng = np.random.default_rng(0)
    ids = ids or {"training": ["21", "22"], "test": ["01"]}
    for split, split_ids in ids.items():
        for i in split_ids:
            image = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
            label = rng.random(size) < 0.2
            fov = np.ones(size, bool)
            _write_example(root, split, i, image, label, fov)
    return root


# ---------------------------------------------------------------------------
# Real DRIVE.


@pytest.fixture(scope="module")
def drive_splits():
    return {s: read_drive_split(DRIVE_DIR, s) for s in ("training", "test")}


@needs_drive
def test_real_drive_splits(drive_splits):
    train, test = drive_splits["training"], drive_splits["test"]
    assert [e.id for e in train] == [str(i) for i in range(21, 41)]
    assert [e.id for e in test] == [f"{i:02d}" for i in range(1, 21)]
    for e in train + test:
        assert e.image.shape == (584, 565, 3) and e.image.dtype == np.uint8
        assert e.label.shape == e.valid.shape == (584, 565)
        assert e.label.dtype == e.valid.dtype == np.uint8
        assert set(np.unique(e.label)) <= {0, 1} and set(np.unique(e.valid)) == {0, 1}
        # Vessels are ~8-15% of the FOV; a broken threshold or channel mix-up
        # would give ~0% or ~100%.
        frac = e.label[e.valid > 0].mean()
        assert 0.05 < frac < 0.2, (e.id, frac)
        # RGB order: fundus images are red-dominated inside the FOV.
        mean = e.image[e.valid > 0].mean(axis=0)
        assert mean[0] > mean[1] > mean[2], (e.id, mean)


@needs_drive
def test_real_drive_tfds_round_trip(drive_splits, tmp_path):
    from unet_jax.data import load_drive

    train = load_drive(DRIVE_DIR, "train", tfds_dir=tmp_path)
    test = load_drive(DRIVE_DIR, "test", tfds_dir=tmp_path)
    for got, want in ((train, drive_splits["training"]), (test, drive_splits["test"])):
        assert [e.id for e in got] == [e.id for e in want]
        for g, w in zip(got, want):
            np.testing.assert_array_equal(g.image, w.image)
            np.testing.assert_array_equal(g.label, w.label)
            np.testing.assert_array_equal(g.valid, w.valid)
    assert "tensorflow" not in sys.modules
    assert len(list(tmp_path.glob("drive_*/drive/1.0.0/*.array_record*"))) == 2


# ---------------------------------------------------------------------------
# tfds builder on a small full-size fake layout (runs without DRIVE).


def test_tfds_prepare_fake_layout(tmp_path):
    from unet_jax.data import load_drive

    drive = tmp_path / "DRIVE"
    rng = np.random.default_rng(0)
    for split, i in (("training", "21"), ("test", "01")):
        ex = make_synthetic_example(i, rng)
        _write_example(drive, split, i, ex.image, ex.label, ex.valid)
    before = sorted((p, p.stat().st_mtime_ns) for p in drive.rglob("*"))
    tfds_dir = tmp_path / "tfds"

    train = load_drive(drive, "train", tfds_dir=tfds_dir)
    want = read_drive_split(drive, "training")
    assert [e.id for e in train] == ["21"]
    np.testing.assert_array_equal(train[0].image, want[0].image)
    np.testing.assert_array_equal(train[0].label, want[0].label)
    assert [e.id for e in load_drive(drive, "test", tfds_dir=tfds_dir)] == ["01"]
    # Nothing written into the user's DRIVE folder; prepared exactly once.
    assert sorted((p, p.stat().st_mtime_ns) for p in drive.rglob("*")) == before
    info = list(tfds_dir.glob("drive_*/drive/1.0.0/dataset_info.json"))
    assert len(info) == 1
    mtime = info[0].stat().st_mtime_ns
    load_drive(drive, "train", tfds_dir=tfds_dir)
    assert info[0].stat().st_mtime_ns == mtime
    # Changing the source data gives a new cache key (no stale arrays).
    _write_example(drive, "training", "22", want[0].image, want[0].label, want[0].valid)
    assert [e.id for e in load_drive(drive, "train", tfds_dir=tfds_dir)] == ["21", "22"]
    assert "tensorflow" not in sys.modules


def test_tfds_bad_input_leaves_no_dataset(tmp_path):
    from unet_jax.data import load_drive

    drive = _make_layout(tmp_path / "DRIVE")
    (drive / "test" / "mask" / "01_test_mask.gif").unlink()
    with pytest.raises(DriveDataError, match="01_test_mask.gif"):
        load_drive(drive, "train", tfds_dir=tmp_path / "tfds")
    # tfds wrote into a temporary dir that was removed: no half dataset.
    assert not list((tmp_path / "tfds").glob("drive_*/drive/*"))


# ---------------------------------------------------------------------------
# Bad input, each error names the offending path.


def test_valid_small_layout(tmp_path):
    root = _make_layout(tmp_path)
    train = read_drive_split(root, "training")
    assert [e.id for e in train] == ["21", "22"]
    assert train[0].image.shape == (24, 20, 3)
    assert set(np.unique(train[0].label)) <= {0, 1}


def test_rgb_order_and_threshold(tmp_path):
    d = tmp_path / "training"
    image = np.zeros((8, 6, 3), np.uint8)
    image[..., 0] = 200  # red
    label = np.zeros((8, 6), np.uint8)
    label[:, 3:] = 200
    label[:, 5] = 100  # below threshold
    _write_example(tmp_path, "training", "21", image, np.zeros((8, 6)), np.ones((8, 6)))
    Image.fromarray(label).save(d / "1st_manual" / "21_manual1.gif")
    (ex,) = read_drive_split(tmp_path, "training")
    assert ex.image[0, 0].tolist() == [200, 0, 0]
    assert ex.label[0].tolist() == [0, 0, 0, 1, 1, 0]


def test_missing_split_folder(tmp_path):
    root = _make_layout(tmp_path, ids={"training": ["21"]})
    with pytest.raises(DriveDataError, match=re.escape(str(root / "test"))):
        read_drive_split(root, "test")


def test_missing_subfolder(tmp_path):
    root = _make_layout(tmp_path)
    for f in (root / "training" / "mask").iterdir():
        f.unlink()
    (root / "training" / "mask").rmdir()
    with pytest.raises(DriveDataError, match=re.escape(str(root / "training" / "mask"))):
        read_drive_split(root, "training")


def test_no_images(tmp_path):
    root = _make_layout(tmp_path)
    for f in (root / "test" / "images").iterdir():
        f.unlink()
    with pytest.raises(DriveDataError, match=re.escape(str(root / "test" / "images"))):
        read_drive_split(root, "test")


def test_image_without_label(tmp_path):
    root = _make_layout(tmp_path)
    label = root / "training" / "1st_manual" / "22_manual1.gif"
    label.unlink()
    with pytest.raises(DriveDataError) as e:
        read_drive_split(root, "training")
    assert str(label) in str(e.value)
    assert str(root / "training" / "images" / "22_training.tif") in str(e.value)


def test_corrupt_file(tmp_path):
    root = _make_layout(tmp_path)
    bad = root / "training" / "images" / "21_training.tif"
    bad.write_bytes(b"this is not a tiff")
    with pytest.raises(DriveDataError, match="corrupt") as e:
        read_drive_split(root, "training")
    assert str(bad) in str(e.value)


def test_empty_file(tmp_path):
    root = _make_layout(tmp_path)
    bad = root / "training" / "1st_manual" / "21_manual1.gif"
    bad.write_bytes(b"")
    with pytest.raises(DriveDataError, match=re.escape(str(bad))):
        read_drive_split(root, "training")


def test_mask_size_mismatch(tmp_path):
    root = _make_layout(tmp_path)
    mask = root / "training" / "mask" / "21_training_mask.gif"
    _write_gif(mask, np.ones((10, 12)))
    with pytest.raises(DriveDataError) as e:
        read_drive_split(root, "training")
    msg = str(e.value)
    assert str(mask) in msg and "12x10" in msg and "20x24" in msg


def test_bad_split_name(tmp_path):
    with pytest.raises(ValueError):
        read_drive_split(tmp_path, "train")  # type: ignore[arg-type]


# ---------------------------------------------------------------------------
# resolve_drive_dir


def test_resolve_explicit(tmp_path, monkeypatch):
    monkeypatch.setenv("UNET_JAX_DRIVE_DIR", str(tmp_path / "elsewhere"))
    assert resolve_drive_dir(tmp_path) == tmp_path.resolve()


def test_resolve_env(tmp_path, monkeypatch):
    monkeypatch.setenv("UNET_JAX_DRIVE_DIR", str(tmp_path))
    assert resolve_drive_dir(None) == tmp_path.resolve()


def test_resolve_default(tmp_path, monkeypatch):
    monkeypatch.delenv("UNET_JAX_DRIVE_DIR", raising=False)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data" / "DRIVE").mkdir(parents=True)
    assert resolve_drive_dir() == (tmp_path / "data" / "DRIVE").resolve()


def test_resolve_not_found_message(tmp_path, monkeypatch):
    monkeypatch.setenv("UNET_JAX_DRIVE_DIR", str(tmp_path / "from_env"))
    monkeypatch.chdir(tmp_path)
    missing = tmp_path / "nope"
    with pytest.raises(DriveNotFoundError) as e:
        resolve_drive_dir(missing)
    msg = str(e.value)
    assert isinstance(e.value, DriveDataError)
    for expected in (
        str(missing),
        str(tmp_path / "from_env"),
        str(tmp_path / "data" / "DRIVE"),
        DRIVE_URL,
        "1st_manual",
        "UNET_JAX_DRIVE_DIR",
        "--synthetic",  # what a command-line user can run without DRIVE
    ):
        assert expected in msg, expected


def test_nested_layout_hint(tmp_path):
    _make_layout(tmp_path / "DRIVE")  # user pointed at the parent folder
    with pytest.raises(DriveDataError, match="did you mean") as e:
        read_drive_split(tmp_path, "training")
    assert str(tmp_path / "DRIVE") in str(e.value)
