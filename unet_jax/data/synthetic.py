"""Synthetic fundus-like images, so the pipeline can be tried without DRIVE.

The images imitate DRIVE's look and statistics closely enough to exercise
every stage (preprocessing, patch sampling, training, evaluation), not to
pre-train a model: a reddish-orange background with vignetting and a brighter
optic disc, a circular field of view (black outside), branching vessel trees
that start thick at the disc and thin out as they branch, vessels darker than
the background (most in the green channel, as in real fundus photographs),
some low-frequency texture and pixel noise. About 10% of the FOV is vessel,
as in DRIVE.

:class:`SyntheticDrive` (registered as ``"synthetic"``) is such a DRIVE-like
dataset for the training engine; each image is generated when it is read.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from unet_jax.config import PreprocessConfig
from unet_jax.data.base import Dataset, Example, Source, register

__all__ = ["SyntheticDrive", "make_synthetic_drive", "make_synthetic_example"]

_SHIFT = 4  # cv2 sub-pixel bits: coordinates are passed as ints * 2**_SHIFT
_SCALE = 1 << _SHIFT


def _grow_trees(
    rng: np.random.Generator,
    disc: tuple[float, float],
    disc_r: float,
    centre: tuple[float, float],
    fov_r: float,
) -> list[tuple[float, float, float, float, float]]:
    """Random-walk vessel trees rooted at the optic disc.

    Returns segments (x0, y0, x1, y1, width). Iterative (a stack of growing
    tips) rather than recursive, and capped, so the cost per image is bounded.
    """
    segments: list[tuple[float, float, float, float, float]] = []
    n_trunks = int(rng.integers(4, 7))
    base = rng.uniform(0, 2 * math.pi)
    # Tip state: x, y, heading, width, steps taken, curvature (rad/step).
    tips = []
    for t in range(n_trunks):
        a = base + 2 * math.pi * t / n_trunks + rng.normal(0, 0.25)
        x = disc[0] + 0.2 * disc_r * math.cos(a)
        y = disc[1] + 0.2 * disc_r * math.sin(a)
        tips.append((x, y, a, rng.uniform(5.5, 8.0), 0, rng.normal(0, 0.01)))
    step = 6.0
    max_segments = 4000
    while tips and len(segments) < max_segments:
        x, y, a, w, n, curv = tips.pop()
        while w >= 0.9 and n < 400 and len(segments) < max_segments:
            a += curv + rng.normal(0, 0.13)
            nx, ny = x + step * math.cos(a), y + step * math.sin(a)
            if math.hypot(nx - centre[0], ny - centre[1]) > fov_r + 8:
                break
            segments.append((x, y, nx, ny, w))
            x, y, n = nx, ny, n + 1
            w *= 0.99  # slow tapering along a vessel
            if w > 1.3 and rng.random() < 0.07:
                # Bifurcation: the child is thinner, the parent loses some width.
                side = 1.0 if rng.random() < 0.5 else -1.0
                child_w = w * rng.uniform(0.55, 0.8)
                tips.append(
                    (x, y, a + side * rng.uniform(0.5, 1.1), child_w, n, rng.normal(0, 0.015))
                )
                w *= rng.uniform(0.8, 0.93)
                a -= side * rng.uniform(0.0, 0.3)
    return segments


def make_synthetic_example(
    example_id: str, rng: np.random.Generator, size: tuple[int, int] = (584, 565)
) -> Example:
    """One synthetic fundus image with its vessel label and FOV mask."""
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    cy, cx = (h - 1) / 2.0, (w - 1) / 2.0
    fov_r = 0.48 * min(h, w)
    rr = np.sqrt((yy - cy) ** 2 + (xx - cx) ** 2) / fov_r
    fov = (rr <= 1.0).astype(np.uint8)

    # Background: reddish-orange, darker towards the rim (vignetting), with a
    # low-frequency choroidal texture.
    color = np.array(
        [rng.uniform(205, 250), rng.uniform(105, 135), rng.uniform(55, 85)], np.float32
    )
    vignette = 1.0 - 0.35 * rr**2
    coarse = rng.normal(0.0, 1.0, (12, 12)).astype(np.float32)
    texture = 1.0 + 0.05 * cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC)
    img = color * (vignette * texture)[..., None]

    # Optic disc: a bright yellowish blob on the left or right, off-centre.
    side = 1.0 if rng.random() < 0.5 else -1.0
    disc = (cx + side * rng.uniform(0.5, 0.62) * fov_r, cy + rng.normal(0, 0.06) * fov_r)
    disc_r = rng.uniform(0.11, 0.14) * fov_r
    blob = np.exp(-(((xx - disc[0]) ** 2 + (yy - disc[1]) ** 2) / (2 * (0.8 * disc_r) ** 2)))
    img += blob[..., None] * np.array([50.0, 110.0, 70.0], np.float32)

    # Vessels: one canvas for the label, one for how dark each vessel is
    # (thick vessels have more contrast than capillaries).
    label_canvas = np.zeros((h, w), np.uint8)
    dark_canvas = np.zeros((h, w), np.uint8)
    for x0, y0, x1, y1, vw in _grow_trees(rng, disc, disc_r, (cx, cy), fov_r):
        p0 = (int(x0 * _SCALE), int(y0 * _SCALE))
        p1 = (int(x1 * _SCALE), int(y1 * _SCALE))
        thick = max(1, int(round(vw)))
        cv2.line(label_canvas, p0, p1, 255, thick, cv2.LINE_AA, _SHIFT)
        cv2.line(dark_canvas, p0, p1, int(min(255, 110 + 20 * vw)), thick, cv2.LINE_AA, _SHIFT)
    dark = cv2.GaussianBlur(dark_canvas, (3, 3), 0).astype(np.float32) / 255.0
    # Green loses most contrast, as blood absorbs green strongly.
    img *= 1.0 - dark[..., None] * np.array([0.10, 0.40, 0.25], np.float32)

    img += rng.normal(0.0, 3.0, img.shape).astype(np.float32)
    img *= fov[..., None]
    image = np.clip(img, 0, 255).astype(np.uint8)
    label = ((label_canvas > 127) & (fov > 0)).astype(np.uint8)
    return Example(id=example_id, image=image, label=label, valid=fov)


def make_synthetic_drive(
    num_train: int = 20,
    num_test: int = 20,
    *,
    size: tuple[int, int] = (584, 565),
    seed: int = 0,
) -> tuple[list[Example], list[Example]]:
    """A DRIVE-like (train, test) pair of synthetic example lists.

    Args:
      num_train: training examples, ids ``syn_train_00``, ``syn_train_01``, ...
      num_test: test examples, ids ``syn_test_00``, ...
      size: (H, W) of every image; DRIVE's is (584, 565).
      seed: everything is a deterministic function of the seed (each image
        has its own generator, so image i does not depend on how many others
        are generated).

    Returns:
      ``(train, test)`` lists of :class:`~unet_jax.data.base.Example` (RGB uint8
      images, {0,1} labels that are zero outside the FOV, {0,1} circular FOV masks
      as ``valid``).
    """
    return (list(_SyntheticSource("train", num_train, size, seed)),
            list(_SyntheticSource("test", num_test, size, seed)))


class _SyntheticSource:
    """Example i of a split, generated on access from its own generator."""

    def __init__(self, split: str, count: int, size: tuple[int, int], seed: int):
        self.split, self.count, self.size, self.seed = split, count, tuple(size), seed

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, i: int) -> Example:
        if not 0 <= i < self.count:
            raise IndexError(i)
        rng = np.random.default_rng([self.seed, 0 if self.split == "train" else 1, i])
        return make_synthetic_example(f"syn_{self.split}_{i:02d}", rng, self.size)


@register("synthetic")
class SyntheticDrive(Dataset):
    """Synthetic fundus-like images with a DRIVE-like split (see :func:`make_synthetic_drive`)."""

    name = "synthetic"
    valid_region = "FOV"
    synthetic = True

    def __init__(
        self,
        num_train: int = 20,
        num_test: int = 20,
        size: tuple[int, int] = (584, 565),
        seed: int = 0,
        preprocess: PreprocessConfig = PreprocessConfig(),
    ):
        super().__init__(preprocess)
        self.num_train, self.num_test, self.size, self.seed = num_train, num_test, tuple(size), seed

    @property
    def num_classes(self) -> int:
        return 2

    def train(self) -> Source:
        return _SyntheticSource("train", self.num_train, self.size, self.seed)

    def test(self) -> Source:
        return _SyntheticSource("test", self.num_test, self.size, self.seed)
