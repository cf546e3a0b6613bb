"""Evaluation of a segmentation over a whole source: per image, per case, pooled.

Images are predicted one at a time and only their confusion counts are kept (plus, for a
binary task, the valid pixels' probabilities for the exact ROC AUC, up to a cap), so a
large test set is evaluated in bounded memory. Predictions are computed at the model's
resolution and resized back to the stored label's size, so figures are always at the
original resolution. Pixels outside an example's valid region (DRIVE's FOV) are ignored.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from tqdm.auto import tqdm

from unet_jax import metrics
from unet_jax.data.base import Example, Source
from unet_jax.data.preprocess import resize_probs

# Above this many valid pixels the exact pooled AUC is skipped (5 bytes per pixel held).
AUC_MAX_PIXELS = 1 << 27


@dataclasses.dataclass
class EvalResult:
    summary: dict[str, Any]  # pooled figures, their mean and median over cases, conventions
    per_image: list[dict[str, Any]]  # one row per image, for per_image.csv
    per_case: list[dict[str, Any]]  # one row per case (volume, patient), for per_case.csv


def predicted_classes(probs: np.ndarray, threshold: float) -> np.ndarray:
    """Class ids from probabilities: ``probs >= threshold`` for a binary (H, W) map, else argmax."""
    return (probs >= threshold).astype(np.uint8) if probs.ndim == 2 else np.argmax(probs, axis=-1).astype(np.uint8)


class Evaluator:
    """Accumulates figures image by image; :meth:`result` summarises them.

    Args:
      num_classes: classes including background (2: binary, probabilities (H, W)).
      threshold: binary tasks: the probability threshold.
      ignore_empty: per-case Dice, IoU and sensitivity leave out cases whose label has
        no foreground (MONAI's convention); named in the summary.
      with_auc: binary tasks: exact ROC AUC per image, per case and pooled.
    """

    def __init__(self, num_classes: int, *, threshold: float = 0.5, ignore_empty: bool = True, with_auc: bool = True):
        self.num_classes, self.threshold, self.ignore_empty = num_classes, threshold, ignore_empty
        self.with_auc = with_auc and num_classes == 2
        self.per_image: list[dict[str, Any]] = []
        self._counts: list[metrics.ConfusionCounts] = []  # per image, foreground classes
        self._cases: dict[str, int] = {}  # case id -> index, in order of appearance
        self._case_of: list[int] = []
        self._scores: dict[int, list[tuple[np.ndarray, np.ndarray]]] = {}  # case -> [(probs, labels)] in valid
        self._auc_pixels = 0

    def add(self, example: Example, probs: np.ndarray) -> np.ndarray:
        """Scores one image's probabilities against `example`'s label; returns the class ids.

        `probs`: (H, W) foreground probabilities (binary) or (H, W, C); resized to the
        label's size when they differ.
        """
        label = np.asarray(example.label)
        probs = resize_probs(np.asarray(probs, np.float32), label.shape)
        valid = None if example.valid is None else np.asarray(example.valid)
        pred = predicted_classes(probs, self.threshold)
        if self.num_classes == 2:
            counts = metrics.confusion_counts(probs, label, mask=valid, threshold=self.threshold)
        else:
            all_counts = metrics.class_confusion_counts(pred, label, self.num_classes, mask=valid)
            counts = metrics.ConfusionCounts(*(np.asarray(c)[1:] for c in all_counts))
        counts = metrics.ConfusionCounts(*(np.asarray(c, np.float64) for c in counts))
        self._counts.append(counts)
        case = self._cases.setdefault(example.case_id, len(self._cases))
        self._case_of.append(case)
        row: dict[str, Any] = {"id": example.id, **({"case": example.case} if example.case is not None else {})}
        row.update(_figures(counts, self.num_classes))
        if self.with_auc:
            inside = slice(None) if valid is None else valid > 0
            s, y = probs[inside].reshape(-1), label[inside].reshape(-1) > 0
            row["auc"] = exact_auc(s, y)
            self._auc_pixels += s.size
            if self._auc_pixels <= AUC_MAX_PIXELS:
                self._scores.setdefault(case, []).append((s, y))
        self.per_image.append(row)
        return pred

    def result(self) -> EvalResult:
        n_cases = len(self._cases)
        per_image = metrics.ConfusionCounts(*(np.stack(c) for c in zip(*self._counts)))
        per_case = metrics.sum_by_case(per_image, np.asarray(self._case_of), n_cases)
        fg = list(range(1, self.num_classes)) if self.num_classes > 2 else None
        summary: dict[str, Any] = metrics.summarize(per_case, ignore_empty=self.ignore_empty, class_ids=fg)
        summary["num_images"] = float(len(self.per_image))
        summary["ignore_empty"] = self.ignore_empty
        case_rows = []
        for case_id, k in self._cases.items():
            c = metrics.ConfusionCounts(*(np.asarray(x)[k] for x in per_case))
            case_rows.append({"case": case_id, "images": self._case_of.count(k), **_figures(c, self.num_classes)})
        if self.with_auc and self._auc_pixels <= AUC_MAX_PIXELS:
            image_of = {k: i for i, k in enumerate(self._case_of)}  # a case's (last) image
            for row, k in zip(case_rows, self._cases.values()):
                # A case of one image (DRIVE's) has that image's AUC: one sort fewer per image.
                row["auc"] = self.per_image[image_of[k]]["auc"] if row["images"] == 1 else _auc(self._scores.get(k, []))
            summary["auc"] = _auc([pair for pairs in self._scores.values() for pair in pairs])
            summary["auc_per_case_mean"] = float(np.nanmean([r["auc"] for r in case_rows]))
        elif self.with_auc:
            summary["auc_note"] = f"pooled AUC skipped: more than {AUC_MAX_PIXELS} valid pixels"
        return EvalResult(summary, self.per_image, case_rows)


def _figures(counts: metrics.ConfusionCounts, num_classes: int) -> dict[str, float]:
    """One image's or case's metrics: binary figures, or the foreground-class mean and each class."""
    out: dict[str, float] = {}
    for name, values in metrics.host_metrics(counts).items():
        values = np.atleast_1d(values)
        out[name] = float(values.mean())
        if num_classes > 2:
            out.update({f"{name}_class{k}": float(v) for k, v in enumerate(values, start=1)})
    return out


_jit_roc_auc = jax.jit(metrics.roc_auc)


def exact_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """:func:`metrics.roc_auc` of 1-D scores and {0, 1} labels, compiled.

    The inputs are padded with weight-0 pixels to one of 8 to 16 lengths per power of two
    (at most 1/8 more pixels to sort), so that images and cases of similar sizes share one
    compiled program; run op by op instead, each call costs about as much as a compile.
    NaN when either class is missing.
    """
    n = scores.size
    step = 1 << max(0, n.bit_length() - 4)
    size = max(step, -(-n // step) * step)
    pad = (0, size - n)
    s = np.pad(np.asarray(scores, np.float32).reshape(-1), pad)
    y = np.pad(np.asarray(labels, np.float32).reshape(-1), pad)
    return float(_jit_roc_auc(s, y, mask=np.arange(size) < n))


def _auc(pairs: list[tuple[np.ndarray, np.ndarray]]) -> float:
    if not pairs:
        return float("nan")
    return exact_auc(np.concatenate([p[0] for p in pairs]), np.concatenate([p[1] for p in pairs]))


def evaluate(
    predict: Callable[[np.ndarray], np.ndarray],
    source: Source,
    preprocess: Callable[[Example], Example],
    *,
    num_classes: int,
    threshold: float = 0.5,
    ignore_empty: bool = True,
    with_auc: bool = True,
    on_image: Callable[[Example, np.ndarray, np.ndarray], None] | None = None,
    progress: bool = False,
    desc: str = "evaluate",
    restore: Callable[[Example, np.ndarray], np.ndarray] | None = None,
) -> EvalResult:
    """Predicts every example of `source` and scores it (see :class:`Evaluator`).

    Args:
      predict: (1, H, W, C) float32 image batch -> (1, H, W) foreground probabilities
        (binary) or (1, H, W, num_classes).
      source: raw examples (as stored); `preprocess` gives the model's input.
      on_image: called as ``on_image(example, probs, pred)`` for each image, with the
        probabilities and class ids at the label's resolution (to save pictures).
      progress: a progress bar over the images.
      restore: maps the model's probabilities onto the stored label's grid as
        ``restore(example, probs)`` (a dataset that crops before resizing undoes the crop
        there); default: resized to the label's size.
    """
    ev = Evaluator(num_classes, threshold=threshold, ignore_empty=ignore_empty, with_auc=with_auc)
    for i in tqdm(range(len(source)), desc=desc, unit="image", disable=not progress, leave=False):
        example = source[i]
        image = preprocess(example).image
        probs = np.asarray(predict(image[None]))[0]
        if restore is not None:
            probs = restore(example, probs)
        probs = resize_probs(probs, np.asarray(example.label).shape)
        pred = ev.add(example, probs)
        if on_image is not None:
            on_image(example, probs, pred)
    return ev.result()
