"""Whole-image preprocessing: channel choice, CLAHE, gamma, normalisation, resizing.

The retinal-vessel literature (Ronneberger-style U-Nets on DRIVE, Zana & Klein, the
"retina-unet" recipe) converges on:

1. keep the **green** channel (or grayscale): vessels have the highest contrast against
   the background there, red is nearly saturated and blue is noisy;
2. **CLAHE** (contrast-limited adaptive histogram equalisation) to even out the strong
   illumination falloff (vignetting) across the fundus;
3. optional **gamma** correction to lift dark regions.

Other images (a folder of the user's own, 8- or 16-bit, gray or RGB) usually want
``channels`` matching their content, no CLAHE, and ``normalize="zscore"``.

This runs once per whole image, before patch sampling: CLAHE is a neighbourhood
operation, so applying it per patch would make a pixel's value depend on which patch it
was cropped into.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import cv2
import numpy as np

from unet_jax.config import PreprocessConfig
from unet_jax.data.base import Example

__all__ = ["LABEL_INTERPOLATION", "PreprocessConfig", "preprocess_example", "preprocess_image", "resize_label",
           "resize_probs"]


def _planes(image: np.ndarray, channels: str) -> list[np.ndarray]:
    """The image's planes for `channels`; gray and colour inputs are converted as needed."""
    if image.ndim == 3 and image.shape[-1] == 1:
        image = image[..., 0]
    if image.ndim == 2:
        return [image] * (3 if channels == "rgb" else 1)
    if image.ndim != 3 or image.shape[-1] not in (3, 4):
        raise ValueError(f"expected an (H, W), (H, W, 1), (H, W, 3) or (H, W, 4) image, got shape {image.shape}")
    rgb = np.ascontiguousarray(image[..., :3])  # RGBA: the alpha channel is not image content
    if channels == "green":
        return [rgb[..., 1]]
    if channels == "gray":
        return [cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)]
    if channels == "rgb":
        return [np.ascontiguousarray(rgb[..., c]) for c in range(3)]
    raise ValueError(f"channels must be 'green', 'gray' or 'rgb', got {channels!r}")


def preprocess_image(
    image: np.ndarray,
    *,
    channels: str = "green",
    clahe: bool = True,
    clahe_clip: float = 2.0,
    clahe_tile: int = 8,
    gamma: float = 1.0,
    normalize: str = "unit",
    image_size: int | None = None,
) -> np.ndarray:
    """Preprocesses one image as stored on disk into the model's float32 input.

    Args:
      image: uint8 or uint16, (H, W) gray, (H, W, 3) **RGB** or (H, W, 4) RGBA.
      channels: ``"green"`` (1 channel), ``"gray"`` (1 channel, ITU-R BT.601 luma as
        ``cv2.COLOR_RGB2GRAY``) or ``"rgb"`` (3 channels; a gray image is repeated).
      clahe: apply CLAHE (``cv2.createCLAHE``) to each channel.
      clahe_clip, clahe_tile: CLAHE clip limit and tile grid (``tile x tile``).
      gamma: ``out = x ** (1 / gamma)`` on the [0, 1] image; > 1 brightens dark regions.
        Only with ``normalize="unit"``.
      normalize: ``"unit"``: divide by the dtype's maximum (255 or 65535), giving
        [0, 1]; ``"zscore"``: per channel ``(x - mean) / std`` over the image.
      image_size: resize to ``image_size x image_size`` (area interpolation when
        shrinking, linear when enlarging); None keeps the size.

    Returns:
      float32 (H', W', C), C = 1 for green/gray and 3 for rgb.
    """
    if image.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"expected a uint8 or uint16 image, got {image.dtype}; convert it or save it as PNG/TIFF")
    if gamma <= 0:
        raise ValueError(f"gamma must be > 0, got {gamma}")
    if gamma != 1.0 and normalize != "unit":
        raise ValueError("gamma applies to [0, 1] images: use it with normalize='unit'")
    planes = _planes(image, channels)
    if clahe:
        op = cv2.createCLAHE(clipLimit=float(clahe_clip), tileGridSize=(clahe_tile, clahe_tile))
        planes = [op.apply(np.ascontiguousarray(p)) for p in planes]
    out = np.stack(planes, axis=-1).astype(np.float32)
    if normalize == "unit":
        out *= np.float32(1.0 / np.iinfo(image.dtype).max)
        if gamma != 1.0:
            out = np.power(out, np.float32(1.0 / gamma), dtype=np.float32)
    elif normalize == "zscore":
        mean = out.mean(axis=(0, 1), dtype=np.float64)
        std = out.std(axis=(0, 1), dtype=np.float64)
        out = ((out - mean) / np.where(std > 0, std, 1.0)).astype(np.float32)
    else:
        raise ValueError(f"normalize must be 'unit' or 'zscore', got {normalize!r}")
    if image_size is not None and out.shape[:2] != (image_size, image_size):
        shrink = image_size < out.shape[0] or image_size < out.shape[1]
        resized = cv2.resize(out, (image_size, image_size), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
        out = resized.reshape(image_size, image_size, -1)
    return out


# Nearest neighbour for labels with pixel centres aligned as in the images' linear, cubic and
# area resizes: cv2.INTER_NEAREST maps output pixel i to input pixel floor(i * scale), which
# moves a label by half an output pixel against its image (0.78 input pixels when 200
# pixels shrink to 128).
LABEL_INTERPOLATION = cv2.INTER_NEAREST_EXACT


def resize_label(a: np.ndarray | None, size: int | None) -> np.ndarray | None:
    """A label or valid mask (H, W) resized to `size` x `size` with :data:`LABEL_INTERPOLATION`
    (class ids stay class ids); None, or already that size: returned as it is."""
    if a is None or size is None or a.shape[:2] == (size, size):
        return a
    return cv2.resize(a, (size, size), interpolation=LABEL_INTERPOLATION)


def preprocess_example(example: Example, cfg: PreprocessConfig) -> Example:
    """`example` as the model sees it: the preprocessed image, and label and valid mask
    resized with it (nearest neighbour, so class ids stay class ids)."""
    options: dict[str, Any] = dataclasses.asdict(cfg)
    return example.replace(
        image=preprocess_image(example.image, **options),
        label=resize_label(example.label, cfg.image_size),
        valid=resize_label(example.valid, cfg.image_size),
    )


def resize_probs(probs: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Probability maps (H, W) or (H, W, C) resized (linearly) to `shape` = (H', W')."""
    if probs.shape[:2] == tuple(shape):
        return probs
    out = cv2.resize(np.ascontiguousarray(probs, np.float32), (shape[1], shape[0]), interpolation=cv2.INTER_LINEAR)
    return out.reshape(*shape, *probs.shape[2:])
