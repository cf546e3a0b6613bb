"""Pictures of a run: overlays of prediction on ground truth and training curves."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

import numpy as np


def overlay(pred: np.ndarray, label: np.ndarray, fov: np.ndarray | None = None) -> np.ndarray:
    """RGB uint8 image: prediction only in red, ground truth only in green, both in yellow.

    `pred` and `label` are binary (H, W); pixels outside `fov` are drawn dark grey so that
    the field of view stays visible.
    """
    pred = np.asarray(pred).astype(bool)
    label = np.asarray(label).astype(bool)
    out = np.zeros(pred.shape + (3,), np.uint8)
    out[pred & ~label] = (255, 0, 0)
    out[~pred & label] = (0, 255, 0)
    out[pred & label] = (255, 255, 0)
    if fov is not None:
        out[~np.asarray(fov).astype(bool)] = (40, 40, 40)
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
    ax2.set(xlabel="step", ylabel="Dice (F1) within FOV", title="validation Dice")
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


def save_predictions(
    outdir: Path, ids: list[str], probs: np.ndarray, labels: np.ndarray, fovs: np.ndarray, *, threshold: float = 0.5
) -> None:
    """Writes per image `<id>_prob.png` (probability x 255), `<id>_pred.png` (binary mask
    within the FOV) and `<id>_overlay.png` (prediction red, ground truth green, both yellow)."""
    from unet_jax.workdir import atomic_write_png

    outdir = Path(outdir)
    for case_id, p, y, f in zip(ids, probs, labels, fovs):
        pred = (p >= threshold) & (f > 0)
        atomic_write_png(outdir / f"{case_id}_prob.png", to_uint8(p * (f > 0)))
        atomic_write_png(outdir / f"{case_id}_pred.png", to_uint8(pred))
        atomic_write_png(outdir / f"{case_id}_overlay.png", overlay(pred, y, f))
