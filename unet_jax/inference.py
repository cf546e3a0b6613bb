"""Whole-image and sliding-window prediction, flip test-time augmentation and model ensembles.

Every function here takes a ``predict_fn`` mapping a float32 batch ``(B, h, w, C)`` to
per-pixel probabilities ``(B, h, w, K)`` (K = 1 for a binary task) and returns
probabilities; thresholding is separate. They are written for ``jax.jit``: window
positions and blending weights depend only on static shapes, so they are computed once
in numpy at trace time, the windows are gathered and predicted in batches on the device
(``lax.map`` over batches of windows), and one image size compiles once.

Window placement follows MONAI's ``sliding_window_inference``: windows step by
``int(window * (1 - overlap))`` (at least 1) from the top-left corner, and a last window
is aligned with the bottom/right edge, so every pixel is covered; an image smaller than
the window is zero-padded to it and cropped back.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["flip_tta", "gaussian_importance", "mean_ensemble", "sliding_window_inference", "window_starts"]

PredictFn = Callable[[jax.Array], jax.Array]


def window_starts(size: int, window: int, overlap: float) -> list[int]:
    """Start offsets along one axis of ``size`` pixels (``size >= window``) covering every pixel."""
    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")
    step = max(int(window * (1.0 - overlap)), 1)
    starts = list(range(0, size - window + 1, step))
    if starts[-1] + window < size:
        starts.append(size - window)
    return starts


def gaussian_importance(window: tuple[int, int], sigma_scale: float = 0.125) -> np.ndarray:
    """(h, w) weights: a Gaussian centred on the window, sigma = ``sigma_scale`` x side,
    scaled to a maximum of 1; zeros (far corners in float32) are raised to the smallest
    positive weight so that every pixel keeps a weight."""
    axes = []
    for n in window:
        x = np.arange(n, dtype=np.float64) - (n - 1) / 2
        axes.append(np.exp(-0.5 * (x / (sigma_scale * n)) ** 2))
    w = np.outer(*axes).astype(np.float32)
    w /= w.max()
    positive = w[w > 0]
    return np.where(w > 0, w, positive.min()).astype(np.float32)


def sliding_window_inference(
    predict_fn: PredictFn,
    image: jax.Array,
    window: int | tuple[int, int],
    *,
    overlap: float = 0.5,
    blend: Literal["gaussian", "constant"] = "gaussian",
    batch_size: int = 8,
    sigma_scale: float = 0.125,
) -> jax.Array:
    """Probabilities of one image, predicted window by window and blended.

    Args:
      predict_fn: ``(B, h, w, C)`` -> ``(B, h, w, K)`` probabilities, for the window size.
      image: ``(H, W, C)``, any size.
      window: window side, or ``(h, w)``.
      overlap: fraction of a window shared with its neighbour, in [0, 1).
      blend: ``"gaussian"`` weights each window's pixels by :func:`gaussian_importance`
        (window borders, which see less context, count less); ``"constant"`` averages.
      batch_size: windows predicted per call of ``predict_fn``.

    Returns:
      ``(H, W, K)``: per pixel, the weighted mean of the windows covering it.
    """
    if image.ndim != 3:
        raise ValueError(f"image must be (H, W, C), got shape {image.shape}")
    if blend not in ("gaussian", "constant"):
        raise ValueError(f"blend must be 'gaussian' or 'constant', got {blend!r}")
    wh, ww = (window, window) if isinstance(window, int) else window
    h, w = image.shape[:2]
    ph, pw = max(wh - h, 0), max(ww - w, 0)
    padded = jnp.pad(image, ((0, ph), (0, pw), (0, 0)))
    hp, wp = padded.shape[:2]
    starts = np.array([(y, x) for y in window_starts(hp, wh, overlap) for x in window_starts(wp, ww, overlap)],
                      np.int32)
    n = len(starts)
    n_pad = -n % batch_size  # whole batches: the extra windows repeat the last one and are not added
    starts_b = np.concatenate([starts, np.repeat(starts[-1:], n_pad, 0)]).reshape(-1, batch_size, 2)
    importance = gaussian_importance((wh, ww), sigma_scale) if blend == "gaussian" else np.ones((wh, ww), np.float32)

    def crop(s):
        return jax.lax.dynamic_slice(padded, (s[0], s[1], 0), (wh, ww, padded.shape[2]))

    def predict_batch(s):
        return predict_fn(jax.vmap(crop)(s)).astype(jnp.float32)

    probs = jax.lax.map(predict_batch, jnp.asarray(starts_b))  # (batches, B, wh, ww, K)
    k = probs.shape[-1]
    weighted = probs * jnp.asarray(importance)[None, None, :, :, None]

    flat_starts = jnp.asarray(starts)

    def add(i, acc):  # overlapping windows: accumulated one after another, not scattered at once
        b, j = i // batch_size, i % batch_size
        y, x = flat_starts[i, 0], flat_starts[i, 1]
        current = jax.lax.dynamic_slice(acc, (y, x, 0), (wh, ww, k))
        return jax.lax.dynamic_update_slice(acc, current + weighted[b, j], (y, x, 0))

    total = jax.lax.fori_loop(0, n, add, jnp.zeros((hp, wp, k), jnp.float32))
    norm = np.zeros((hp, wp), np.float32)  # the weight map depends on shapes only: numpy
    for y, x in starts:
        norm[y : y + wh, x : x + ww] += importance
    return (total / jnp.asarray(norm)[:, :, None])[:h, :w]


def flip_tta(predict_fn: PredictFn, *, transpose: bool = False, vertical: bool = True) -> PredictFn:
    """``predict_fn`` averaged over the 4 flips of H and W (8 with the transposes), each
    prediction flipped back. Transposes need square inputs. ``vertical=False`` averages the
    input and its horizontal (W) flip only, for images with an up and a down (axial brain
    slices), whose models were trained with horizontal flips alone."""
    if transpose and not vertical:
        raise ValueError("flip_tta: transposes mix the vertical axis in; use vertical=True with transpose=True")
    flips = ((), (1,), (2,), (1, 2)) if vertical else ((), (2,))

    def predict(x: jax.Array) -> jax.Array:
        outs = []
        for t in (False, True) if transpose else (False,):
            xt = jnp.swapaxes(x, 1, 2) if t else x
            for axes in flips:
                y = predict_fn(jnp.flip(xt, axes) if axes else xt)
                y = jnp.flip(y, axes) if axes else y
                outs.append(jnp.swapaxes(y, 1, 2) if t else y)
        return jnp.mean(jnp.stack(outs), axis=0)

    return predict


def mean_ensemble(predict_fns: Sequence[PredictFn]) -> PredictFn:
    """The mean of several models' probabilities (MONAI's ``MeanEnsemble``): models trained
    apart (other seeds or recipes) err partly apart, which the mean can even out. The
    models must take the same input; their outputs must have the same shape."""
    fns = tuple(predict_fns)
    if not fns:
        raise ValueError("mean_ensemble: give at least one predict function")
    if len(fns) == 1:
        return fns[0]

    def predict(x: jax.Array) -> jax.Array:
        return jnp.mean(jnp.stack([jnp.asarray(f(x), jnp.float32) for f in fns]), axis=0)

    return predict
