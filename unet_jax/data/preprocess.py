"""Whole-image preprocessing for fundus photographs.

The retinal-vessel literature (e.g. Ronneberger-style U-Nets on DRIVE,
Zana & Klein, the "retina-unet" recipe) converges on:

1. keep the **green** channel (or grayscale): vessels have the highest
   contrast against the background there, red is nearly saturated and blue
   is noisy;
2. **CLAHE** (contrast-limited adaptive histogram equalisation) to even out
   the strong illumination falloff (vignetting) across the fundus;
3. optional **gamma** correction to lift dark regions.

This runs once per whole image, before patch sampling: CLAHE is a
neighbourhood operation, so applying it per patch would make a pixel's value
depend on which patch it was cropped into.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import cv2
import numpy as np

__all__ = ["Channels", "PreprocessConfig", "preprocess_image"]

Channels = Literal["green", "gray", "rgb"]


def preprocess_image(
    image_rgb: np.ndarray,
    *,
    channels: Channels = "green",
    clahe: bool = True,
    clahe_clip: float = 2.0,
    clahe_tile: int = 8,
    gamma: float = 1.0,
) -> np.ndarray:
    """Preprocesses one fundus image.

    Args:
      image_rgb: uint8 (H, W, 3) in RGB order.
      channels: ``"green"`` (1 channel, the default), ``"gray"`` (1 channel,
        ITU-R BT.601 luma as computed by ``cv2.COLOR_RGB2GRAY``) or ``"rgb"``
        (3 channels).
      clahe: apply CLAHE (``cv2.createCLAHE``). For ``"rgb"`` it is applied to
        each channel independently.
      clahe_clip: CLAHE clip limit.
      clahe_tile: CLAHE tile grid size (``clahe_tile x clahe_tile`` tiles).
      gamma: gamma correction ``out = x ** (1 / gamma)`` on x in [0, 1];
        ``gamma > 1`` brightens dark regions, 1.0 disables it.

    Returns:
      float32 (H, W, C) in [0, 1], C = 1 for green/gray and 3 for rgb.
    """
    if image_rgb.dtype != np.uint8 or image_rgb.ndim != 3 or image_rgb.shape[-1] != 3:
        raise ValueError(
            f"expected uint8 (H, W, 3) RGB image, got {image_rgb.dtype} {image_rgb.shape}"
        )
    if gamma <= 0:
        raise ValueError(f"gamma must be > 0, got {gamma}")
    if channels == "green":
        planes = [image_rgb[..., 1]]
    elif channels == "gray":
        planes = [cv2.cvtColor(image_rgb, cv2.COLOR_RGB2GRAY)]
    elif channels == "rgb":
        planes = [image_rgb[..., c] for c in range(3)]
    else:
        raise ValueError(f"channels must be 'green', 'gray' or 'rgb', got {channels!r}")

    if clahe:
        op = cv2.createCLAHE(clipLimit=float(clahe_clip), tileGridSize=(clahe_tile, clahe_tile))
        planes = [op.apply(np.ascontiguousarray(p)) for p in planes]

    out = np.stack(planes, axis=-1).astype(np.float32) * np.float32(1.0 / 255.0)
    if gamma != 1.0:
        out = np.power(out, np.float32(1.0 / gamma), dtype=np.float32)
    return out


@dataclasses.dataclass(frozen=True)
class PreprocessConfig:
    """Options of :func:`preprocess_image`, as one hashable value (for configs)."""

    channels: Channels = "green"
    clahe: bool = True
    clahe_clip: float = 2.0
    clahe_tile: int = 8
    gamma: float = 1.0

    @property
    def num_channels(self) -> int:
        """Channels of the preprocessed image (the model's input channels)."""
        return 3 if self.channels == "rgb" else 1

    def __call__(self, image_rgb: np.ndarray) -> np.ndarray:
        """Applies :func:`preprocess_image` with these options."""
        return preprocess_image(image_rgb, **dataclasses.asdict(self))
