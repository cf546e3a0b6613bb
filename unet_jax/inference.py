"""Whole-image inference: the networks are fully convolutional and pad internally."""

from __future__ import annotations

from typing import Callable

import jax
import numpy as np


def predict_probs(
    predict_fn: Callable[[jax.Array], jax.Array], images: np.ndarray, *, batch_size: int = 1
) -> np.ndarray:
    """Applies `predict_fn` (N,H,W,C) -> (N,H,W) probabilities over `images` in batches.

    The last batch is padded to `batch_size` so a jitted `predict_fn` compiles once.
    """
    n = len(images)
    out = []
    for start in range(0, n, batch_size):
        batch = images[start : start + batch_size]
        real = len(batch)
        if real < batch_size:
            batch = np.concatenate([batch, np.repeat(batch[-1:], batch_size - real, axis=0)])
        out.append(np.asarray(predict_fn(batch))[:real])
    return np.concatenate(out) if out else np.zeros((0,) + images.shape[1:3], np.float32)
