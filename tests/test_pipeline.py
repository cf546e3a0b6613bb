"""Patch pipeline (grain) and whole-image preprocessing.

Most pipeline tests use "coordinate images": channel 0 holds each pixel's row
and channel 1 its column. With intensity augmentation off, every patch pixel
then tells exactly where in which image it came from, so centres, cropping,
clamping and the alignment of image/label/mask under flips and rotations are
checked exactly rather than statistically.
"""

from __future__ import annotations

import itertools
import json

import cv2
import numpy as np
import pytest

from unet_jax.config import ConfigError, DataConfig, RunConfig
from unet_jax.data import (
    AugmentConfig,
    Example,
    InMemorySource,
    MappedSource,
    PreprocessConfig,
    make_train_dataset,
    make_train_iterator,
    preprocess_example,
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


def _source(images, labels, fovs, in_memory=True):
    examples = [Example(str(k), im, lab, fov) for k, (im, lab, fov) in enumerate(zip(images, labels, fovs))]
    source = InMemorySource(examples)
    # The per-access path: the same examples through a source that is not held in memory.
    return source if in_memory else MappedSource(source, lambda e: e)


def _ds(images, labels, fovs, **kw):
    return make_train_dataset(_source(images, labels, fovs), **kw)


def _it(images, labels, fovs, **kw):
    return make_train_iterator(_source(images, labels, fovs), **kw)


def _first_batches(it, n=3):
    return list(itertools.islice(iter(it), n))


def _decode(batch):
    """Per patch pixel: (image index, row, col) of its source pixel."""
    img = batch["image"]
    return (img[..., 2].astype(int), img[..., 0].astype(int), img[..., 1].astype(int))


def test_batch_shapes_and_dtypes():
    images, labels, fovs = _coord_data()
    (b,) = _first_batches(_it(images, labels, fovs, patch_size=P, batch_size=8), 1)
    assert set(b) == {"image", "label", "mask"}
    assert b["image"].shape == (8, P, P, 3)
    assert b["label"].shape == b["mask"].shape == (8, P, P, 1)
    assert all(v.dtype == np.float32 for v in b.values())
    assert set(np.unique(b["label"])) <= {0.0, 1.0}


@pytest.mark.parametrize("vessel_bias", [0.0, 1.0])
def test_centres_in_fov_and_crops_aligned(vessel_bias):
    images, labels, fovs = _coord_data()
    ds = _ds(
        images, labels, fovs, patch_size=P, batch_size=64, augment=NO_AUG, foreground_bias=vessel_bias
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
    b = _ds(images, labels, fovs, patch_size=P, batch_size=64, augment=GEOM_ONLY)[0]
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
    plain = _ds(images, labels, fovs, patch_size=P, batch_size=32, augment=NO_AUG)[0]
    jit = _ds(images, labels, fovs, patch_size=P, batch_size=32, augment=aug)[0]
    # Same sampled locations (geometry does not use the intensity draws first).
    np.testing.assert_array_equal(plain["label"], jit["label"])
    np.testing.assert_array_equal(plain["mask"], jit["mask"])
    assert not np.allclose(plain["image"], jit["image"])
    assert jit["image"].min() >= 0.0 and jit["image"].max() <= 1.0


def _ramp_images(n_images: int, channels: int, seed: int):
    """Whole-image patches (no geometry): every channel an affine map a_c * x + b_c of one
    random field x whose range is exactly [0, 1] and which holds the value 0.5."""
    rng = np.random.default_rng(seed)
    images = []
    for _ in range(n_images):
        x = rng.uniform(0.0, 1.0, (P, P))
        x[0, :3] = 0.0, 0.5, 1.0
        a, b = rng.uniform(0.5, 3.0, channels), rng.uniform(-2.0, 2.0, channels)
        images.append((x[..., None] * a + b).astype(np.float32))
    labels = [np.zeros((P, P), np.uint8) for _ in range(n_images)]
    fovs = [np.ones((P, P), np.uint8) for _ in range(n_images)]
    return images, labels, fovs


def _per_channel_stats(x):
    x = x.astype(np.float64)
    return x.mean(axis=(1, 2)), x.std(axis=(1, 2))


@pytest.mark.parametrize("per_channel", [True, False])
def test_contrast_and_brightness_jitter_per_channel(per_channel):
    """Each channel becomes (x - mean) * f + mean + b, f in [1 - C, 1 + C] and b in [-B, B]
    (recovered in float64 from the patch's moments): with ``per_channel`` about the channel's
    mean, drawn per channel and the same in both channel groups; without, about the patch's
    mean, one draw for all channels."""
    c_max, b_max, n = 0.3, 0.4, 64
    images, labels, fovs = _ramp_images(4, 6, seed=3)
    aug = AugmentConfig(flips=False, rot90=False, contrast=c_max, brightness=b_max, per_channel=per_channel,
                        channel_group=3)
    ref = _ds(images, labels, fovs, patch_size=P, batch_size=n, augment=NO_AUG)[0]["image"]
    out = _ds(images, labels, fovs, patch_size=P, batch_size=n, augment=aug, clip=False)[0]["image"]
    (m0, s0), (m1, s1) = _per_channel_stats(ref), _per_channel_stats(out)
    centre = m0 if per_channel else np.broadcast_to(ref.astype(np.float64).mean(axis=(1, 2, 3))[:, None], m0.shape)
    f = s1 / s0
    b = m1 - centre - f * (m0 - centre)
    eps = 64 * np.finfo(np.float32).eps  # a handful of float32 operations on values of a few units
    assert np.all(np.abs(f - 1) <= c_max + eps) and np.all(np.abs(b) <= b_max + eps)
    rebuilt = (ref - centre[:, None, None]) * f[:, None, None] + centre[:, None, None] + b[:, None, None]
    np.testing.assert_allclose(out, rebuilt, atol=eps * (1 + np.abs(ref).max()))
    np.testing.assert_allclose(f[:, :3], f[:, 3:], atol=eps)  # groups share the draws
    spread = np.abs(f[:, 0] - f[:, 1])
    if per_channel:
        assert np.median(spread) > 0.05  # independent draws: |f0 - f1| has median ~0.18
    else:
        assert spread.max() <= eps and np.abs(b[:, 0] - b[:, 5]).max() <= eps


def test_gamma_jitter():
    """Each channel becomes the standardised ((x - lo) / span) ** g scaled back to the
    channel's mean and standard deviation, g in [exp(-G), exp(G)] per channel (the same in
    both groups); g is recovered from the pixels at 0, 0.5 and 1 and the whole patch checked
    against that formula in float64."""
    g_max, n = 0.5, 64
    images, labels, fovs = _ramp_images(4, 6, seed=4)
    aug = AugmentConfig(flips=False, rot90=False, contrast=0.0, brightness=0.0, gamma=g_max, per_channel=True,
                        channel_group=3)
    ref = _ds(images, labels, fovs, patch_size=P, batch_size=n, augment=NO_AUG)[0]["image"].astype(np.float64)
    out = _ds(images, labels, fovs, patch_size=P, batch_size=n, augment=aug, clip=False)[0]["image"]
    (m0, s0), (m1, s1) = _per_channel_stats(ref), _per_channel_stats(out)
    tol = 256 * np.finfo(np.float32).eps
    np.testing.assert_allclose(m1, m0, atol=tol * 4)
    np.testing.assert_allclose(s1, s0, rtol=tol)
    o = out.astype(np.float64)
    g = np.log((o[:, 0, 1] - o[:, 0, 0]) / (o[:, 0, 2] - o[:, 0, 0])) / np.log(0.5)
    assert np.all(np.abs(np.log(g)) <= g_max + 1e-3)
    lo, hi = ref.min(axis=(1, 2)), ref.max(axis=(1, 2))
    z = ((ref - lo[:, None, None]) / (hi - lo)[:, None, None]) ** g[:, None, None]
    zm, zs = _per_channel_stats(z)
    expected = (z - zm[:, None, None]) / zs[:, None, None] * s0[:, None, None] + m0[:, None, None]
    np.testing.assert_allclose(o, expected, atol=tol * (1 + np.abs(ref).max()))
    np.testing.assert_allclose(g[:, :3], g[:, 3:], rtol=1e-3)
    assert np.median(np.abs(np.log(g[:, 0] / g[:, 2]))) > 0.1  # per channel, not one draw


def test_intensity_jitter_arguments():
    with pytest.raises(ConfigError, match="gamma"):
        AugmentConfig(gamma=-0.1)
    images, labels, fovs = _ramp_images(1, 3, seed=0)
    with pytest.raises(ValueError, match="channel_group 2 does not divide"):
        _ds(images, labels, fovs, patch_size=P, augment=AugmentConfig(contrast=0.1, per_channel=True,
                                                                      channel_group=2))


def test_channel_substitution():
    """Each substituted channel is either itself or the source channel, drawn with the stated
    probability independently per channel (binomial bounds of 5 standard deviations), the same
    in every channel group; label and mask untouched."""
    n, p = 2048, 0.3
    rng = np.random.default_rng(0)
    base = rng.uniform(0.0, 1.0, (H, W, 1)).astype(np.float32)
    images = [base + np.arange(6, dtype=np.float32) * 10 for _ in range(2)]  # 2 groups of 3 channels
    _, labels, fovs = _coord_data(2)
    aug = AugmentConfig(flips=False, rot90=False, brightness=0.0, contrast=0.0, substitute=p,
                        substitute_channels=(0, 2), substitute_source=1, channel_group=3)
    plain = _ds(images, labels, fovs, patch_size=P, batch_size=n, augment=NO_AUG)[0]
    sub = _ds(images, labels, fovs, patch_size=P, batch_size=n, augment=aug)[0]
    np.testing.assert_array_equal(plain["label"], sub["label"])
    np.testing.assert_array_equal(plain["mask"], sub["mask"])
    x, ref = sub["image"], plain["image"]
    np.testing.assert_array_equal(x[..., [1, 4]], ref[..., [1, 4]])  # the source channels stay
    replaced = {}
    for c in (0, 2):
        same = np.all(x[..., c] == ref[..., c], axis=(1, 2))
        from_source = np.all(x[..., c] == ref[..., 1], axis=(1, 2))
        assert np.all(same ^ from_source)  # one or the other, never a mix
        np.testing.assert_array_equal(np.all(x[..., 3 + c] == ref[..., 4], axis=(1, 2)), from_source)  # group 2
        np.testing.assert_array_equal(np.all(x[..., 3 + c] == ref[..., 3 + c], axis=(1, 2)), same)
        replaced[c] = from_source
        assert abs(from_source.sum() - n * p) <= 5 * np.sqrt(n * p * (1 - p))
    both = np.sum(replaced[0] & replaced[2])
    assert abs(both - n * p * p) <= 5 * np.sqrt(n * p * p * (1 - p * p))


def test_channel_substitution_arguments():
    images, labels, fovs = _coord_data(1)
    with pytest.raises(ConfigError, match="substitute"):
        AugmentConfig(substitute=1.5, substitute_channels=(0,))
    with pytest.raises(ConfigError, match="substitute_channels"):
        AugmentConfig(substitute=0.5, substitute_channels=(0, 1), substitute_source=1)
    with pytest.raises(ConfigError, match="substitute_channels"):
        AugmentConfig(substitute=0.5)
    with pytest.raises(ConfigError, match="channel_group"):
        AugmentConfig(substitute=0.5, substitute_channels=(3,), channel_group=3)
    with pytest.raises(ValueError, match="images of 3 channels"):  # groups of 2 do not tile 3 channels
        _ds(images, labels, fovs, patch_size=P, augment=AugmentConfig(substitute=0.5, substitute_channels=(0,),
                                                                      substitute_source=1, channel_group=2))
    # A run's config.json holds the channels as a JSON list.
    aug = AugmentConfig(substitute=0.5, substitute_channels=[0, 2], substitute_source=1, channel_group=3)
    assert aug.substitute_channels == (0, 2)
    cfg = RunConfig(data=DataConfig(augment=aug))
    assert RunConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


def test_clamping_at_image_border():
    images, labels, _ = _coord_data(1)
    fovs = [np.ones((H, W), np.uint8)]  # centres anywhere, including corners
    b = _ds(images, labels, fovs, patch_size=P, batch_size=256, augment=NO_AUG)[0]
    _, r, c = _decode(b)
    assert r.min() == 0 or c.min() == 0  # some patches were clamped
    assert r.min() >= 0 and c.min() >= 0 and r.max() < H and c.max() < W


def test_deterministic_per_seed():
    images, labels, fovs = _coord_data()
    kw = dict(patch_size=P, batch_size=8)
    a = _first_batches(_it(images, labels, fovs, seed=1, **kw))
    b = _first_batches(_it(images, labels, fovs, seed=1, **kw))
    c = _first_batches(_it(images, labels, fovs, seed=2, **kw))
    for x, y in zip(a, b):
        for key in x:
            np.testing.assert_array_equal(x[key], y[key])
    assert not np.array_equal(a[0]["image"], c[0]["image"])
    # Batches differ from one another, and random access matches iteration.
    assert not np.array_equal(a[0]["image"], a[1]["image"])
    ds = _ds(images, labels, fovs, seed=1, **kw)
    np.testing.assert_array_equal(ds[2]["image"], a[2]["image"])


def test_epochs_and_epoch_size():
    images, labels, fovs = _coord_data()
    ds = _ds(
        images, labels, fovs, patch_size=P, batch_size=10, num_epochs=2, patches_per_epoch=25
    )
    assert len(ds) == 5  # 50 patches, partial batch dropped
    batches = list(
        _it(
            images, labels, fovs, patch_size=P, batch_size=10, num_epochs=2, patches_per_epoch=25
        )
    )
    assert len(batches) == 5
    # Default epoch: patches tiling the images' area once.
    ds = _ds(images, labels, fovs, patch_size=P, batch_size=None, num_epochs=1)
    assert len(ds) == 3 * H * W // (P * P)
    assert ds[0]["image"].shape == (P, P, 3)


def test_bad_arguments():
    images, labels, fovs = _coord_data(1)
    with pytest.raises(ValueError, match="valid mask is empty"):
        _ds(images, labels, [np.zeros((H, W))], patch_size=P)
    with pytest.raises(ValueError, match="foreground_bias"):
        _ds(images, labels, fovs, foreground_bias=1.5)
    with pytest.raises(ValueError, match="empty"):
        make_train_dataset(InMemorySource([]))
    with pytest.raises(ValueError, match="example 0: the image is"):
        _ds(images, [np.zeros((H, W + 1))], fovs)


def test_per_access_source_matches_in_memory():
    # A large dataset is read from its source per patch instead of being held in memory;
    # the patch stream must not depend on which.
    images, labels, fovs = _coord_data()
    kw = dict(patch_size=P, batch_size=16, seed=5, foreground_bias=0.5)
    cached = make_train_dataset(_source(images, labels, fovs), **kw)
    lazy = make_train_dataset(_source(images, labels, fovs, in_memory=False), **kw)
    for i in range(3):
        for key in ("image", "label", "mask"):
            np.testing.assert_array_equal(cached[i][key], lazy[i][key])


def test_small_images_are_padded_with_invalid_pixels():
    # A 10x12 image with a 16x16 patch: the crop is the whole image, zero-padded at the
    # bottom and right, with mask 0 there; class ids (here 2) survive as they are.
    rows, cols = np.mgrid[1:11, 1:13].astype(np.float32)
    image = np.stack([rows, cols], axis=-1)
    label = np.full((10, 12), 2, np.uint8)
    for valid in (None, np.ones((10, 12), np.uint8)):
        ds = make_train_dataset(InMemorySource([Example("s", image, label, valid)]), patch_size=16,
                                batch_size=4, augment=NO_AUG)
        b = ds[0]
        assert b["image"].shape == (4, 16, 16, 2)
        np.testing.assert_array_equal(b["image"][:, :10, :12], np.broadcast_to(image, (4, 10, 12, 2)))
        assert not b["image"][:, 10:].any() and not b["image"][:, :, 12:].any()
        np.testing.assert_array_equal(b["mask"][:, :10, :12], 1)
        assert b["mask"][:, 10:].sum() == 0 and b["mask"][:, :, 12:].sum() == 0
        np.testing.assert_array_equal(b["label"][:, :10, :12], 2)


def test_soft_labels_keep_their_fractions_and_warp_linearly_like_the_image():
    """A float label is a soft binary label: moved as it is by flips and 90-degree rotations,
    and interpolated linearly like the image by zoom and rotation (class ids: nearest). The
    reference: a label linear in the column, c / (W - 1), so a warped patch's label is its
    warped column (image channel 1) over W - 1 at every pixel, the zero border included;
    nearest-neighbour labels miss that by up to half a pixel (0.004 here)."""
    images, _, fovs = _coord_data()
    soft = [np.broadcast_to(np.arange(W, dtype=np.float32) / (W - 1), (H, W)) for _ in images]
    b = _ds(images, soft, fovs, patch_size=P, batch_size=64, augment=GEOM_ONLY)[0]
    k, r, c = _decode(b)
    np.testing.assert_array_equal(b["label"][..., 0], soft[0][r, c])
    warped = AugmentConfig(flips=False, rot90=False, brightness=0.0, contrast=0.0, scale=0.2, rotate=30.0)
    b = _ds(images, soft, fovs, patch_size=P, batch_size=64, augment=warped)[0]
    assert not np.array_equal(b["label"], np.rint(b["label"] * (W - 1)) / (W - 1))  # between columns
    np.testing.assert_allclose(b["label"][..., 0], b["image"][..., 1] / (W - 1), rtol=0, atol=1e-5)
    for bad in (1.5, -0.1, np.nan):
        with pytest.raises(ValueError, match="example 0: a floating-point label .* must lie in"):
            _ds(images[:1], [np.full((H, W), bad, np.float32)], fovs[:1], patch_size=P)


def test_no_clip_for_standardised_images():
    rng = np.random.default_rng(1)
    images = [rng.normal(size=(H, W, 1)).astype(np.float32) * 3]
    _, labels, fovs = _coord_data(1)
    aug = AugmentConfig(flips=False, rot90=False, brightness=0.2, contrast=0.2)
    b = _ds(images, labels, fovs, patch_size=P, batch_size=16, augment=aug, clip=False)[0]
    assert b["image"].min() < -1 and b["image"].max() > 2


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
    np.testing.assert_array_equal(preprocess_example(Example("f", fundus, fundus[..., 0]), cfg).image, out)


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
    with pytest.raises(ValueError, match="normalize='unit'"):
        preprocess_image(fundus, gamma=2.0, normalize="zscore")


def test_preprocess_16_bit_gray_rgba_zscore_and_resize():
    rng = np.random.default_rng(0)
    gray16 = rng.integers(0, 65536, (30, 40), dtype=np.uint16)
    unit = preprocess_image(gray16, channels="gray", clahe=False)
    np.testing.assert_allclose(unit[..., 0], gray16 / 65535.0, rtol=1e-6)
    rgb = preprocess_image(gray16, channels="rgb", clahe=False)  # gray repeated
    assert rgb.shape == (30, 40, 3) and (rgb == unit).all()
    rgba = rng.integers(0, 256, (30, 40, 4), dtype=np.uint8)
    np.testing.assert_array_equal(preprocess_image(rgba, channels="rgb", clahe=False),
                                  preprocess_image(np.ascontiguousarray(rgba[..., :3]), channels="rgb", clahe=False))
    z = preprocess_image(rgba, channels="rgb", clahe=False, normalize="zscore").astype(np.float64)
    ref = rgba[..., :3].astype(np.float64)
    ref = (ref - ref.mean(axis=(0, 1))) / ref.std(axis=(0, 1))
    np.testing.assert_allclose(z, ref, atol=1e-5)
    # Resizing: image to the square size; label and valid mask by nearest neighbour.
    label = np.zeros((30, 40), np.uint8)
    label[:, 20:] = 2
    ex = preprocess_example(Example("g", gray16, label, np.ones((30, 40), np.uint8)),
                            PreprocessConfig(channels="gray", clahe=False, image_size=16))
    assert ex.image.shape == (16, 16, 1) and ex.label.shape == ex.valid.shape == (16, 16)
    assert set(np.unique(ex.label)) == {0, 2} and (ex.label[:, :8] == 0).all() and (ex.label[:, 8:] == 2).all()


def _centroid(weights: np.ndarray) -> np.ndarray:
    w = np.asarray(weights, np.float64)
    return np.array([(w * g).sum() / w.sum() for g in np.mgrid[:w.shape[0], :w.shape[1]]])


@pytest.mark.parametrize("shape", [(200, 200), (90, 120)])
def test_resized_labels_keep_pixel_centres_like_their_images(shape):
    """Nearest neighbour about pixel centres: output pixel i takes input pixel floor((i + 0.5)
    * scale), the one under its centre (numpy reference), so a resized disc stays where its
    resized image puts it. cv2.INTER_NEAREST took floor(i * scale): half an output pixel off."""
    h, w = shape
    yy, xx = np.mgrid[:h, :w]
    disc = ((yy - 0.47 * h) ** 2 + (xx - 0.53 * w) ** 2 < (0.3 * min(h, w)) ** 2).astype(np.uint8)
    size = 128  # 200 -> 128 shrinks, 90x120 -> 128 enlarges
    ex = preprocess_example(Example("d", disc * 255, disc * 2, disc),
                            PreprocessConfig(channels="gray", clahe=False, image_size=size))
    rows = np.minimum(((np.arange(size) + 0.5) * h / size).astype(int), h - 1)
    cols = np.minimum(((np.arange(size) + 0.5) * w / size).astype(int), w - 1)
    np.testing.assert_array_equal(ex.label, disc[np.ix_(rows, cols)] * 2)
    np.testing.assert_array_equal(ex.valid, disc[np.ix_(rows, cols)])
    # Half an output pixel was the old offset; sampling about centres leaves a few hundredths.
    assert np.abs(_centroid(ex.label) - _centroid(ex.image[..., 0])).max() < 0.25


def test_synthetic_end_to_end():
    from unet_jax.data import make_synthetic_drive

    train, _ = make_synthetic_drive(2, 0, seed=0)
    pre = PreprocessConfig()
    it = make_train_iterator(
        InMemorySource([preprocess_example(e, pre) for e in train]), batch_size=4, foreground_bias=0.5
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
    want = list(_it(images, labels, fovs, worker_count=0, **kw))
    got = list(_it(images, labels, fovs, worker_count=1, **kw))
    assert len(got) == len(want) == 4
    for x, y in zip(got, want):
        for key in x:
            np.testing.assert_array_equal(x[key], y[key])
