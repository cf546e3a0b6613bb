"""Per-volume figures and pictures of a test set whose images are slices of volumes.

:class:`VolumeReporter` receives the test slices one at a time (in order: a volume's slices
contiguous, by slice number), rebuilds each volume's prediction and label, and computes

* per-volume Dice: every voxel of a volume pooled (per foreground class for multi-class
  labels), with and without largest-connected-component (LCC) post-processing, and its
  mean and median over volumes;
* per-slice Dice, with the convention stated: a slice whose label and prediction are both
  empty scores 1 (nothing to find, nothing found); the mean is reported over all slices
  and over the slices with abnormality only;

and writes ``per_volume.csv``, ``dsc.png`` (per-volume Dice as horizontal bars with the
mean and median as lines), ``overlays/<slice>.png`` (the slice in grey, the prediction's
outline in red and the ground truth's in green; slices where either is non-empty) and
``gifs/<volume>.gif`` (every slice of the volume with those outlines).

LCC is 3D when scipy is installed (``scipy.ndimage.label``, full 26-connectivity, on the
stacked slices); otherwise each slice's largest 2D component is kept
(``cv2.connectedComponentsWithStats``, 8-connectivity) and the results say so.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from unet_jax.data.base import Example
from unet_jax.data.preprocess import LABEL_INTERPOLATION

__all__ = ["CaseSlices", "VolumeReporter", "largest_component", "lcc_method", "per_volume_figures", "plot_dsc",
           "scored_volumes", "slice_dice", "volume_dice"]

SLICE_CONVENTION = "a slice whose label and prediction are both empty scores 1; one with only one of them empty scores 0"


def _has_scipy() -> bool:
    try:
        import scipy.ndimage  # noqa: F401
    except ImportError:
        return False
    return True


def lcc_method() -> str:
    return ("3D, scipy.ndimage.label, 26-connectivity" if _has_scipy() else
            "2D per slice, cv2.connectedComponentsWithStats, 8-connectivity (scipy is not installed)")


def largest_component(mask: np.ndarray, *, use_scipy: bool | None = None) -> np.ndarray:
    """The largest connected component of a binary (D, H, W) volume (or (H, W) image),
    26-connected in 3D (8 in 2D); all-False stays all-False. Ties: the lowest label.
    Without scipy (or ``use_scipy=False``) each slice keeps its own largest 8-connected
    component instead."""
    m = np.asarray(mask).astype(bool)
    if not m.any():
        return m
    if use_scipy is None:
        use_scipy = _has_scipy()
    if use_scipy:
        from scipy import ndimage

        labels, n = ndimage.label(m, structure=np.ones((3,) * m.ndim, bool))
        sizes = np.bincount(labels.ravel(), minlength=n + 1)
        sizes[0] = 0
        return labels == int(np.argmax(sizes))
    if m.ndim == 3:
        return np.stack([largest_component(s, use_scipy=False) for s in m])
    n, labels, stats, _ = cv2.connectedComponentsWithStats(m.astype(np.uint8), connectivity=8)
    if n <= 1:
        return m
    return labels == 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))


def _dice(pred: np.ndarray, label: np.ndarray) -> float:
    """Dice of two boolean arrays; both empty: 1."""
    tp = np.count_nonzero(pred & label)
    denom = np.count_nonzero(pred) + np.count_nonzero(label)
    return 1.0 if denom == 0 else 2.0 * tp / denom


def volume_dice(pred: np.ndarray, label: np.ndarray, num_classes: int = 2) -> np.ndarray:
    """Dice of each foreground class over the whole volume (every voxel pooled): shape
    (num_classes - 1,); a class absent from both scores 1."""
    pred, label = np.asarray(pred), np.asarray(label)
    return np.asarray([_dice(pred == k, label == k) for k in range(1, num_classes)], np.float64)


def slice_dice(pred: np.ndarray, label: np.ndarray, num_classes: int = 2) -> np.ndarray:
    """(slices, num_classes - 1) Dice of each slice of a (D, H, W) volume (convention:
    :data:`SLICE_CONVENTION`)."""
    return np.stack([volume_dice(p, y, num_classes) for p, y in zip(pred, label)])


def keep_largest(pred: np.ndarray, num_classes: int = 2) -> np.ndarray:
    """Class ids with each foreground class reduced to its largest connected component."""
    out = np.zeros_like(pred)
    for k in range(1, num_classes):
        out[largest_component(pred == k)] = k
    return out


def outline(mask: np.ndarray) -> np.ndarray:
    """The pixels of a binary mask that touch the background (4-neighbourhood)."""
    m = np.asarray(mask).astype(np.uint8)
    return (m > 0) & (cv2.erode(m, np.ones((3, 3), np.uint8), borderType=cv2.BORDER_CONSTANT, borderValue=0) == 0)


def outline_picture(gray: np.ndarray, pred: np.ndarray, label: np.ndarray) -> np.ndarray:
    """RGB uint8: `gray` with the prediction's outline in red and the label's in green
    (where both outlines fall, yellow). Multi-class: foreground vs background."""
    g = np.asarray(gray)
    out = np.repeat(g[..., None], 3, axis=-1).astype(np.uint8)
    p, y = outline(np.asarray(pred) > 0), outline(np.asarray(label) > 0)
    out[y] = (0, 255, 0)
    out[p] = (255, 0, 0)
    out[p & y] = (255, 255, 0)
    return out


def to_gray(image: np.ndarray) -> np.ndarray:
    """A uint8 display image of any 2D array (min-max scaled unless already uint8)."""
    a = np.asarray(image)
    if a.dtype == np.uint8:
        return a
    a = a.astype(np.float32)
    lo, hi = float(a.min()), float(a.max())
    return np.zeros(a.shape, np.uint8) if hi <= lo else ((a - lo) * (255.0 / (hi - lo))).astype(np.uint8)


def _shrink(gray: np.ndarray, pred: np.ndarray, label: np.ndarray, side: int
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    h, w = gray.shape[:2]
    if max(h, w) <= side:
        return gray, pred, label
    size = (max(1, round(w * side / max(h, w))), max(1, round(h * side / max(h, w))))
    return (cv2.resize(gray, size, interpolation=cv2.INTER_AREA),
            cv2.resize(pred, size, interpolation=LABEL_INTERPOLATION),
            cv2.resize(label, size, interpolation=LABEL_INTERPOLATION))


def write_gif(path: Path, frames: list[np.ndarray], *, max_side: int = 128, duration_ms: int = 120) -> None:
    """An animated GIF of RGB uint8 frames (downscaled to `max_side`), written atomically."""
    from PIL import Image

    from unet_jax.workdir import atomic_write_bytes

    pictures = []
    for f in frames:
        h, w = f.shape[:2]
        if max(h, w) > max_side:
            s = max_side / max(h, w)
            f = cv2.resize(f, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_NEAREST)
        pictures.append(Image.fromarray(f).quantize(colors=32, method=Image.Quantize.MEDIANCUT))
    buf = io.BytesIO()
    pictures[0].save(buf, format="GIF", save_all=True, append_images=pictures[1:], duration=duration_ms, loop=0,
                     optimize=True)
    atomic_write_bytes(Path(path), buf.getvalue())


def plot_dsc(names: list[str], dice: list[float], path: Path, *, title: str = "", dice_lcc: list[float] | None = None
             ) -> None:
    """``dsc.png``: per-volume Dice as horizontal bars (sorted), mean and median as lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from unet_jax.workdir import atomic_write_bytes

    d = np.asarray(dice, np.float64)
    order = np.argsort(np.nan_to_num(d, nan=-1.0))
    fig, ax = plt.subplots(figsize=(7, max(2.5, 0.28 * len(names) + 1.2)))
    ypos = np.arange(len(names))
    ax.barh(ypos, d[order], color="#4c72b0", label="Dice")
    if dice_lcc is not None:
        ax.scatter(np.asarray(dice_lcc, np.float64)[order], ypos, color="#dd8452", marker="|", s=120, zorder=3,
                   label="Dice after LCC")
    mean, median = float(np.nanmean(d)), float(np.nanmedian(d))
    ax.axvline(mean, color="red", lw=1.5, label=f"mean {mean:.3f}")
    ax.axvline(median, color="green", lw=1.5, ls="--", label=f"median {median:.3f}")
    ax.set_yticks(ypos, [names[i] for i in order], fontsize=7)
    ax.set_xlim(0, 1)
    ax.set_xlabel("Dice (per volume)")
    ax.legend(loc="lower right", fontsize=7)
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    atomic_write_bytes(Path(path), buf.getvalue())


def _stat(f: Any, values: Any) -> float:
    """`f` (np.mean, np.median) of `values` in float64; NaN when there are none."""
    return float(f(np.asarray(values, np.float64))) if len(values) else float("nan")


def scored_volumes(rows: list[dict[str, Any]], *, ignore_empty: bool = True) -> list[dict[str, Any]]:
    """The per_volume rows that count: with `ignore_empty`, those whose label is not empty."""
    return [r for r in rows if not (ignore_empty and r["label_voxels"] == 0)]


def per_volume_figures(rows: list[dict[str, Any]], *, ignore_empty: bool = True) -> dict[str, Any]:
    """Mean and median over volumes of per-volume Dice, with and without LCC, from the rows
    of a per_volume.csv (``dice``, ``dice_lcc``, ``label_voxels``; multi-class rows also
    ``dice_class<k>``, ``dice_lcc_class<k>``, ``label_voxels_class<k>``). With
    `ignore_empty`, volumes whose label is empty are left out, and per class the volumes
    whose label lacks that class."""
    def figures(name: str, lcc_name: str, kept: list[dict[str, Any]]) -> dict[str, float]:
        d, dl = [r[name] for r in kept], [r[lcc_name] for r in kept]
        return {f"{name}_per_volume_mean": _stat(np.mean, d), f"{name}_per_volume_median": _stat(np.median, d),
                f"{name}_per_volume_lcc_mean": _stat(np.mean, dl),
                f"{name}_per_volume_lcc_median": _stat(np.median, dl)}

    scored = scored_volumes(rows, ignore_empty=ignore_empty)
    out: dict[str, Any] = {"num_volumes_scored": len(scored), **figures("dice", "dice_lcc", scored)}
    classes = sorted({c.removeprefix("dice_class") for r in rows for c in r if c.startswith("dice_class")}, key=int)
    for k in classes:
        has = [r for r in rows if f"dice_class{k}" in r
               and not (ignore_empty and r.get(f"label_voxels_class{k}", 1) == 0)]
        out.update(figures(f"dice_class{k}", f"dice_lcc_class{k}", has))
    return out


class CaseSlices:
    """Gathers a stream of slices into volumes: items of one case are collected until the
    case changes, then ``on_volume(case, items)`` is called (and by :meth:`flush` for the
    last one). A case that comes back after another one started is an error, since its
    volume was already handed on."""

    def __init__(self, on_volume: Callable[[str, list[Any]], None]):
        self.on_volume = on_volume
        self._case: str | None = None
        self._items: list[Any] = []
        self._done: set[str] = set()

    def add(self, case: str, item: Any) -> None:
        if case != self._case:
            self.flush()
            if case in self._done:
                raise ValueError(f"the slices of {case} are not contiguous in the test source")
            self._case = case
        self._items.append(item)

    def flush(self) -> None:
        """Hands on the volume being collected, if any."""
        if self._case is None:
            return
        case, items = self._case, self._items
        self._case, self._items = None, []
        self._done.add(case)
        self.on_volume(case, items)


class VolumeReporter:
    """The per-volume report of a test set (see the module docstring).

    Args:
      workdir: where the files and pictures go (pictures as each volume closes).
      num_classes: classes including background.
      ignore_empty: volumes whose label is empty are left out of the per-volume mean and
        median (MONAI's convention), else they score 1 if nothing is predicted, else 0.
      display: an example -> (H, W) picture of it for the overlays (e.g. the FLAIR
        channel); default: the first channel, min-max scaled.
      overlays: write ``overlays/`` (slices with a label or a prediction).
      gifs: write one GIF per volume.
      gif_side: the GIFs' largest side in pixels.
      labelled: False for volumes without labels (prediction only): pictures show the
        prediction's outline alone, per_volume.csv holds slice and voxel counts, no Dice.
    """

    def __init__(self, workdir: str | Path, num_classes: int = 2, *, ignore_empty: bool = True,
                 display: Callable[[Example], np.ndarray] | None = None, overlays: bool = True, gifs: bool = True,
                 gif_side: int = 128, title: str = "", labelled: bool = True):
        self.workdir, self.ignore_empty, self.title = Path(workdir), ignore_empty, title
        self.labelled = labelled
        self.num_classes = num_classes
        self.display = display or (lambda ex: np.asarray(ex.image)[..., 0] if np.ndim(ex.image) == 3 else ex.image)
        self.write_overlays, self.write_gifs, self.gif_side = overlays, gifs, gif_side
        self.rows: list[dict[str, Any]] = []
        self.slice_rows: list[dict[str, Any]] = []
        self._slices = CaseSlices(self._close_volume)  # items: (id, pred, label, gray)

    def add(self, example: Example, probs: np.ndarray, pred: np.ndarray) -> None:
        gray = to_gray(self.display(example))
        self._slices.add(example.case_id, (example.id, np.asarray(pred, np.uint8),
                                           np.asarray(example.label, np.uint8), gray))

    def _close_volume(self, case: str, items: list[tuple[str, np.ndarray, np.ndarray, np.ndarray]]) -> None:
        ids = [i[0] for i in items]
        pred = np.stack([i[1] for i in items])
        label = np.stack([i[2] for i in items])
        gray = [i[3] for i in items]
        row: dict[str, Any] = {"case": case, "slices": len(ids)}
        if self.labelled:
            self._score(case, ids, pred, label, row)
        else:
            row["pred_voxels"] = int(np.count_nonzero(pred))
        self.rows.append(row)
        if self.write_overlays or self.write_gifs:
            self._pictures(case, ids, gray, pred, label)

    def _score(self, case: str, ids: list[str], pred: np.ndarray, label: np.ndarray, row: dict[str, Any]) -> None:
        """Fills `row` with the volume's Dice (with and without LCC); adds its slice rows."""
        post = keep_largest(pred, self.num_classes)
        d, d_lcc = volume_dice(pred, label, self.num_classes), volume_dice(post, label, self.num_classes)
        row.update({"dice": float(np.mean(d)), "dice_lcc": float(np.mean(d_lcc)),
                    "label_voxels": int(np.count_nonzero(label)), "pred_voxels": int(np.count_nonzero(pred))})
        if self.num_classes > 2:
            for k in range(1, self.num_classes):
                row[f"dice_class{k}"], row[f"dice_lcc_class{k}"] = float(d[k - 1]), float(d_lcc[k - 1])
                row[f"label_voxels_class{k}"] = int(np.count_nonzero(label == k))  # ignore_empty per class
        sd = slice_dice(pred, label, self.num_classes)
        for sid, p, y, s in zip(ids, pred, label, sd):
            self.slice_rows.append({"id": sid, "case": case, "dice": float(np.mean(s)),
                                    "label_empty": not np.any(y > 0), "pred_empty": not np.any(p > 0)})

    def _pictures(self, case: str, ids: list[str], gray: list[np.ndarray], pred: np.ndarray, label: np.ndarray) -> None:
        from unet_jax.workdir import atomic_write_png

        frames = [outline_picture(g, p, y) for g, p, y in zip(gray, pred, label)]
        if self.write_overlays:
            for sid, f, p, y in zip(ids, frames, pred, label):
                if np.any(p > 0) or np.any(y > 0):
                    atomic_write_png(self.workdir / "overlays" / f"{sid}.png", f)
        if self.write_gifs:  # outlines drawn at the GIF's size, so that they stay one pixel wide
            small = [outline_picture(*_shrink(g, p, y, self.gif_side)) for g, p, y in zip(gray, pred, label)]
            write_gif(self.workdir / "gifs" / f"{case}.gif", small, max_side=self.gif_side)

    def per_volume_rows(self) -> list[dict[str, Any]]:
        """One row per closed volume: its Dice with and without LCC, slices, voxel counts."""
        return list(self.rows)

    def finish(self) -> dict[str, Any]:
        """Closes the last volume, writes per_volume.csv, per_slice_volume.csv and dsc.png;
        returns the summary (for results.json)."""
        from unet_jax.workdir import atomic_write_csv

        self._slices.flush()
        workdir, ignore_empty, title = self.workdir, self.ignore_empty, self.title
        rows = self.per_volume_rows()
        if not rows:
            return {"num_volumes": 0}
        atomic_write_csv(workdir / "per_volume.csv", rows)
        if not self.labelled:
            return {"num_volumes": len(rows), "scored": False}
        figures = per_volume_figures(rows, ignore_empty=ignore_empty)
        s_all = np.asarray([r["dice"] for r in self.slice_rows], np.float64)
        s_fg = np.asarray([r["dice"] for r in self.slice_rows if not r["label_empty"]], np.float64)

        out: dict[str, Any] = {
            "num_volumes": len(rows), **{k: v for k, v in figures.items() if "class" not in k},
            "dice_per_slice_mean": _stat(np.mean, s_all),
            "dice_per_slice_mean_nonempty_label": _stat(np.mean, s_fg),
            "num_slices": int(s_all.size), "num_slices_nonempty_label": int(s_fg.size),
            "slice_convention": SLICE_CONVENTION,
            "volume_convention": "every voxel of a volume pooled; " + (
                "volumes with an empty label are left out of the mean and median (ignore_empty)" if ignore_empty
                else "a volume with an empty label scores 1 if nothing is predicted, else 0"),
            "lcc": lcc_method(),
            **{k: v for k, v in figures.items() if "class" in k},
        }
        atomic_write_csv(workdir / "per_slice_volume.csv", self.slice_rows)
        scored = scored_volumes(rows, ignore_empty=ignore_empty)
        if scored:
            plot_dsc([r["case"] for r in scored], [r["dice"] for r in scored], workdir / "dsc.png",
                     dice_lcc=[r["dice_lcc"] for r in scored], title=title or f"per-volume Dice, {len(scored)} volumes")
        return out
