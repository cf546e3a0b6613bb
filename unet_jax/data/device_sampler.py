"""Device-resident training data: the whole training set on the accelerator, patches
sampled inside the jitted train step.

The host pipeline (:mod:`unet_jax.data.pipeline`) cuts and augments every patch in
Python and ships each batch to the device. When the preprocessed training set fits in
device memory, it can instead be uploaded once and sampled by the step itself: no
host work and no host-to-device copy per step, and several steps per dispatch
(``train.steps_per_call``).

Stored on the device (:class:`DeviceData`): every image padded to the largest one,
its label, its valid mask (0 on all padding) and per-row counts of valid and of
foreground pixels (an ``(N, H + 1)`` table, so picking "a uniform valid pixel" needs no
per-pixel index list). Images are kept as uint8 when that is lossless, i.e. when every
value is exactly ``k / 255`` (unit-normalised 8-bit images, the DRIVE recipe); a
256-entry table then gives back the very float32 values the host pipeline feeds, so both
paths train on identical pixels. Anything else (z-scored images, 16-bit sources, gamma)
stays float32: quantising it would change what the network sees.

Sampling one patch follows the host sampler's rules exactly (same distribution, not the
same random stream): an image uniformly; with probability ``foreground_bias`` a centre
uniform over its foreground pixels inside the valid region (any valid pixel when it has
none), else uniform over its valid pixels; the ``P x P`` window around the centre
clamped into the image (images smaller than the patch are zero-padded at the bottom and
right, with ``mask == 0`` there); flips and a 90-degree rotation on image, label and
mask together; contrast then brightness jitter on the image, clipped to [0, 1] for
unit-normalised images. The randomness is ``jax.random`` from a key carried in the train
state, so a run is deterministic per seed and a resumed run is bit-exact.
"""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from unet_jax.config import AugmentConfig
from unet_jax.data.base import Source
from unet_jax.data.pipeline import PreparedExample

__all__ = ["DeviceData", "DeviceSampler", "data_nbytes", "prepare_device_data", "resolve_on_device", "sampler_key"]

# uint8 code -> the float32 value of a unit-normalised 8-bit pixel (what x / 255 gives on the host).
_UNIT_LUT = (np.arange(256, dtype=np.float32) / np.float32(255)).astype(np.float32)


@flax.struct.dataclass
class DeviceData:
    """The training set as arrays (numpy on the host, jax.Array once placed).

    images: (N, H, W, C) uint8 codes (see `lut`) or float32, zero-padded to the largest image.
    labels: (N, H, W) uint8 class ids, or float32 soft binary labels. valid: (N, H, W) uint8 {0, 1}, 0 on all padding.
    sizes: (N, 2) int32 height and width of each image (after padding to the patch size).
    valid_rows, fg_rows: (N, H + 1) int32 counts of valid / foreground-and-valid pixels in
      the rows above each row (cumulative; the last entry is the total).
    has_fg: (N,) bool, whether an image has a foreground pixel inside its valid region.
    lut: (256,) float32 decoding table for uint8 images; (0,) for float32 images.
    """

    images: Any
    labels: Any
    valid: Any
    sizes: Any
    valid_rows: Any
    fg_rows: Any
    has_fg: Any
    lut: Any

    @property
    def nbytes(self) -> int:
        return int(sum(np.asarray(x).nbytes if not isinstance(x, jax.Array) else x.nbytes
                       for x in jax.tree.leaves(self)))


def _row_counts(m: np.ndarray) -> np.ndarray:
    return np.concatenate([[0], np.cumsum(m.sum(axis=1, dtype=np.int64))]).astype(np.int32)


def prepare_device_data(source: Source, patch_size: int, quantize: bool = True) -> DeviceData:
    """The host (numpy) arrays of `source`'s preprocessed examples, ready to upload.

    The same checks and padding as the host sampler (:class:`PreparedExample`).
    `quantize=False` keeps float32 images even when uint8 would be lossless.
    """
    if len(source) == 0:
        raise ValueError("the training source is empty: no example to sample patches from")
    preps = [PreparedExample(source[i], patch_size) for i in range(len(source))]
    channels = {p.image.shape[-1] for p in preps}
    if len(channels) > 1:
        raise ValueError(f"the training images have different channel counts: {sorted(channels)}")
    n, c = len(preps), channels.pop()
    h = max(p.image.shape[0] for p in preps)
    w = max(p.image.shape[1] for p in preps)
    images = np.zeros((n, h, w, c), np.float32)
    soft = any(p.label.dtype == np.float32 for p in preps)  # soft binary labels (PreparedExample)
    labels = np.zeros((n, h, w), np.float32 if soft else np.uint8)
    valid = np.zeros((n, h, w), np.uint8)
    sizes = np.zeros((n, 2), np.int32)
    for i, p in enumerate(preps):
        hi, wi = p.image.shape[:2]
        images[i, :hi, :wi] = p.image
        labels[i, :hi, :wi] = p.label
        valid[i, :hi, :wi] = 1 if p.valid is None else p.valid
        sizes[i] = hi, wi
    fg = (labels > 0) & (valid > 0)
    valid_rows = np.stack([_row_counts(v) for v in valid])
    fg_rows = np.stack([_row_counts(f) for f in fg])
    lut = np.zeros((0,), np.float32)
    if quantize:
        codes = np.clip(np.rint(images * 255), 0, 255).astype(np.uint8)
        if np.array_equal(_UNIT_LUT[codes].view(np.uint32), images.view(np.uint32)):  # bit for bit
            images, lut = codes, _UNIT_LUT
    return DeviceData(images=images, labels=labels, valid=valid, sizes=sizes, valid_rows=valid_rows,
                      fg_rows=fg_rows, has_fg=fg_rows[:, -1] > 0, lut=lut)


def data_nbytes(source: Source, patch_size: int) -> int:
    """Device bytes the training set would take, estimated from the first example
    (uint8 images when lossless are not assumed: the float32 size is the upper bound)."""
    p = PreparedExample(source[0], patch_size)
    h, w, c = p.image.shape
    return len(source) * (h * w * (4 * c + 2) + 8 * (h + 1))


def _device_memory(device: jax.Device) -> int:
    """Bytes the allocator may use on `device` (0 when it does not say)."""
    stats = device.memory_stats() if hasattr(device, "memory_stats") else None
    return int((stats or {}).get("bytes_limit", 0))


def resolve_on_device(setting: str, nbytes: int, share: float, device: jax.Device | None = None) -> bool:
    """Whether to train from device-resident data.

    "yes"/"no" decide. "auto" is yes on an accelerator when the training set takes at most
    `share` of its memory, and no on CPU: there the grain thread already runs about 110x
    ahead of the step (benchmarks/results/pipeline_cpu.json), so in-step sampling has
    little to win, and the host pipeline keeps the documented CPU results reproducible
    (the two paths draw different random streams).
    """
    if setting in ("yes", "no"):
        return setting == "yes"
    device = device or jax.devices()[0]
    if device.platform == "cpu":
        return False
    return nbytes <= share * _device_memory(device)


def sampler_key(seed: int) -> np.ndarray:
    """The raw uint32 key that starts a run's patch stream (``TrainState.data_rng``);
    derived from, but not equal to, the key that initialises the weights."""
    return np.asarray(jax.random.key_data(jax.random.fold_in(jax.random.key(seed), 1)))


class DeviceSampler:
    """Samples augmented patches from :class:`DeviceData` inside jitted code.

    The options are those of :class:`unet_jax.data.pipeline.PatchSampler`; all are
    static (part of the compiled program).
    """

    def __init__(self, *, patch_size: int = 64, foreground_bias: float = 0.0,
                 augment: AugmentConfig = AugmentConfig(), clip: bool = True):
        if not 0.0 <= foreground_bias <= 1.0:
            raise ValueError(f"foreground_bias must be in [0, 1], got {foreground_bias}")
        self.patch_size = int(patch_size)
        self.foreground_bias = float(foreground_bias)
        self.augment = augment
        self.clip = clip

    def centre(self, data: DeviceData, key: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        """(image index, row, column) of one patch centre."""
        k_img, k_fg, k_pix = jax.random.split(key, 3)
        k = jax.random.randint(k_img, (), 0, data.labels.shape[0])
        use_fg = jnp.asarray(False)
        if self.foreground_bias > 0.0:
            use_fg = (jax.random.uniform(k_fg) < self.foreground_bias) & data.has_fg[k]
        rows = jnp.where(use_fg, data.fg_rows[k], data.valid_rows[k])
        j = jax.random.randint(k_pix, (), 0, rows[-1])  # the j-th pixel of the pool, row-major
        r = jnp.searchsorted(rows, j, side="right") - 1
        in_row = data.valid[k, r] > 0
        in_row = jnp.where(use_fg, in_row & (data.labels[k, r] > 0), in_row)
        c = jnp.argmax(jnp.cumsum(in_row) > j - rows[r])
        return k, r, c

    def sample(self, data: DeviceData, key: jax.Array) -> dict[str, jax.Array]:
        """One patch: image (P, P, C) float32, label and mask (P, P, 1) float32."""
        p = self.patch_size
        k_centre, k_v, k_h, k_rot, k_con, k_bri = jax.random.split(key, 6)
        k, r, c = self.centre(data, k_centre)
        h, w = data.sizes[k, 0], data.sizes[k, 1]
        top = jnp.clip(r - p // 2, 0, h - p)
        left = jnp.clip(c - p // 2, 0, w - p)
        channels = data.images.shape[-1]
        image = lax.dynamic_slice(data.images, (k, top, left, 0), (1, p, p, channels))[0]
        image = data.lut[image] if data.images.dtype == jnp.uint8 else image
        label = lax.dynamic_slice(data.labels, (k, top, left), (1, p, p))[0]
        mask = lax.dynamic_slice(data.valid, (k, top, left), (1, p, p))[0]
        # One array so that every geometric transform moves image, label and mask together.
        x = jnp.concatenate([image, label[..., None].astype(jnp.float32), mask[..., None].astype(jnp.float32)], -1)
        aug = self.augment
        if aug.flips:
            x = jnp.where(jax.random.uniform(k_v) < 0.5, x[::-1], x)
            x = jnp.where(jax.random.uniform(k_h) < 0.5, x[:, ::-1], x)
        if aug.rot90:
            x = lax.switch(jax.random.randint(k_rot, (), 0, 4), [lambda a, n=n: jnp.rot90(a, n, axes=(0, 1))
                                                                  for n in range(4)], x)
        image, label, mask = x[..., :channels], x[..., channels:channels + 1], x[..., channels + 1:]
        if aug.contrast > 0.0:
            factor = jax.random.uniform(k_con, minval=1.0 - aug.contrast, maxval=1.0 + aug.contrast)
            mean = image.mean()
            image = (image - mean) * factor + mean
        if aug.brightness > 0.0:
            image = image + jax.random.uniform(k_bri, minval=-aug.brightness, maxval=aug.brightness)
        if self.clip and (aug.contrast > 0.0 or aug.brightness > 0.0):
            image = jnp.clip(image, 0.0, 1.0)
        return {"image": image, "label": label, "mask": mask}

    def sample_batch(self, data: DeviceData, keys: jax.Array) -> dict[str, jax.Array]:
        """One patch per key: a batch with a leading axis of ``len(keys)``."""
        return jax.vmap(self.sample, in_axes=(None, 0))(data, keys)
