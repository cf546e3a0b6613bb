"""Binary segmentation metrics: confusion counts, overlap ratios and exact ROC AUC.

Pure JAX, float32, jit/vmap friendly; :func:`host_metrics` and :func:`summarize` are the
host-side float64 (numpy) figures of counts already on the host.

Inputs are ``(..., H, W)`` or ``(..., H, W, 1)`` (a trailing singleton channel is dropped
when the array has at least 3 axes). Predictions are binarized as ``preds >= threshold``,
labels as ``labels >= 0.5``. ``mask`` (e.g. DRIVE's field of view) is a per-pixel weight of
the same spatial shape (trailing 1 accepted, broadcasting allowed); pixels with weight 0 are
ignored.

Workflow: :func:`confusion_counts` gives :class:`ConfusionCounts` (global with
``axis=None``, per image with ``per_case=True``); :func:`class_confusion_counts` does the
same one-vs-rest for each class of a multi-class prediction (a trailing class axis);
:func:`sum_by_case` pools per-image counts into per-case (per-volume, per-patient) counts;
the functions in :data:`METRICS` map counts to ratios elementwise, so they work on global,
per-case and per-class counts alike; :func:`summarize` reports the global (pooled) figures
and the mean and median over cases.

Zero denominators: a ratio ``num / den`` with ``den == 0`` is **1.0 when the prediction
agrees with the label** (``FP + FN == 0``: nothing to find and nothing found) and **0.0
otherwise**. So an empty prediction on an empty label scores Dice = IoU = precision =
sensitivity = 1; an empty label with false positives has sensitivity ``0/0 -> 0.0``; an
empty prediction with false negatives has precision ``0/0 -> 0.0``; an all-masked case
scores 1 everywhere. Divisions use a double ``jnp.where``, so neither values nor gradients
are NaN. Averages over many cases can instead leave out the cases whose label is empty
(``summarize(..., ignore_empty=True)``, MONAI's ``DiceMetric`` convention), since a
perfect score for "nothing to find, nothing found" inflates the mean when many are empty.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
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
    "class_confusion_counts",
    "confusion_counts",
    "dice",
    "host_metrics",
    "iou",
    "precision",
    "roc_auc",
    "sensitivity",
    "specificity",
    "sum_by_case",
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


def class_confusion_counts(
    preds: ArrayLike,
    labels: ArrayLike,
    num_classes: int,
    *,
    mask: ArrayLike | None = None,
    per_case: bool = False,
) -> ConfusionCounts:
    """One-vs-rest counts for every class of a multi-class segmentation.

    Class ``k``'s counts are those of the binary task "pixel is class k", with the
    predicted class ``argmax`` of the probabilities.

    Args:
      preds: probabilities or logits ``(..., H, W, num_classes)``, or integer class ids
        ``(..., H, W)``.
      labels: integer class ids ``(..., H, W)`` (a trailing 1 accepted).
      num_classes: classes including background.
      mask: optional per-pixel weights ``(..., H, W)`` (trailing 1 accepted).
      per_case: keep the leading case axis (else everything is pooled).

    Returns:
      :class:`ConfusionCounts` of float32 arrays of shape ``(num_classes,)``, or
      ``(cases, num_classes)`` with ``per_case``.
    """
    p = jnp.asarray(preds)
    ids = p if _is_integral(p) else jnp.argmax(p, axis=-1)
    shape = ids.shape
    y = _to_pixel_shape(labels, shape).astype(jnp.int32)
    pred_1h = jax.nn.one_hot(ids, num_classes, dtype=jnp.float32) > 0
    label_1h = jax.nn.one_hot(y, num_classes, dtype=jnp.float32) > 0
    w = jnp.ones(shape, jnp.float32) if mask is None else _to_pixel_shape(mask, shape).astype(jnp.float32)
    w = w[..., None]
    axis = tuple(range(1 if per_case else 0, len(shape)))
    if per_case and len(shape) < 2:
        raise ValueError(f"per_case=True needs a leading case axis, got shape {shape}")

    def count(indicator: Array) -> Array:
        return jnp.sum(indicator.astype(jnp.float32) * w, axis=axis)

    return ConfusionCounts(
        tp=count(pred_1h & label_1h), fp=count(pred_1h & ~label_1h),
        tn=count(~pred_1h & ~label_1h), fn=count(~pred_1h & label_1h),
    )


def sum_by_case(counts: ConfusionCounts, case_index: ArrayLike, num_cases: int) -> ConfusionCounts:
    """Per-case counts: the per-image `counts` (leading axis) summed over each case's images.

    `case_index[i]` in ``[0, num_cases)`` is the case of image ``i`` (e.g. the patient of
    an MRI slice); a volume's Dice is then computed from all its voxels at once, not
    averaged over its slices. jit-friendly (``jax.ops.segment_sum``).
    """
    idx = jnp.asarray(case_index, jnp.int32)
    return ConfusionCounts(*(jax.ops.segment_sum(jnp.asarray(c), idx, num_segments=num_cases) for c in counts))


# --------------------------------------------------------------------------- ratios


# Numerator and denominator of each ratio, in plain arithmetic: the same formulas serve the
# jax functions below (float32, jit-able) and the host-side float64 figures of
# `host_metrics`, which evaluation calls per image and per case (op-by-op device dispatch
# there cost seconds per evaluation).
_FRACTIONS: dict[str, Callable[[ConfusionCounts], tuple]] = {
    "dice": lambda c: (2 * c.tp, 2 * c.tp + c.fp + c.fn),
    "iou": lambda c: (c.tp, c.tp + c.fp + c.fn),
    "sensitivity": lambda c: (c.tp, c.tp + c.fn),
    "specificity": lambda c: (c.tn, c.tn + c.fp),
    "precision": lambda c: (c.tp, c.tp + c.fp),
    "accuracy": lambda c: (c.tp + c.tn, c.tp + c.fp + c.tn + c.fn),
}


def _ratio(name: str, counts: ConfusionCounts) -> Array:
    """``num / den`` of metric `name`; ``0/0`` is 1 when prediction and label agree (FP + FN == 0), else 0."""
    num, den = (jnp.asarray(x, jnp.float32) for x in _FRACTIONS[name](counts))
    agree = (jnp.asarray(counts.fp, jnp.float32) + jnp.asarray(counts.fn, jnp.float32)) == 0
    ok = den > 0
    return jnp.where(ok, num / jnp.where(ok, den, 1.0), jnp.where(agree, 1.0, 0.0))


def dice(c: ConfusionCounts) -> Array:
    """Dice = F1 = ``2TP / (2TP + FP + FN)``, elementwise."""
    return _ratio("dice", c)


def iou(c: ConfusionCounts) -> Array:
    """Jaccard / IoU = ``TP / (TP + FP + FN)``, elementwise."""
    return _ratio("iou", c)


def sensitivity(c: ConfusionCounts) -> Array:
    """Sensitivity = recall = ``TP / (TP + FN)``, elementwise."""
    return _ratio("sensitivity", c)


def specificity(c: ConfusionCounts) -> Array:
    """Specificity = ``TN / (TN + FP)``, elementwise."""
    return _ratio("specificity", c)


def precision(c: ConfusionCounts) -> Array:
    """Precision = ``TP / (TP + FP)``, elementwise."""
    return _ratio("precision", c)


def accuracy(c: ConfusionCounts) -> Array:
    """Accuracy = ``(TP + TN) / (TP + FP + TN + FN)``, elementwise."""
    return _ratio("accuracy", c)


METRICS: dict[str, Callable[[ConfusionCounts], Array]] = {
    "dice": dice,
    "iou": iou,
    "sensitivity": sensitivity,
    "specificity": specificity,
    "precision": precision,
    "accuracy": accuracy,
}


def host_metrics(counts: ConfusionCounts) -> dict[str, np.ndarray]:
    """Every metric of :data:`METRICS`, elementwise, in float64 numpy on the host.

    The same formulas and ``0/0`` convention as the jax functions, without a device
    round trip: for summaries of counts already on the host (an evaluation's per-image
    and per-case figures). Counts in float64 stay exact beyond float32's 2**24.
    """
    c = ConfusionCounts(*(np.asarray(x, np.float64) for x in counts))
    agree = (c.fp + c.fn) == 0
    out = {}
    for name, fraction in _FRACTIONS.items():
        num, den = fraction(c)
        ok = den > 0
        out[name] = np.where(ok, num / np.where(ok, den, 1.0), np.where(agree, 1.0, 0.0))
    return out


_EMPTY_UNDEFINED = ("dice", "iou", "sensitivity")  # figures left out for empty labels by ignore_empty


def summarize(
    counts_per_case: ConfusionCounts,
    *,
    ignore_empty: bool = False,
    class_ids: Sequence[int] | None = None,
) -> dict[str, float]:
    """Global figures and their mean and median over cases, for every metric in :data:`METRICS`.

    Host side (numpy, float64 sums and ratios, :func:`host_metrics`: totals over many images can
    exceed float32's 2**24).

    Args:
      counts_per_case: counts with a leading case axis, ``(cases,)`` for a binary task
        (e.g. from ``confusion_counts(..., per_case=True)`` or :func:`sum_by_case`), or
        ``(cases, classes)`` for several foreground classes, one-vs-rest (e.g. the
        foreground columns of :func:`class_confusion_counts`).
      ignore_empty: leave a case out of the per-case Dice, IoU and sensitivity figures
        when its label has no foreground (of that class): MONAI's ``ignore_empty``. Those
        figures are undefined there (``0/0``); otherwise they count as 1 when nothing is
        predicted either and 0 when something is (see the module docstring).
      class_ids: names of the class columns for the per-class keys (default 1, 2, ...).

    Returns:
      A dict of Python floats, for each ``name`` in :data:`METRICS`:

      * ``name``: the **global** figure, the metric of the counts summed over cases (every
        pixel pooled, the DRIVE convention); with several classes, the mean over classes;
      * ``name + "_per_case_mean"`` and ``"_per_case_median"``: over cases, of each
        case's figure (with several classes: the mean over the classes scored there);
        NaN when every case is left out;
      * with several classes, the same three per class as ``name + "_class<k>"...``;

      plus ``num_cases``, and ``num_cases_empty`` (cases without foreground; with several
      classes, (case, class) pairs).
    """
    per_case = ConfusionCounts(*(np.asarray(c, np.float64) for c in counts_per_case))
    if per_case.tp.ndim == 1:
        per_case = ConfusionCounts(*(c[:, None] for c in per_case))
    num_classes = per_case.tp.shape[1]
    class_ids = list(class_ids) if class_ids is not None else list(range(1, num_classes + 1))
    total = ConfusionCounts(*(c.sum(axis=0) for c in per_case))
    empty = (per_case.tp + per_case.fn) == 0
    pooled_figures = host_metrics(total)
    out: dict[str, float] = {name: float(pooled.mean()) for name, pooled in pooled_figures.items()}
    for name, values in host_metrics(per_case).items():  # (cases, classes)
        if ignore_empty and name in _EMPTY_UNDEFINED:
            values = np.where(empty, np.nan, values)
        pooled = pooled_figures[name]
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN rows: every case left out
            case_values = np.nanmean(values, axis=1)
            out[f"{name}_per_case_mean"] = float(np.nanmean(case_values))
            out[f"{name}_per_case_median"] = float(np.nanmedian(case_values))
            if num_classes > 1:
                for j, k in enumerate(class_ids):
                    out[f"{name}_class{k}"] = float(pooled[j])
                    out[f"{name}_class{k}_per_case_mean"] = float(np.nanmean(values[:, j]))
                    out[f"{name}_class{k}_per_case_median"] = float(np.nanmedian(values[:, j]))
    out["num_cases"] = float(per_case.tp.shape[0])
    out["num_cases_empty"] = float(empty.sum())
    return out


# --------------------------------------------------------------------------- ROC AUC


def _ordered_key(s: Array) -> Array:
    """uint32 keys in the order of the float32 scores `s` (equal keys for equal scores)."""
    bits = lax.bitcast_convert_type(jnp.where(s == 0, jnp.float32(0), s), jnp.uint32)  # -0.0 is 0.0
    return jnp.where(bits >> 31 == 1, ~bits, bits | jnp.uint32(0x80000000))  # negatives reversed, below positives


_DIGIT_BITS = 4  # 8 base-16 digits cover uint32; digit sums stay < 2**32 for < 2**28 positives


def roc_auc(scores: ArrayLike, labels: ArrayLike, *, mask: ArrayLike | None = None) -> Array:
    """Exact ROC AUC over all (masked) pixels: the Mann-Whitney U statistic.

    ``AUC = (#{(i, j): s_i > s_j} + 0.5 * #{(i, j): s_i == s_j}) / (n_pos * n_neg)`` over
    positive pixels ``i`` and negative pixels ``j`` (ties count 1/2), i.e. the area under
    the full ROC curve with tied scores joined by straight segments, the same value as
    ``sklearn.metrics.roc_auc_score`` or the average-rank formula.

    Computed with two one-operand integer sorts and binary searches (fixed shapes,
    jit-friendly): the scores become order-preserving uint32 keys (XLA sorts integers alone
    several times faster than floats or key-value pairs: 3.3x for 245k pixels on CPU);
    negatives' and positives' keys are sorted apart, masked-out pixels pushed past the end.
    For each positive, ``2 * (negatives below + half the tied negatives)`` is an exact
    int32 (two binary searches among the sorted negatives); their sum (up to ~1e14) is
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
    pos, neg = (y & valid).reshape(-1), (~y & valid).reshape(-1)
    key = _ordered_key(s.reshape(-1))
    past_end = jnp.uint32(0xFFFFFFFF)  # above every key of a non-NaN score: never counted by the searches
    neg_sorted = lax.sort(jnp.where(neg, key, past_end))
    pos_sorted = lax.sort(jnp.where(pos, key, past_end))  # sorted queries: cache-friendly searches
    n_pos, n_neg = jnp.sum(pos, dtype=jnp.int32), jnp.sum(neg, dtype=jnp.int32)
    below = jnp.searchsorted(neg_sorted, pos_sorted, side="left", method="scan").astype(jnp.int32)
    up_to = jnp.searchsorted(neg_sorted, pos_sorted, side="right", method="scan").astype(jnp.int32)
    is_pos = jnp.arange(key.shape[0]) < n_pos  # the first n_pos sorted entries
    # below + (below + tied) = 2 * (negatives below + tied / 2), exact in int32.
    twice_u = (below + up_to).astype(jnp.uint32) * is_pos.astype(jnp.uint32)

    base = 1 << _DIGIT_BITS
    u2 = jnp.float32(0.0)
    for k in range(32 // _DIGIT_BITS):
        digit = (twice_u >> (k * _DIGIT_BITS)) & (base - 1)
        u2 = u2 + jnp.sum(digit, dtype=jnp.uint32).astype(jnp.float32) * float(base**k)

    n_pos, n_neg = n_pos.astype(jnp.float32), n_neg.astype(jnp.float32)
    ok = (n_pos > 0) & (n_neg > 0)
    auc = u2 / jnp.where(ok, 2.0 * n_pos * n_neg, 1.0)
    return jnp.where(ok, auc, jnp.nan)
