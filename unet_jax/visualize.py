"""Pictures of a run: overlays of prediction on ground truth and training curves."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

import numpy as np


# Class colours for multi-class overlays (class 0, background, is black).
PALETTE = np.array([(0, 0, 0), (0, 160, 255), (255, 200, 0), (200, 0, 255), (0, 220, 120), (255, 120, 180),
                    (160, 120, 60), (120, 120, 255)], np.uint8)


def overlay(pred: np.ndarray, label: np.ndarray, valid: np.ndarray | None = None, *, binary: bool = True) -> np.ndarray:
    """RGB uint8 picture of a prediction against the ground truth, (H, W) class ids each.

    Binary: prediction only in red, ground truth only in green, both in yellow.
    Multi-class (``binary=False``): correct pixels in their class colour (:data:`PALETTE`,
    background black), wrong ones in red. Pixels outside `valid` (DRIVE's FOV) are dark
    grey so that the valid region stays visible.
    """
    pred = np.asarray(pred)
    label = np.asarray(label)
    out = np.zeros(pred.shape + (3,), np.uint8)
    if binary:
        p, y = pred.astype(bool), label.astype(bool)
        out[p & ~y] = (255, 0, 0)
        out[~p & y] = (0, 255, 0)
        out[p & y] = (255, 255, 0)
    else:
        correct = pred == label
        out[correct] = PALETTE[label[correct].astype(np.int64) % len(PALETTE)]
        out[~correct] = (255, 0, 0)
    if valid is not None:
        out[~np.asarray(valid).astype(bool)] = (40, 40, 40)
    return out


def to_uint8(x: np.ndarray) -> np.ndarray:
    """[0, 1] floats (or booleans) to uint8 0-255."""
    return np.clip(np.rint(np.asarray(x, np.float32) * 255.0), 0, 255).astype(np.uint8)


def plot_curves(records: Iterable[dict[str, Any]], path: Path, *, title: str = "") -> None:
    """Saves `curves.png`: training loss (left) and validation Dice (right) against step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = list(records)
    train = [(r["step"], r["loss"]) for r in records if r.get("split") == "train"]
    val = [(r["step"], r["dice"]) for r in records if r.get("split") == "val"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
    if train:
        ax1.plot(*zip(*train), lw=1)
    ax1.set(xlabel="step", ylabel="training loss", title="loss")
    ax1.grid(alpha=0.3)
    if val:
        ax2.plot(*zip(*val), marker="o")
    ax2.set(xlabel="step", ylabel="Dice (F1)", title="validation Dice")
    ax2.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    from unet_jax.workdir import atomic_write_bytes
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    atomic_write_bytes(Path(path), buf.getvalue())


def tint(image: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """RGB uint8 picture of a prediction without ground truth: the image in grey, predicted
    pixels blended half-and-half with their class colour (binary: red)."""
    from unet_jax.data.preprocess import preprocess_image

    gray = to_uint8(preprocess_image(image, channels="gray", clahe=False, normalize="unit")[..., 0])
    out = np.repeat(gray[..., None], 3, axis=-1).astype(np.float32)
    colours = np.asarray([(0, 0, 0), (255, 0, 0), *PALETTE[2:]], np.float32)
    pred = np.asarray(pred).astype(np.int64)
    fg = pred > 0
    out[fg] = 0.5 * out[fg] + 0.5 * colours[pred[fg] % len(colours)]
    return out.astype(np.uint8)


def save_prediction(
    outdir: Path, example_id: str, probs: np.ndarray, pred: np.ndarray, label: np.ndarray | None,
    valid: np.ndarray | None = None, *, image: np.ndarray | None = None,
) -> None:
    """Writes `<id>_prob.png` (foreground probability x 255), `<id>_pred.png` and
    `<id>_overlay.png` (against `label`, see :func:`overlay`; without a label, the
    prediction tinted on `image`, see :func:`tint`), with everything outside `valid` zeroed.

    `probs` is (H, W) for a binary task, (H, W, C) otherwise; `pred` holds class ids. The
    binary mask is saved as 0/255, a multi-class one as its class ids (0, 1, 2, ...).
    """
    from unet_jax.workdir import atomic_write_png

    outdir = Path(outdir)
    binary = probs.ndim == 2
    inside = np.ones(pred.shape, bool) if valid is None else np.asarray(valid) > 0
    foreground = probs if binary else 1.0 - probs[..., 0]
    pred = np.where(inside, pred, 0)
    atomic_write_png(outdir / f"{example_id}_prob.png", to_uint8(foreground * inside))
    atomic_write_png(outdir / f"{example_id}_pred.png", to_uint8(pred) if binary else pred.astype(np.uint8))
    if label is None and image is None:
        raise ValueError("save_prediction needs the label or the image for the overlay")
    picture = overlay(pred, label, valid, binary=binary) if label is not None else tint(image, pred)
    atomic_write_png(outdir / f"{example_id}_overlay.png", picture)
