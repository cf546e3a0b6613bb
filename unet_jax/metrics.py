"""Binary segmentation metrics: confusion counts, overlap ratios and exact ROC AUC.

Pure JAX, float32, jit/vmap friendly.

Inputs are ``(..., H, W)`` or ``(..., H, W, 1)`` (a trailing singleton channel is dropped
when the array has at least 3 axes). Predictions are binarized as ``preds >= threshold``,
labels as ``labels >= 0.5``. ``mask`` (e.g. DRIVE's field of view) is a per-pixel weight of
the same spatial shape (trailing 1 accepted, broadcasting allowed); pixels with weight 0 are
ignored.

Workflow: :func:`confusion_counts` gives :class:`ConfusionCounts` (global with
``axis=None``, per case with ``per_case=True``); the functions in :data:`METRICS` map counts
to ratios elementwise, so they work on global and per-case counts alike; :func:`summarize`
reports both the global (pooled) and the per-case mean figures.

Zero denominators: a ratio ``num / den`` with ``den == 0`` is **1.0 when the prediction
agrees with the label** (``FP + FN == 0``: nothing to find and nothing found) and **0.0
otherwise**. So an empty prediction on an empty label scores Dice = IoU = precision =
sensitivity = 1; an empty label with false positives has sensitivity ``0/0 -> 0.0``; an
empty prediction with false negatives has precision ``0/0 -> 0.0``; an all-masked case
scores 1 everywhere. Divisions use a double ``jnp.where``, so neither values nor gradients
are NaN.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.typing import ArrayLike

Array = jax.Array

__all__ = [
    "METRICS",
    "ConfusionCounts",
    "accuracy",
    "confusion_counts",
    "dice",
    "iou",
    "precision",
    "roc_auc",
    "sensitivity",
    "specificity",
    "summarize",
]


class ConfusionCounts(NamedTuple):
    """Pixel counts (or weight sums, for a fractional mask) of a binary segmentation."""

    tp: Array
    fp: Array
    tn: Array
    fn: Array


# --------------------------------------------------------------------------- inputs


def _drop_channel(x: ArrayLike) -> Array:
    x = jnp.asarray(x)
    return jnp.squeeze(x, axis=-1) if x.ndim >= 3 and x.shape[-1] == 1 else x


def _to_pixel_shape(x: ArrayLike, shape: tuple[int, ...]) -> Array:
    """Broadcasts ``x`` of shape ``shape`` or ``shape + (1,)`` (or broadcastable) to ``shape``."""
    x = jnp.asarray(x)
    # A trailing singleton is a channel axis unless it could be the image width itself.
    if x.ndim > len(shape) or (x.ndim >= 1 and x.shape[-1] == 1 and shape and shape[-1] != 1):
        x = jnp.squeeze(x, axis=-1)
    return jnp.broadcast_to(x, shape)


def _is_integral(x: Array) -> bool:
    return jnp.issubdtype(x.dtype, jnp.integer) or x.dtype == jnp.bool_


# --------------------------------------------------------------------------- counts


def confusion_counts(
    preds: ArrayLike,
    labels: ArrayLike,
    *,
    mask: ArrayLike | None = None,
    threshold: float = 0.5,
    axis: int | tuple[int, ...] | None = None,
    per_case: bool = False,
) -> ConfusionCounts:
    """Counts true/false positives/negatives of ``preds >= threshold`` against labels.

    Args:
      preds: probabilities or binary predictions, ``(..., H, W)`` or ``(..., H, W, 1)``.
      labels: ``{0, 1}`` labels of the same spatial shape (trailing 1 accepted).
      mask: optional per-pixel weights (``{0, 1}`` field of view, or fractional weights).
      threshold: binarization threshold for ``preds``.
      axis: axes to reduce, referring to the ``(..., H, W)`` array (after dropping a
        trailing channel). ``None`` reduces everything: global counts pooled over every
        pixel of every image. The **per-case path** on a ``(B, H, W)`` batch is
        ``axis=(1, 2)``, giving counts of shape ``(B,)``.
      per_case: shortcut for reducing every axis but the leading (case) one.

    Returns:
      :class:`ConfusionCounts` of float32 arrays. Sums of 0/1 indicators are accumulated
      in int32 (exact) when ``mask`` is absent or integer/bool, in float32 otherwise.
    """
    p = _drop_channel(preds).astype(jnp.float32)
    shape = p.shape
    y = _to_pixel_shape(labels, shape).astype(jnp.float32) >= 0.5
    pb = p >= threshold
    if per_case:
        if axis is not None:
            raise ValueError("pass either axis or per_case=True, not both")
        if p.ndim < 2:
            raise ValueError(f"per_case=True needs a leading case axis, got shape {shape}")
        axis = tuple(range(1, p.ndim))

    if mask is None:
        w = None
        dtype = jnp.int32
    else:
        m = _to_pixel_shape(mask, shape)
        dtype = jnp.int32 if _is_integral(m) else jnp.float32
        w = m.astype(dtype)

    def count(indicator: Array) -> Array:
        v = indicator.astype(dtype)
        if w is not None:
            v = v * w
        return jnp.sum(v, axis=axis).astype(jnp.float32)

    return ConfusionCounts(tp=count(pb & y), fp=count(pb & ~y), tn=count(~pb & ~y), fn=count(~pb & y))


# --------------------------------------------------------------------------- ratios


def _ratio(num: Array, den: Array, counts: ConfusionCounts) -> Array:
    """``num / den``; ``0/0`` is 1 when prediction and label agree (FP + FN == 0), else 0."""
    num = jnp.asarray(num, jnp.float32)
    den = jnp.asarray(den, jnp.float32)
    agree = (jnp.asarray(counts.fp, jnp.float32) + jnp.asarray(counts.fn, jnp.float32)) == 0
    ok = den > 0
    return jnp.where(ok, num / jnp.where(ok, den, 1.0), jnp.where(agree, 1.0, 0.0))


def dice(c: ConfusionCounts) -> Array:
    """Dice = F1 = ``2TP / (2TP + FP + FN)``, elementwise."""
    return _ratio(2 * c.tp, 2 * c.tp + c.fp + c.fn, c)


def iou(c: ConfusionCounts) -> Array:
    """Jaccard / IoU = ``TP / (TP + FP + FN)``, elementwise."""
    return _ratio(c.tp, c.tp + c.fp + c.fn, c)


def sensitivity(c: ConfusionCounts) -> Array:
    """Sensitivity = recall = ``TP / (TP + FN)``, elementwise."""
    return _ratio(c.tp, c.tp + c.fn, c)


def specificity(c: ConfusionCounts) -> Array:
    """Specificity = ``TN / (TN + FP)``, elementwise."""
    return _ratio(c.tn, c.tn + c.fp, c)


def precision(c: ConfusionCounts) -> Array:
    """Precision = ``TP / (TP + FP)``, elementwise."""
    return _ratio(c.tp, c.tp + c.fp, c)


def accuracy(c: ConfusionCounts) -> Array:
    """Accuracy = ``(TP + TN) / (TP + FP + TN + FN)``, elementwise."""
    return _ratio(c.tp + c.tn, c.tp + c.fp + c.tn + c.fn, c)


METRICS: dict[str, Callable[[ConfusionCounts], Array]] = {
    "dice": dice,
    "iou": iou,
    "sensitivity": sensitivity,
    "specificity": specificity,
    "precision": precision,
    "accuracy": accuracy,
}


def summarize(counts_per_case: ConfusionCounts) -> dict[str, float]:
    """Global and per-case-mean figures for every metric in :data:`METRICS` (host side).

    Args:
      counts_per_case: counts with a leading case axis, e.g. from
        ``confusion_counts(..., per_case=True)``.

    Returns:
      A dict of Python floats with, for each ``name`` in :data:`METRICS`:

      * ``name``: the **global** figure, metric of the counts summed over cases (every
        pixel pooled, the usual DRIVE convention);
      * ``name + "_per_case_mean"``: the metric of each case, averaged over cases.

      plus ``"num_cases"``.
    """
    # Sum on the host in float64: totals over many images can exceed float32's 2**24.
    per_case = ConfusionCounts(*(np.asarray(c, np.float64).reshape(-1) for c in counts_per_case))
    total = ConfusionCounts(*(c.sum() for c in per_case))
    out: dict[str, float] = {}
    for name, fn in METRICS.items():
        out[name] = float(fn(total))
    for name, fn in METRICS.items():
        out[f"{name}_per_case_mean"] = float(np.mean(np.asarray(fn(per_case), np.float64)))
    out["num_cases"] = float(per_case.tp.size)
    return out


# --------------------------------------------------------------------------- ROC AUC


_DIGIT_BITS = 4  # 8 base-16 digits cover uint32; digit sums stay < 2**32 for < 2**28 positives


def roc_auc(scores: ArrayLike, labels: ArrayLike, *, mask: ArrayLike | None = None) -> Array:
    """Exact ROC AUC over all (masked) pixels: the Mann-Whitney U statistic.

    ``AUC = (#{(i, j): s_i > s_j} + 0.5 * #{(i, j): s_i == s_j}) / (n_pos * n_neg)`` over
    positive pixels ``i`` and negative pixels ``j`` (ties count 1/2), i.e. the area under
    the full ROC curve with tied scores joined by straight segments, the same value as
    ``sklearn.metrics.roc_auc_score`` or the average-rank formula.

    Computed with one sort and int32 cumulative counts; fixed shapes (jit-friendly):
    masked-out pixels stay in the sort with weight 0. For each positive, ``2 * (negatives
    below + half the tied negatives)`` is an exact int32; their sum (up to ~1e14) is
    accumulated exactly as base-16 digit sums in uint32, so the only rounding is the final
    float32 combination (relative error ~1e-7) even for tens of millions of pixels.

    Args:
      scores: real scores (e.g. probabilities), any shape; a trailing channel of 1 is
        dropped. NaN scores are not supported.
      labels: ``{0, 1}`` labels, same spatial shape (binarized as ``labels >= 0.5``).
      mask: optional; pixels with ``mask > 0`` are used.

    Returns:
      Scalar float32 AUC, or NaN when there are no positive or no negative pixels
      (the AUC is undefined).
    """
    s = _drop_channel(scores).astype(jnp.float32)
    y = _to_pixel_shape(labels, s.shape).astype(jnp.float32) >= 0.5
    valid = jnp.ones(s.shape, bool) if mask is None else _to_pixel_shape(mask, s.shape) > 0
    # One int8 code per pixel (1 positive, 2 negative, 0 masked out): a 2-operand sort.
    code = (y & valid).astype(jnp.int8) + 2 * (~y & valid).astype(jnp.int8)
    s, code = lax.sort((s.reshape(-1), code.reshape(-1)), num_keys=1, is_stable=False)
    pos = (code == 1).astype(jnp.int32)
    neg = (code == 2).astype(jnp.int32)
    n = s.shape[0]
    neg_incl = jnp.cumsum(neg)  # negatives up to and including i
    neg_excl = neg_incl - neg  # negatives strictly before i
    idx = jnp.arange(n, dtype=jnp.int32)
    new_value = jnp.concatenate([jnp.ones((1,), bool), s[1:] != s[:-1]])
    last_of_value = jnp.concatenate([new_value[1:], jnp.ones((1,), bool)])
    # First / last index of each element's tie group, via running max / reversed running min.
    start = lax.cummax(jnp.where(new_value, idx, 0))
    end = lax.cummin(jnp.where(last_of_value, idx, n - 1), reverse=True)
    # below + (below + tied) = 2 * (negatives below + tied / 2), exact in int32.
    twice_u = (neg_excl[start] + neg_incl[end]).astype(jnp.uint32) * pos.astype(jnp.uint32)

    base = 1 << _DIGIT_BITS
    u2 = jnp.float32(0.0)
    for k in range(32 // _DIGIT_BITS):
        digit = (twice_u >> (k * _DIGIT_BITS)) & (base - 1)
        u2 = u2 + jnp.sum(digit, dtype=jnp.uint32).astype(jnp.float32) * float(base**k)

    n_pos = jnp.sum(pos).astype(jnp.float32)
    n_neg = jnp.sum(neg).astype(jnp.float32)
    ok = (n_pos > 0) & (n_neg > 0)
    auc = u2 / jnp.where(ok, 2.0 * n_pos * n_neg, 1.0)
    return jnp.where(ok, auc, jnp.nan)
