"""Patch pipeline (grain) and whole-image preprocessing.

Most pipeline tests use "coordinate images": channel 0 holds each pixel's row
and channel 1 its column. With intensity augmentation off, every patch pixel
then tells exactly where in which image it came from, so centres, cropping,
clamping and the alignment of image/label/mask under flips and rotations are
checked exactly rather than statistically.
"""

from __future__ import annotations

import itertools

import cv2
import numpy as np
import pytest

from unet_jax.data import (
    AugmentConfig,
    PreprocessConfig,
    make_train_dataset,
    make_train_iterator,
    preprocess_image,
)

H, W, P = 100, 120, 16
NO_AUG = AugmentConfig.none()
GEOM_ONLY = AugmentConfig(flips=True, rot90=True, brightness=0.0, contrast=0.0)


def _coord_data(n: int = 3):
    """n coordinate images (channel 2 = image index), labels, and a FOV that
    is a rectangle far enough from the border that patches never clamp."""
    rows, cols = np.mgrid[0:H, 0:W].astype(np.float32)
    images, labels, fovs = [], [], []
    for k in range(n):
        images.append(np.stack([rows, cols, np.full_like(rows, k)], axis=-1))
        label = np.zeros((H, W), np.uint8)
        label[30 + 5 * k, 20:100] = 1  # a horizontal "vessel", partly outside the FOV
        label[20:80, 60 + 3 * k] = 1
        labels.append(label)
        fov = np.zeros((H, W), np.uint8)
        fov[25:75, 30:90] = 1
        fovs.append(fov)
    return images, labels, fovs


def _first_batches(it, n=3):
    return list(itertools.islice(iter(it), n))


def _decode(batch):
    """Per patch pixel: (image index, row, col) of its source pixel."""
    img = batch["image"]
    return (img[..., 2].astype(int), img[..., 0].astype(int), img[..., 1].astype(int))


def test_batch_shapes_and_dtypes():
    images, labels, fovs = _coord_data()
    (b,) = _first_batches(make_train_iterator(images, labels, fovs, patch_size=P, batch_size=8), 1)
    assert set(b) == {"image", "label", "mask"}
    assert b["image"].shape == (8, P, P, 3)
    assert b["label"].shape == b["mask"].shape == (8, P, P, 1)
    assert all(v.dtype == np.float32 for v in b.values())
    assert set(np.unique(b["label"])) <= {0.0, 1.0}


@pytest.mark.parametrize("vessel_bias", [0.0, 1.0])
def test_centres_in_fov_and_crops_aligned(vessel_bias):
    images, labels, fovs = _coord_data()
    ds = make_train_dataset(
        images, labels, fovs, patch_size=P, batch_size=64, augment=NO_AUG, vessel_bias=vessel_bias
    )
    b = ds[0]
    k, r, c = _decode(b)
    # Crops are contiguous P x P windows.
    assert (np.diff(r, axis=1) == 1).all() and (np.diff(c, axis=2) == 1).all()
    for i in range(len(k)):
        kk, rr, cc = k[i, P // 2, P // 2], r[i, P // 2, P // 2], c[i, P // 2, P // 2]
        assert b["mask"][i, P // 2, P // 2, 0] == 1 and fovs[kk][rr, cc] == 1
        if vessel_bias == 1.0:
            assert b["label"][i, P // 2, P // 2, 0] == 1
        # Label and mask are the crops at the same place as the image.
        np.testing.assert_array_equal(b["label"][i, ..., 0], labels[kk][r[i], c[i]])
        np.testing.assert_array_equal(b["mask"][i, ..., 0], fovs[kk][r[i], c[i]])
    # Some patches overlap the FOV border (only centres are constrained).
    assert (b["mask"] == 0).any()


def test_geometric_augmentation_keeps_alignment():
    images, labels, fovs = _coord_data()
    b = make_train_dataset(images, labels, fovs, patch_size=P, batch_size=64, augment=GEOM_ONLY)[0]
    k, r, c = _decode(b)
    orientations = set()
    for i in range(len(k)):
        np.testing.assert_array_equal(b["label"][i, ..., 0], labels[k[i, 0, 0]][r[i], c[i]])
        np.testing.assert_array_equal(b["mask"][i, ..., 0], fovs[k[i, 0, 0]][r[i], c[i]])
        # Orientation = direction of (row, col) increase along patch axis 1.
        orientations.add(
            (
                int(r[i, 0, 1] - r[i, 0, 0]),
                int(c[i, 0, 1] - c[i, 0, 0]),
                int(r[i, 1, 0] - r[i, 0, 0]),
                int(c[i, 1, 0] - c[i, 0, 0]),
            )
        )
    assert len(orientations) == 8  # all symmetries of the square occur


def test_intensity_augmentation():
    rng = np.random.default_rng(0)
    images = [rng.uniform(0.2, 0.8, (H, W, 1)).astype(np.float32) for _ in range(2)]
    _, labels, fovs = _coord_data(2)
    aug = AugmentConfig(flips=False, rot90=False, brightness=0.3, contrast=0.3)
    plain = make_train_dataset(images, labels, fovs, patch_size=P, batch_size=32, augment=NO_AUG)[0]
    jit = make_train_dataset(images, labels, fovs, patch_size=P, batch_size=32, augment=aug)[0]
    # Same sampled locations (geometry does not use the intensity draws first).
    np.testing.assert_array_equal(plain["label"], jit["label"])
    np.testing.assert_array_equal(plain["mask"], jit["mask"])
    assert not np.allclose(plain["image"], jit["image"])
    assert jit["image"].min() >= 0.0 and jit["image"].max() <= 1.0


def test_clamping_at_image_border():
    images, labels, _ = _coord_data(1)
    fovs = [np.ones((H, W), np.uint8)]  # centres anywhere, including corners
    b = make_train_dataset(images, labels, fovs, patch_size=P, batch_size=256, augment=NO_AUG)[0]
    _, r, c = _decode(b)
    assert r.min() == 0 or c.min() == 0  # some patches were clamped
    assert r.min() >= 0 and c.min() >= 0 and r.max() < H and c.max() < W


def test_deterministic_per_seed():
    images, labels, fovs = _coord_data()
    kw = dict(patch_size=P, batch_size=8)
    a = _first_batches(make_train_iterator(images, labels, fovs, seed=1, **kw))
    b = _first_batches(make_train_iterator(images, labels, fovs, seed=1, **kw))
    c = _first_batches(make_train_iterator(images, labels, fovs, seed=2, **kw))
    for x, y in zip(a, b):
        for key in x:
            np.testing.assert_array_equal(x[key], y[key])
    assert not np.array_equal(a[0]["image"], c[0]["image"])
    # Batches differ from one another, and random access matches iteration.
    assert not np.array_equal(a[0]["image"], a[1]["image"])
    ds = make_train_dataset(images, labels, fovs, seed=1, **kw)
    np.testing.assert_array_equal(ds[2]["image"], a[2]["image"])


def test_epochs_and_epoch_size():
    images, labels, fovs = _coord_data()
    ds = make_train_dataset(
        images, labels, fovs, patch_size=P, batch_size=10, num_epochs=2, patches_per_epoch=25
    )
    assert len(ds) == 5  # 50 patches, partial batch dropped
    batches = list(
        make_train_iterator(
            images, labels, fovs, patch_size=P, batch_size=10, num_epochs=2, patches_per_epoch=25
        )
    )
    assert len(batches) == 5
    # Default epoch: patches tiling the images' area once.
    ds = make_train_dataset(images, labels, fovs, patch_size=P, batch_size=None, num_epochs=1)
    assert len(ds) == 3 * H * W // (P * P)
    assert ds[0]["image"].shape == (P, P, 3)


def test_bad_arguments():
    images, labels, fovs = _coord_data(1)
    with pytest.raises(ValueError, match="empty"):
        make_train_dataset(images, labels, [np.zeros((H, W))], patch_size=P)
    with pytest.raises(ValueError, match="smaller than patch_size"):
        make_train_dataset(images, labels, fovs, patch_size=128)
    with pytest.raises(ValueError, match="vessel_bias"):
        make_train_dataset(images, labels, fovs, vessel_bias=1.5)
    with pytest.raises(ValueError):
        make_train_dataset(images, labels, [])


# ---------------------------------------------------------------------------
# Preprocessing


@pytest.fixture(scope="module")
def fundus():
    from unet_jax.data import make_synthetic_drive

    (ex,), _ = make_synthetic_drive(1, 0, size=(128, 112), seed=3)
    return ex.image


def _clahe(plane, clip=2.0, tile=8):
    return cv2.createCLAHE(clipLimit=clip, tileGridSize=(tile, tile)).apply(plane)


@pytest.mark.parametrize("channels", ["green", "gray", "rgb"])
@pytest.mark.parametrize("clahe", [True, False])
def test_preprocess_matches_reference(fundus, channels, clahe):
    planes = {
        "green": [fundus[..., 1]],
        "gray": [cv2.cvtColor(fundus, cv2.COLOR_RGB2GRAY)],
        "rgb": [np.ascontiguousarray(fundus[..., i]) for i in range(3)],
    }[channels]
    if clahe:
        planes = [_clahe(p) for p in planes]
    ref = np.stack(planes, -1).astype(np.float32) / 255.0

    out = preprocess_image(fundus, channels=channels, clahe=clahe)
    cfg = PreprocessConfig(channels=channels, clahe=clahe)
    assert out.dtype == np.float32
    assert out.shape == (*fundus.shape[:2], cfg.num_channels)
    assert 0.0 <= out.min() and out.max() <= 1.0
    np.testing.assert_allclose(out, ref, atol=1e-6)
    np.testing.assert_array_equal(cfg(fundus), out)


def test_preprocess_gamma_and_options(fundus):
    base = preprocess_image(fundus, clahe_clip=3.0, clahe_tile=4)
    ref = _clahe(np.ascontiguousarray(fundus[..., 1]), 3.0, 4).astype(np.float32) / 255.0
    np.testing.assert_allclose(base, ref[..., None], atol=1e-6)
    bright = preprocess_image(fundus, clahe_clip=3.0, clahe_tile=4, gamma=1.5)
    np.testing.assert_allclose(bright, base ** (1 / 1.5), rtol=1e-5, atol=1e-6)
    assert bright.mean() > base.mean()
    with pytest.raises(ValueError):
        preprocess_image(fundus, channels="bgr")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        preprocess_image(fundus.astype(np.float32))


def test_synthetic_end_to_end():
    from unet_jax.data import make_synthetic_drive

    train, _ = make_synthetic_drive(2, 0, seed=0)
    pre = PreprocessConfig()
    it = make_train_iterator(
        [pre(e.image) for e in train],
        [e.label for e in train],
        [e.fov for e in train],
        batch_size=4,
        vessel_bias=0.5,
    )
    b = next(iter(it))
    assert b["image"].shape == (4, 64, 64, pre.num_channels)
    assert b["mask"].any() and 0.0 <= b["image"].min() and b["image"].max() <= 1.0


@pytest.mark.slow
def test_worker_processes_match_in_process():
    # Worker processes (grain mp_prefetch) must yield exactly the in-process
    # stream: each element depends only on (seed, index).
    images, labels, fovs = _coord_data()
    kw = dict(patch_size=P, batch_size=8, seed=3, num_epochs=1, patches_per_epoch=32)
    want = list(make_train_iterator(images, labels, fovs, worker_count=0, **kw))
    got = list(make_train_iterator(images, labels, fovs, worker_count=1, **kw))
    assert len(got) == len(want) == 4
    for x, y in zip(got, want):
        for key in x:
            np.testing.assert_array_equal(x[key], y[key])
