"""Segmentation losses computed from logits: pure functions, jit/vmap/grad friendly.

Every loss has the signature ``fn(logits, labels, *, mask=None, **kwargs) -> scalar float32``.

Layout is channels-last: ``logits`` has shape ``(..., C)``.

* **Binary** (``C == 1``): probabilities are ``sigmoid(logits)``. ``labels`` has shape
  ``logits.shape`` or ``logits.shape[:-1]`` with values in ``{0, 1}`` (int or float; soft
  labels in ``[0, 1]`` are accepted).
* **Multi-class** (``C > 1``): probabilities are ``softmax(logits, axis=-1)``. ``labels`` are
  either integer class ids of shape ``logits.shape[:-1]`` (or ``logits.shape[:-1] + (1,)``)
  or one-hot / soft targets of shape ``logits.shape``.

``mask`` (optional) is a per-pixel weight broadcastable to ``logits.shape[:-1]``; a trailing
singleton channel axis is accepted too (``(..., H, W)`` and ``(..., H, W, 1)`` both work).
Values are usually ``{0, 1}`` (e.g. DRIVE's field of view); pixels with weight 0 contribute
nothing. Over an all-zero mask every loss is finite with finite gradients: mean-type losses
(bce, focal, mse) return 0 and overlap losses (dice, soft_iou, tversky, cldice) score the
empty overlap as perfect, so they return 0 as well.

Logits are upcast to float32 (e.g. bf16 network outputs), and every log-probability comes
from ``jax.nn.log_sigmoid`` / ``jax.nn.log_softmax``, so the losses stay finite for
``|logits|`` in the hundreds.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax
from jax.typing import ArrayLike

Array = jax.Array
LossFn = Callable[..., Array]

__all__ = [
    "LOSSES",
    "bce_dice_loss",
    "bce_loss",
    "cldice_loss",
    "deep_supervision_loss",
    "dice_loss",
    "focal_loss",
    "get_loss",
    "mse_loss",
    "soft_iou_loss",
    "soft_skeleton",
    "tversky_loss",
]


# --------------------------------------------------------------------------- helpers


def _to_pixel_shape(x: ArrayLike, shape: tuple[int, ...]) -> Array:
    """Broadcasts a per-pixel array of shape ``shape`` or ``shape + (1,)`` to ``shape``."""
    x = jnp.asarray(x)
    # A trailing singleton is a channel axis unless it could be the image width itself.
    if x.ndim > len(shape) or (x.ndim >= 1 and x.shape[-1] == 1 and shape and shape[-1] != 1):
        x = jnp.squeeze(x, axis=-1)
    return jnp.broadcast_to(x, shape)


def _pixel_weights(mask: ArrayLike | None, logits: Array) -> Array:
    """Per-pixel float32 weights of shape ``logits.shape[:-1] + (1,)``."""
    if mask is None:
        return jnp.ones(logits.shape[:-1] + (1,), jnp.float32)
    return _to_pixel_shape(mask, logits.shape[:-1]).astype(jnp.float32)[..., None]


def _targets(logits: Array, labels: ArrayLike) -> Array:
    """float32 targets of shape ``logits.shape`` (one-hot for integer class ids)."""
    num_classes = logits.shape[-1]
    labels = jnp.asarray(labels)
    if num_classes == 1:
        return _to_pixel_shape(labels, logits.shape[:-1]).astype(jnp.float32)[..., None]
    if labels.ndim == logits.ndim and labels.shape[-1] == 1:
        labels = labels[..., 0]  # class ids with a trailing channel axis, (..., H, W, 1)
    if labels.ndim == logits.ndim - 1:
        return jax.nn.one_hot(labels.astype(jnp.int32), num_classes, dtype=jnp.float32)
    if labels.ndim == logits.ndim:
        return jnp.broadcast_to(labels.astype(jnp.float32), logits.shape)
    raise ValueError(
        f"labels of shape {labels.shape} do not match logits of shape {logits.shape}: expected "
        f"class ids of shape {logits.shape[:-1]} or one-hot targets of shape {logits.shape}"
    )


def _prepare(logits: ArrayLike, labels: ArrayLike, mask: ArrayLike | None) -> tuple[Array, Array, Array]:
    logits = jnp.asarray(logits, jnp.float32)
    return logits, _targets(logits, labels), _pixel_weights(mask, logits)


def _probs(logits: Array) -> Array:
    return jax.nn.sigmoid(logits) if logits.shape[-1] == 1 else jax.nn.softmax(logits, axis=-1)


def _safe_div(num: Array, den: Array, empty_value: float = 1.0) -> Array:
    # Double `where` so that neither the value nor the gradient is NaN when den == 0.
    ok = den > 0
    return jnp.where(ok, num / jnp.where(ok, den, 1.0), empty_value)


def _masked_mean(per_pixel: Array, weights: Array) -> Array:
    """``sum(w * l) / sum(w)`` over all pixels; 0 when every weight is 0."""
    return _safe_div(jnp.sum(weights * per_pixel), jnp.sum(weights), empty_value=0.0)


def _sum_axes(ndim: int, per_image: bool) -> tuple[int, ...]:
    # Reduce every axis but the class axis (and the leading batch axis when per_image).
    start = 1 if per_image else 0
    if per_image and ndim < 3:
        raise ValueError("per_image=True needs logits of shape (B, ..., C) with at least 3 axes")
    return tuple(range(start, ndim - 1))


def _class_mean(score: Array, include_background: bool) -> Array:
    """Averages a per-class score ``(..., C)``; drops class 0 when asked and ``C > 1``."""
    if not include_background and score.shape[-1] > 1:
        score = score[..., 1:]
    return jnp.mean(score)


def _overlap(
    logits: ArrayLike, labels: ArrayLike, mask: ArrayLike | None, per_image: bool
) -> tuple[Array, Array, Array]:
    """Soft TP, sum(p), sum(y) per class, shape ``(C,)`` or ``(B, C)`` when per_image."""
    logits, y, w = _prepare(logits, labels, mask)
    p = _probs(logits) * w
    y = y * w
    axes = _sum_axes(logits.ndim, per_image)
    return jnp.sum(p * y, axes), jnp.sum(p, axes), jnp.sum(y, axes)


# --------------------------------------------------------------------------- pixel losses


def bce_loss(
    logits: ArrayLike,
    labels: ArrayLike,
    *,
    mask: ArrayLike | None = None,
    pos_weight: float | Array | None = None,
) -> Array:
    """Binary / categorical cross-entropy from logits, masked mean over valid pixels.

    Binary (``C == 1``), with ``x`` the logit and ``y`` the label::

        l = -(pos_weight * y * log_sigmoid(x) + (1 - y) * log_sigmoid(-x))

    Multi-class (``C > 1``): ``l = -sum_c y_c * log_softmax(x)_c``.

    Args:
      logits: ``(..., C)`` float logits.
      labels: see the module docstring.
      mask: optional per-pixel weights, ``(..., H, W)`` or ``(..., H, W, 1)``.
      pos_weight: binary only: weight of the positive term (``n_neg / n_pos`` counters class
        imbalance); ``None`` means 1.

    Returns:
      Scalar float32 ``sum(mask * l) / sum(mask)`` (0 when the mask is all zero).
    """
    logits, y, w = _prepare(logits, labels, mask)
    if logits.shape[-1] == 1:
        pos = y * jax.nn.log_sigmoid(logits)
        if pos_weight is not None:
            pos = pos * jnp.asarray(pos_weight, jnp.float32)
        per_pixel = -(pos + (1.0 - y) * jax.nn.log_sigmoid(-logits))
    else:
        if pos_weight is not None:
            raise ValueError("pos_weight applies to binary (C == 1) logits only")
        per_pixel = -jnp.sum(y * jax.nn.log_softmax(logits, axis=-1), axis=-1, keepdims=True)
    return _masked_mean(per_pixel, w)


def focal_loss(
    logits: ArrayLike,
    labels: ArrayLike,
    *,
    mask: ArrayLike | None = None,
    gamma: float = 2.0,
    alpha: float | Array | None = 0.25,
) -> Array:
    """Focal loss (Lin et al., 2017), masked mean over valid pixels.

    Binary (``C == 1``), with ``p = sigmoid(x)`` and ``p_t = p*y + (1-p)*(1-y)``::

        l = alpha_t * (1 - p_t)**gamma * BCE(x, y),   alpha_t = alpha*y + (1-alpha)*(1-y)

    Multi-class (``C > 1``)::

        l = -sum_c alpha_c * (1 - p_c)**gamma * y_c * log p_c

    where a scalar ``alpha`` gives ``alpha_c = (1 - alpha, alpha, ..., alpha)`` (class 0 is
    background, matching the binary case) and an array of shape ``(C,)`` gives per-class
    weights. ``alpha=None`` disables the weighting; ``gamma=0, alpha=None`` is ``bce_loss``.

    Returns:
      Scalar float32 ``sum(mask * l) / sum(mask)`` (0 when the mask is all zero).
    """
    logits, y, w = _prepare(logits, labels, mask)
    if logits.shape[-1] == 1:
        log_p, log_1mp = jax.nn.log_sigmoid(logits), jax.nn.log_sigmoid(-logits)
        ce = -(y * log_p + (1.0 - y) * log_1mp)
        # 1 - p_t written with sigmoids of +-x so it keeps precision when p_t ~ 1.
        one_minus_pt = y * jax.nn.sigmoid(-logits) + (1.0 - y) * jax.nn.sigmoid(logits)
        per_pixel = _pow(one_minus_pt, gamma) * ce
        if alpha is not None:
            alpha = jnp.asarray(alpha, jnp.float32)
            per_pixel = (alpha * y + (1.0 - alpha) * (1.0 - y)) * per_pixel
    else:
        log_p = jax.nn.log_softmax(logits, axis=-1)
        per_class = _pow(-jnp.expm1(log_p), gamma) * y * log_p
        if alpha is not None:
            alpha = jnp.asarray(alpha, jnp.float32)
            if alpha.ndim == 0:
                alpha = jnp.full((logits.shape[-1],), alpha).at[0].set(1.0 - alpha)
            per_class = alpha * per_class
        per_pixel = -jnp.sum(per_class, axis=-1, keepdims=True)
    return _masked_mean(per_pixel, w)


def _pow(base: Array, exponent: float) -> Array:
    """``base ** exponent`` for ``base >= 0`` with finite gradients at ``base == 0``."""
    pos = base > 0
    zero_value = jnp.where(jnp.asarray(exponent) == 0, 1.0, 0.0)
    return jnp.where(pos, jnp.power(jnp.where(pos, base, 1.0), exponent), zero_value)


def mse_loss(logits: ArrayLike, labels: ArrayLike, *, mask: ArrayLike | None = None) -> Array:
    """Mean squared error between probabilities and targets, masked mean.

    ``l = mean over valid pixels and classes of (p - y)**2`` with ``p = sigmoid(x)`` (binary)
    or ``softmax(x)`` (multi-class, ``y`` one-hot). A weak baseline that several retinal
    vessel tutorials train with.

    Returns:
      Scalar float32 ``sum(mask * sum_c (p_c - y_c)**2) / (C * sum(mask))`` (0 when the
      mask is all zero).
    """
    logits, y, w = _prepare(logits, labels, mask)
    sq = jnp.mean(jnp.square(_probs(logits) - y), axis=-1, keepdims=True)
    return _masked_mean(sq, w)


# --------------------------------------------------------------------------- overlap losses


def dice_loss(
    logits: ArrayLike,
    labels: ArrayLike,
    *,
    mask: ArrayLike | None = None,
    smooth: float = 1.0,
    per_image: bool = False,
    include_background: bool = True,
) -> Array:
    """Soft Dice loss.

    Per class ``c``, with ``p`` the probabilities and ``y`` the targets, both multiplied by
    the mask::

        dice_c = (2 * sum(p_c * y_c) + smooth) / (sum(p_c) + sum(y_c) + smooth)
        loss = 1 - mean_c(dice_c)

    Reduction: by default the sums run over **all pixels of the whole batch** (pooled
    Dice, one score per class), which is stable for thin structures and empty images.
    With ``per_image=True`` the sums run per leading batch index (logits ``(B, ..., C)``)
    and the Dice scores are averaged over images and classes. For binary logits the only
    class is the foreground; for ``C > 1``, ``include_background=False`` drops class 0
    from the average. An empty prediction on an empty target scores Dice 1 (loss 0),
    also when ``smooth == 0``. Per image, a prediction summing to ``S`` on an empty target
    costs ``S / (S + smooth)``, whose gradient ``smooth / (S + smooth)**2`` fades as ``S``
    grows: where images can be empty, pair it with BCE (:func:`bce_dice_loss`).

    Returns:
      Scalar float32 in ``[0, 1]``.
    """
    inter, psum, ysum = _overlap(logits, labels, mask, per_image)
    score = _safe_div(2.0 * inter + smooth, psum + ysum + smooth)
    return 1.0 - _class_mean(score, include_background)


def soft_iou_loss(
    logits: ArrayLike,
    labels: ArrayLike,
    *,
    mask: ArrayLike | None = None,
    smooth: float = 1.0,
    per_image: bool = False,
    include_background: bool = True,
) -> Array:
    """Soft Jaccard (IoU) loss, same conventions as :func:`dice_loss`.

    ``iou_c = (sum(p_c*y_c) + smooth) / (sum(p_c) + sum(y_c) - sum(p_c*y_c) + smooth)``,
    ``loss = 1 - mean_c(iou_c)``; pooled over the batch unless ``per_image=True``.

    Returns:
      Scalar float32 in ``[0, 1]``.
    """
    inter, psum, ysum = _overlap(logits, labels, mask, per_image)
    score = _safe_div(inter + smooth, psum + ysum - inter + smooth)
    return 1.0 - _class_mean(score, include_background)


def tversky_loss(
    logits: ArrayLike,
    labels: ArrayLike,
    *,
    mask: ArrayLike | None = None,
    alpha: float = 0.5,
    beta: float = 0.5,
    smooth: float = 1.0,
    per_image: bool = False,
    include_background: bool = True,
) -> Array:
    """Tversky loss (Salehi et al., 2017), same reductions as :func:`dice_loss`.

    With soft ``TP = sum(p*y)``, ``FP = sum(p*(1-y))``, ``FN = sum((1-p)*y)`` per class::

        T_c = (2*TP + smooth) / (2*TP + 2*alpha*FP + 2*beta*FN + smooth)
        loss = 1 - mean_c(T_c)

    ``alpha`` weights false positives and ``beta`` false negatives (``beta > alpha`` favours
    recall). Numerator and denominator are scaled by 2 relative to the usual
    ``(TP + s) / (TP + a*FP + b*FN + s)`` so that ``alpha = beta = 0.5`` equals
    :func:`dice_loss` exactly for the same ``smooth``.

    Returns:
      Scalar float32.
    """
    inter, psum, ysum = _overlap(logits, labels, mask, per_image)
    fp, fn = psum - inter, ysum - inter
    score = _safe_div(2.0 * inter + smooth, 2.0 * (inter + alpha * fp + beta * fn) + smooth)
    return 1.0 - _class_mean(score, include_background)


def bce_dice_loss(
    logits: ArrayLike,
    labels: ArrayLike,
    *,
    mask: ArrayLike | None = None,
    bce_weight: float = 1.0,
    dice_weight: float = 1.0,
    smooth: float = 1.0,
    per_image: bool = False,
    include_background: bool = True,
    pos_weight: float | Array | None = None,
) -> Array:
    """``bce_weight * bce_loss + dice_weight * dice_loss`` (see those for the conventions)."""
    bce = bce_loss(logits, labels, mask=mask, pos_weight=pos_weight)
    dice = dice_loss(
        logits,
        labels,
        mask=mask,
        smooth=smooth,
        per_image=per_image,
        include_background=include_background,
    )
    return bce_weight * bce + dice_weight * dice


# --------------------------------------------------------------------------- clDice


def _max_pool(x: Array, window: tuple[int, int]) -> Array:
    """Stride-1 'same' max pool over the (H, W) axes of a channels-last ``(..., H, W, C)``."""
    kh, kw = window
    dims = (1,) * (x.ndim - 3) + (kh, kw, 1)
    pad = ((0, 0),) * (x.ndim - 3) + ((kh // 2, kh // 2), (kw // 2, kw // 2), (0, 0))
    # -inf padding: out-of-image pixels never win the max (nor the min, for erosion).
    return lax.reduce_window(x, -jnp.inf, lax.max, dims, (1,) * x.ndim, pad)


def _soft_erode(x: Array) -> Array:
    # Min over a 3x3 cross = min of a vertical and a horizontal 3-pixel min-pool.
    return jnp.minimum(-_max_pool(-x, (3, 1)), -_max_pool(-x, (1, 3)))


def _soft_dilate(x: Array) -> Array:
    return _max_pool(x, (3, 3))


def _soft_open(x: Array) -> Array:
    return _soft_dilate(_soft_erode(x))


def soft_skeleton(x: ArrayLike, iterations: int = 10) -> Array:
    """Soft morphological skeleton (Shit et al., 2021, Algorithm 1).

    ``skel = relu(x - open(x))``, then ``iterations`` times: ``x = erode(x)``,
    ``delta = relu(x - open(x))``, ``skel += relu(delta - skel * delta)``. Erosion is a 3x3
    cross min-pool, dilation a 3x3 max-pool, opening = dilate(erode(.)); pooling ignores
    pixels outside the image. For a binary input the result is binary and contained in it.

    Args:
      x: ``(..., H, W, C)`` channels-last values in ``[0, 1]``.
      iterations: erosion steps; should reach the half-width of the thickest structure.

    Returns:
      float32 array with the shape of ``x``.
    """
    x = jnp.asarray(x, jnp.float32)
    if x.ndim < 3:
        raise ValueError(f"soft_skeleton expects (..., H, W, C), got shape {x.shape}")
    skel = jax.nn.relu(x - _soft_open(x))
    for _ in range(iterations):
        x = _soft_erode(x)
        delta = jax.nn.relu(x - _soft_open(x))
        skel = skel + jax.nn.relu(delta - skel * delta)
    return skel


def cldice_loss(
    logits: ArrayLike,
    labels: ArrayLike,
    *,
    mask: ArrayLike | None = None,
    iterations: int = 10,
    smooth: float = 1.0,
) -> Array:
    """Soft clDice loss (Shit et al., 2021), binary only, pooled over the batch.

    With ``P = sigmoid(logits) * mask``, ``Y = labels * mask`` and ``S(.)`` the
    :func:`soft_skeleton`::

        tprec = (sum(S(P) * Y) + smooth) / (sum(S(P)) + smooth)
        tsens = (sum(S(Y) * P) + smooth) / (sum(S(Y)) + smooth)
        loss = 1 - 2 * tprec * tsens / (tprec + tsens)

    It penalises broken or spurious thin structures (topology) far more than boundary
    errors on thick ones; usually combined with a Dice/BCE term.

    Args:
      logits: ``(B, H, W, 1)`` (or ``(..., H, W, 1)``) binary logits.
      labels: ``(B, H, W)`` or ``(B, H, W, 1)`` in ``{0, 1}``.
      mask: optional per-pixel weights.
      iterations: soft-skeleton iterations.
      smooth: additive smoothing of both ratios.

    Returns:
      Scalar float32.
    """
    logits, y, w = _prepare(logits, labels, mask)
    if logits.shape[-1] != 1 or logits.ndim < 3:
        raise ValueError(f"cldice_loss expects binary logits (..., H, W, 1), got {logits.shape}")
    p = jax.nn.sigmoid(logits) * w
    y = y * w
    skel_p, skel_y = soft_skeleton(p, iterations), soft_skeleton(y, iterations)
    tprec = _safe_div(jnp.sum(skel_p * y) + smooth, jnp.sum(skel_p) + smooth)
    tsens = _safe_div(jnp.sum(skel_y * p) + smooth, jnp.sum(skel_y) + smooth)
    return 1.0 - _safe_div(2.0 * tprec * tsens, tprec + tsens, empty_value=0.0)


# --------------------------------------------------------------------------- registry


LOSSES: dict[str, LossFn] = {
    "bce": bce_loss,
    "dice": dice_loss,
    "bce_dice": bce_dice_loss,
    "soft_iou": soft_iou_loss,
    "focal": focal_loss,
    "tversky": tversky_loss,
    "mse": mse_loss,
    "cldice": cldice_loss,
}


def get_loss(name: str, *, per_image: bool = False, **options: Any) -> LossFn:
    """Looks up a loss in :data:`LOSSES`; raises ``ValueError`` for unknown names.

    ``per_image=True`` returns the loss with its ``per_image`` option bound (overlap sums
    per image, then averaged: MONAI ``DiceLoss(batch=False)``), so a small lesion weighs as
    much as a large one; a loss without that option raises ``ValueError``. ``options`` are
    bound too (e.g. ``get_loss("tversky", alpha=0.3, beta=0.7)``); one the loss does not
    take raises ``ValueError``.
    """
    try:
        fn = LOSSES[name]
    except (KeyError, TypeError):
        raise ValueError(f"Unknown loss {name!r}; valid names: {', '.join(sorted(LOSSES))}") from None
    params = inspect.signature(fn).parameters
    unknown = sorted(set(options) - set(params))
    if unknown:
        raise ValueError(f"loss {name!r} takes no option {', '.join(unknown)}")
    if per_image:
        if "per_image" not in params:
            with_option = sorted(n for n, f in LOSSES.items() if "per_image" in inspect.signature(f).parameters)
            raise ValueError(f"loss {name!r} has no per-image form; per-image losses: {', '.join(with_option)}")
        options["per_image"] = True
    return functools.partial(fn, **options) if options else fn


def deep_supervision_loss(
    loss_fn: LossFn | str,
    logits_list: Sequence[ArrayLike],
    labels: ArrayLike,
    *,
    mask: ArrayLike | None = None,
    weights: Sequence[float] | None = None,
    **kwargs: Any,
) -> Array:
    """Weighted average of one loss over several output heads (UNet++ deep supervision).

    ``loss = sum_i w_i * loss_fn(logits_list[i], labels, mask=mask, **kwargs) / sum_i w_i``,
    with uniform weights by default. Every head must have the resolution of ``labels``.

    Args:
      loss_fn: a loss with this module's signature, or its name in :data:`LOSSES`.
      logits_list: non-empty list/tuple of ``(..., C)`` logits.
      labels, mask: as for ``loss_fn``, shared by all heads.
      weights: optional non-negative weight per head (not all zero).
      **kwargs: forwarded to ``loss_fn``.

    Returns:
      Scalar float32.
    """
    if isinstance(loss_fn, str):
        loss_fn = get_loss(loss_fn)
    heads = list(logits_list)
    if not heads:
        raise ValueError("deep_supervision_loss needs at least one head")
    if weights is None:
        weights = [1.0] * len(heads)
    if len(weights) != len(heads):
        raise ValueError(f"got {len(weights)} weights for {len(heads)} heads")
    total = sum(w * loss_fn(h, labels, mask=mask, **kwargs) for w, h in zip(weights, heads))
    return total / sum(weights)
