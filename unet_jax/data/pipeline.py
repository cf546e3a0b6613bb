"""grain training pipeline: random, augmented patches from whole images.

Why patches, and why 64x64 by default
-------------------------------------
DRIVE has only 20 training images, and vessels are 1-10 px wide, so what a
U-Net has to learn is local. A 64x64 patch through a depth-4 U-Net (four
2x poolings) still leaves a 4x4 bottleneck whose receptive field covers the
whole patch, i.e. enough context to tell a thin vessel from noise, the FOV
rim or the optic-disc edge. Small patches give many varied samples per step
(each batch mixes locations from many images) and fast CPU steps; a
known-good recipe reaches F1 ~0.82 on DRIVE with 64x64 patches. Inference
runs on whole images (the network is fully convolutional).

Sampling of one patch
---------------------
1. choose an image uniformly (or with given per-image ``weights``) and read it from the source (held in memory for
   small datasets, decoded from disk per patch for large ones);
2. choose the patch *centre*: with probability ``foreground_bias`` a
   foreground pixel (vessel, lesion: any nonzero class) inside the valid
   region, otherwise any valid pixel (any pixel, without a valid mask).
   Centres therefore always lie in the valid region (DRIVE's FOV), but a patch
   may overlap its border (those pixels have ``mask == 0``, so a masked loss
   ignores them);
3. crop ``patch_size x patch_size`` around the centre (centre pixel at
   ``(P // 2, P // 2)``); where that window would leave the image it is
   shifted (clamped) to lie fully inside. An image smaller than the patch is
   zero-padded at the bottom and right, with ``mask == 0`` on the padding;
4. augment: optional zoom / rotation (``scale``, ``rotate``), flips / 90-degree
   rotations on image, label and mask together; channel substitution (a missing sequence
   filled in with another) and contrast / brightness / gamma jitter (per patch or per
   channel) on the image only.

Each element's randomness comes from grain's ``random_map``, which derives a
generator from ``(seed, element index)``: the stream is deterministic for a
seed, independent of worker count and read order, and resumable.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import cv2
import grain
import numpy as np
from absl import flags

from unet_jax.config import AugmentConfig
from unet_jax.data.base import Example, InMemorySource, Source

__all__ = [
    "AugmentConfig",
    "PatchSampler",
    "make_train_dataset",
    "make_train_iterator",
]

Batch = dict[str, np.ndarray]


class PreparedExample:
    """One example ready for sampling: (H, W, C) float32 image, label, valid mask, centre pools.

    An integer label holds class ids (uint8); a floating-point one is a soft binary label, the
    foreground's share of each pixel in [0, 1] (kept float32, warped with linear interpolation).
    """

    __slots__ = ("image", "label", "valid", "valid_idx", "fg_idx")

    def __init__(self, ex: Example, patch_size: int):
        img = np.asarray(ex.image, dtype=np.float32)
        if img.ndim == 2:
            img = img[..., None]
        lab = np.asarray(ex.label)
        valid = None if ex.valid is None else np.asarray(ex.valid)
        if img.ndim != 3:
            raise ValueError(f"example {ex.id}: the image must be (H, W, C), got shape {img.shape}")
        if lab.shape != img.shape[:2] or (valid is not None and valid.shape != img.shape[:2]):
            raise ValueError(
                f"example {ex.id}: the image is {img.shape[:2]} but the label is {lab.shape}"
                + ("" if valid is None else f" and the valid mask is {valid.shape}")
            )
        soft = np.issubdtype(lab.dtype, np.floating)
        if soft and not ((lab >= 0.0) & (lab <= 1.0)).all():  # NaN fails both
            raise ValueError(f"example {ex.id}: a floating-point label is a soft binary label (the foreground's "
                             "share of each pixel) and must lie in [0, 1]; give class ids as integers")
        h, w = img.shape[:2]
        ph, pw = max(patch_size - h, 0), max(patch_size - w, 0)
        if ph or pw:  # a small image: pad, and mark the padding as not valid
            valid = np.ones((h, w), np.uint8) if valid is None else valid
            img = np.pad(img, ((0, ph), (0, pw), (0, 0)))
            lab, valid = np.pad(lab, ((0, ph), (0, pw))), np.pad(valid, ((0, ph), (0, pw)))
        self.image = np.ascontiguousarray(img)
        self.label = np.ascontiguousarray(lab, dtype=np.float32 if soft else np.uint8)
        self.valid = None if valid is None else np.ascontiguousarray(valid > 0, dtype=np.uint8)
        # Flat indices of the pixels a centre may fall on (None: every pixel).
        self.valid_idx = None if self.valid is None else np.flatnonzero(self.valid).astype(np.int32)
        if self.valid_idx is not None and self.valid_idx.size == 0:
            raise ValueError(f"example {ex.id}: the valid mask is empty, no pixel to centre a patch on")
        fg = self.label > 0 if self.valid is None else (self.label > 0) & (self.valid > 0)
        fg_idx = np.flatnonzero(fg).astype(np.int32)
        # An image without foreground falls back to valid centres.
        self.fg_idx = fg_idx if fg_idx.size else self.valid_idx


class PatchSampler:
    """Samples one augmented patch; the callable behind :func:`make_train_dataset`.

    `source` yields preprocessed examples (float32 images). An :class:`InMemorySource`
    is checked and indexed once here (sampling a patch is then O(P^2)); any other source
    is read per patch, so memory does not grow with the dataset.

    Call as ``sampler(anything, rng) -> dict`` (grain's ``random_map`` signature; the
    first argument is ignored).
    """

    def __init__(
        self,
        source: Source,
        *,
        patch_size: int = 64,
        foreground_bias: float = 0.0,
        augment: AugmentConfig = AugmentConfig(),
        clip: bool = True,
        weights: Any = None,
    ):
        if len(source) == 0:
            raise ValueError("the training source is empty: no example to sample patches from")
        if not 0.0 <= foreground_bias <= 1.0:
            raise ValueError(f"foreground_bias must be in [0, 1], got {foreground_bias}")
        self._cdf = None
        if weights is not None:
            w = np.asarray(weights, np.float64)
            if w.shape != (len(source),) or not np.all(np.isfinite(w)) or np.any(w < 0) or w.sum() <= 0:
                raise ValueError(f"weights must be {len(source)} finite non-negative numbers with a positive sum, "
                                 f"got shape {w.shape}")
            self._cdf = np.cumsum(w / w.sum())
        self.source = source
        self.patch_size = int(patch_size)
        self.foreground_bias = float(foreground_bias)
        self.augment = augment
        self.clip = clip
        self._cached = None
        if isinstance(source, InMemorySource):
            self._cached = [PreparedExample(ex, self.patch_size) for ex in source.examples]
            channels = {p.image.shape[-1] for p in self._cached}
            if len(channels) > 1:
                raise ValueError(f"the training images have different channel counts: {sorted(channels)}")
        self.num_channels = int(self._prepared(0).image.shape[-1])
        group = augment.channel_group or self.num_channels
        if augment.substitute > 0 and (self.num_channels % group
                                       or max(augment.substitute_channels + (augment.substitute_source,)) >= group):
            raise ValueError(f"augment.substitute_channels {augment.substitute_channels} from channel "
                             f"{augment.substitute_source} (channel_group {augment.channel_group}) do not fit images "
                             f"of {self.num_channels} channels")
        if augment.per_channel and self.num_channels % group:
            raise ValueError(f"augment.channel_group {augment.channel_group} does not divide the images' "
                             f"{self.num_channels} channels (per-channel intensity jitter)")

    def _prepared(self, k: int) -> PreparedExample:
        return self._cached[k] if self._cached is not None else PreparedExample(self.source[k], self.patch_size)

    def __call__(self, _: Any, rng: np.random.Generator) -> Batch:
        p = self.patch_size
        if self._cdf is None:
            k = int(rng.integers(len(self.source)))
        else:  # inverse CDF: example k with probability weights[k] / sum(weights)
            k = min(int(np.searchsorted(self._cdf, rng.random(), side="right")), len(self.source) - 1)
        ex = self._prepared(k)
        h, w = ex.image.shape[:2]
        use_fg = self.foreground_bias > 0.0 and rng.random() < self.foreground_bias
        pool = ex.fg_idx if use_fg else ex.valid_idx
        if pool is None:  # no valid mask: any pixel
            index = int(rng.integers(h * w))
        else:
            index = int(pool[rng.integers(pool.size)])
        r, c = divmod(index, w)
        top = min(max(r - p // 2, 0), h - p)
        left = min(max(c - p // 2, 0), w - p)
        image = ex.image[top : top + p, left : left + p]
        label = ex.label[top : top + p, left : left + p]
        mask = np.ones((p, p), np.uint8) if ex.valid is None else ex.valid[top : top + p, left : left + p]

        aug = self.augment
        if aug.scale > 0.0 or aug.rotate > 0.0:
            image, label, mask = _zoom_rotate(image, label, mask, rng, aug.scale, aug.rotate)
        if aug.flips:
            if aug.vertical_flip and rng.random() < 0.5:
                image, label, mask = image[::-1], label[::-1], mask[::-1]
            if rng.random() < 0.5:
                image, label, mask = image[:, ::-1], label[:, ::-1], mask[:, ::-1]
        if aug.rot90:
            n = int(rng.integers(4))
            if n:
                image, label, mask = (np.rot90(a, n, axes=(0, 1)) for a in (image, label, mask))
        # Copies here: the crops above are views into the whole images.
        image = np.array(image, dtype=np.float32)
        if aug.substitute > 0.0:
            _substitute(image, rng, aug)
        if aug.contrast > 0.0 or aug.brightness > 0.0 or aug.gamma > 0.0:
            image = _jitter_intensity(image, rng, aug)
            if self.clip:
                np.clip(image, 0.0, 1.0, out=image)
        return {
            "image": image,
            "label": np.asarray(label, dtype=np.float32)[..., None],
            "mask": np.asarray(mask, dtype=np.float32)[..., None],
        }

    def default_epoch_size(self) -> int:
        """Patches that tile the training images' area about once (estimated from the
        first image when the images are not in memory)."""
        if self._cached is not None:
            area = sum(e.image.shape[0] * e.image.shape[1] for e in self._cached)
        else:
            first = self._prepared(0).image
            area = first.shape[0] * first.shape[1] * len(self.source)
        return max(1, area // (self.patch_size * self.patch_size))


def _substitute(image: np.ndarray, rng: np.random.Generator, aug: AugmentConfig) -> None:
    """In place: each of ``aug.substitute_channels`` replaced by ``aug.substitute_source``
    with probability ``aug.substitute``, the same choice in every channel group."""
    chosen = [c for c in aug.substitute_channels if rng.random() < aug.substitute]
    group = aug.channel_group or image.shape[-1]
    for start in range(0, image.shape[-1], group):
        for c in chosen:
            image[..., start + c] = image[..., start + aug.substitute_source]


def _jitter_intensity(image: np.ndarray, rng: np.random.Generator, aug: AugmentConfig) -> np.ndarray:
    """Contrast, brightness and gamma jitter of an (H, W, C) float32 patch: one draw for
    the whole patch, or with ``aug.per_channel`` one per channel (the same in every
    channel group)."""
    channels = image.shape[-1]
    group = aug.channel_group or channels
    if aug.per_channel:
        # Channels first: reductions over contiguous rows are ~20x faster than over axes
        # (0, 1) of an (H, W, C) array, which would make this the slowest part of a sample.
        x, axis = np.ascontiguousarray(image.reshape(-1, channels).T), 1
    else:
        x, axis = image, None

    def draw(low: float, high: float) -> Any:
        if not aug.per_channel:
            return np.float32(rng.uniform(low, high))
        return np.tile(rng.uniform(low, high, group), channels // group).astype(np.float32)[:, None]

    if aug.contrast > 0.0:
        factor = draw(1.0 - aug.contrast, 1.0 + aug.contrast)
        mean = x.mean(axis=axis, keepdims=True)
        x = (x - mean) * factor + mean
    if aug.brightness > 0.0:
        x = x + draw(-aug.brightness, aug.brightness)
    if aug.gamma > 0.0:
        x = _gamma(x, np.exp(draw(-aug.gamma, aug.gamma)), axis)
    return np.ascontiguousarray(x.T).reshape(image.shape) if aug.per_channel else x


def _gamma(x: np.ndarray, gamma: Any, axis: int | None) -> np.ndarray:
    """``x -> lo + span * ((x - lo) / span) ** gamma`` over the range of `x` along `axis`
    (all of it: None), then shifted and scaled back to the mean and standard deviation it
    had: the shape of the histogram changes, its location and spread do not (nnU-Net's
    gamma augmentation with ``retain_stats``)."""
    lo, hi = x.min(axis=axis, keepdims=True), x.max(axis=axis, keepdims=True)
    span = np.where(hi > lo, hi - lo, np.float32(1.0))
    mean, std = x.mean(axis=axis, keepdims=True), x.std(axis=axis, keepdims=True)
    out = lo + span * ((x - lo) / span) ** gamma
    # The new spread is 0 only for a constant channel (any other range maps onto [0, 1]),
    # whose spread was 0 too: scale 0 there instead of 0 / 0.
    scale = std / np.maximum(out.std(axis=axis, keepdims=True), np.finfo(np.float32).tiny)
    return ((out - out.mean(axis=axis, keepdims=True)) * scale + mean).astype(np.float32)


def _zoom_rotate(image: np.ndarray, label: np.ndarray, mask: np.ndarray, rng: np.random.Generator, scale: float,
                 rotate: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A random zoom in [1 - scale, 1 + scale] and rotation in [-rotate, rotate] degrees
    about the patch centre; what comes from outside the patch is 0 (mask 0: not counted).
    Class ids are warped nearest-neighbour, soft (float) labels linearly like the image."""
    factor = rng.uniform(1.0 - scale, 1.0 + scale) if scale > 0.0 else 1.0
    angle = rng.uniform(-rotate, rotate) if rotate > 0.0 else 0.0
    h, w = label.shape
    m = cv2.getRotationMatrix2D(((w - 1) / 2.0, (h - 1) / 2.0), angle, factor)

    def warp(a: np.ndarray, interpolation: int) -> np.ndarray:
        a = np.ascontiguousarray(a)
        if a.ndim == 3 and a.shape[-1] > 4:  # cv2 warps at most 4 channels at once
            return np.stack([warp(a[..., c], interpolation) for c in range(a.shape[-1])], axis=-1)
        out = cv2.warpAffine(a, m, (w, h), flags=interpolation, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
        return out.reshape(a.shape)

    label_interpolation = cv2.INTER_LINEAR if np.issubdtype(label.dtype, np.floating) else cv2.INTER_NEAREST
    return (warp(image.astype(np.float32), cv2.INTER_LINEAR), warp(label, label_interpolation),
            warp(mask, cv2.INTER_NEAREST))


def make_train_dataset(
    source: Source,
    *,
    patch_size: int = 64,
    batch_size: int | None = 32,
    seed: int = 0,
    foreground_bias: float = 0.0,
    augment: AugmentConfig = AugmentConfig(),
    clip: bool = True,
    num_epochs: int | None = None,
    patches_per_epoch: int | None = None,
    shard: tuple[int, int] = (0, 1),
    weights: Any = None,
) -> grain.MapDataset:
    """The random-patch training set as a ``grain.MapDataset``.

    Element ``i`` is a pure function of ``(seed, i)``, so the dataset can be sliced for
    sharding, read in any order or by several workers, and resumed at any step.

    Args:
      source: preprocessed examples (see :meth:`unet_jax.data.Dataset.preprocess`):
        float32 (H, W, C) images, (H, W) integer labels, optional (H, W) valid masks.
        Sizes may differ per image.
      patch_size: side P of the square patches (see the module docstring for why 64).
      batch_size: patches per batch (a partial last batch is dropped); None for
        unbatched elements.
      seed: randomness seed.
      foreground_bias: probability that a patch is centred on a foreground pixel
        rather than on any valid pixel (0 = plain sampling).
      augment: augmentation options.
      clip: clip intensity-jittered patches to [0, 1] (images normalised to [0, 1]).
      num_epochs: epochs to yield; None repeats forever. Epochs differ (the per-element
        randomness uses the global index).
      patches_per_epoch: patches per epoch; default is the number of P x P patches that
        tile the images' total area once (~1600 for DRIVE at 64).
      shard: ``(index, count)``: this reader's elements ``index::count`` (one shard per
        process of a multi-process run), taken before batching.
      weights: optional per-example sampling weights (``len(source)`` non-negative numbers,
        normalised here): example k is drawn with probability ``weights[k] / sum``. None
        (default) draws uniformly, exactly as without the option.

    Returns:
      A MapDataset of dicts ``image`` float32 (P, P, C), ``label`` float32 (P, P, 1)
      (class ids), ``mask`` float32 (P, P, 1) (the valid region, for masking the loss),
      with a leading batch axis when ``batch_size`` is set.
    """
    sampler = PatchSampler(
        source, patch_size=patch_size, foreground_bias=foreground_bias, augment=augment, clip=clip, weights=weights
    )
    n = patches_per_epoch if patches_per_epoch is not None else sampler.default_epoch_size()
    ds = grain.MapDataset.range(n).repeat(num_epochs).random_map(sampler, seed=seed)
    index, count = shard
    if count > 1:
        ds = ds[index::count]
    if batch_size is not None:
        ds = ds.batch(batch_size, drop_remainder=True)
    return ds


def make_train_iterator(
    source: Source,
    *,
    worker_count: int = 0,
    read_options: grain.ReadOptions | None = None,
    **kwargs: Any,
) -> Iterable[Batch]:
    """Batches of random augmented patches (see :func:`make_train_dataset`).

    Args:
      source, **kwargs: as for :func:`make_train_dataset`.
      worker_count: 0 reads in this process (grain's prefetch thread); N > 0 uses N
        worker processes (``mp_prefetch``), which pays off when decoding images from
        disk or when the consumer leaves CPU cores idle. The batches are identical
        either way. Workers are spawned, so a script using them needs the usual
        ``if __name__ == "__main__":`` guard; they start in a few seconds.
      read_options: grain in-process read options; the default is one prefetch thread,
        enough for in-memory images since a 64x64 patch costs ~0.1 ms.

    Returns:
      A ``grain.IterDataset``: iterate it for dicts of numpy arrays with a leading batch
      axis; its iterators support ``get_state``/``set_state`` for checkpointing.
    """
    ds = make_train_dataset(source, **kwargs)
    if read_options is None:
        # One background thread overlaps sampling with the (GIL-releasing)
        # training step; more threads only contend for the GIL.
        read_options = grain.ReadOptions(num_threads=1, prefetch_buffer_size=8)
    it = ds.to_iter_dataset(read_options)
    if worker_count > 0:
        # grain's multiprocessing reads absl flags; outside an absl app they are
        # unparsed and reading them raises. Use the defaults (a later FLAGS(argv) /
        # app.run still parses the command line normally).
        if not flags.FLAGS.is_parsed():
            flags.FLAGS.mark_as_parsed()
        it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=worker_count))
    return it
