"""Segmentation evaluation within a field-of-view mask: global and per-image figures."""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import jax.numpy as jnp
import numpy as np

from unet_jax import metrics


@dataclasses.dataclass
class EvalResult:
    summary: dict[str, float]  # global (all FOV pixels pooled) and per-image means
    per_image: list[dict[str, Any]]  # one row per image, for the CSV


def evaluate_binary(
    probs: np.ndarray,
    labels: np.ndarray,
    fovs: np.ndarray,
    *,
    ids: Sequence[str] | None = None,
    threshold: float = 0.5,
    with_auc: bool = True,
) -> EvalResult:
    """Dice/F1, IoU, sensitivity, specificity, precision, accuracy and ROC AUC within FOV.

    `probs`, `labels`, `fovs` are (N, H, W). Global figures pool every FOV pixel of every
    image (the DRIVE convention); `*_per_case_mean` keys average the per-image figures.
    """
    probs = np.asarray(probs, np.float32)
    labels = np.asarray(labels, np.float32)
    fovs = np.asarray(fovs, np.float32)
    ids = list(ids) if ids is not None else [str(i) for i in range(len(probs))]
    counts = metrics.confusion_counts(probs, labels, mask=fovs, threshold=threshold, per_case=True)
    summary = {k: float(v) for k, v in metrics.summarize(counts).items()}
    per_image = []
    for i, case_id in enumerate(ids):
        case = metrics.ConfusionCounts(*(np.asarray(c)[i] for c in counts))
        row: dict[str, Any] = {"id": case_id}
        row.update({name: float(fn(case)) for name, fn in metrics.METRICS.items()})
        if with_auc:
            row["auc"] = float(metrics.roc_auc(jnp.asarray(probs[i]), jnp.asarray(labels[i]), mask=jnp.asarray(fovs[i])))
        per_image.append(row)
    if with_auc:
        summary["auc"] = float(metrics.roc_auc(jnp.asarray(probs), jnp.asarray(labels), mask=jnp.asarray(fovs)))
        summary["auc_per_case_mean"] = float(np.mean([r["auc"] for r in per_image]))
    return EvalResult(summary, per_image)
