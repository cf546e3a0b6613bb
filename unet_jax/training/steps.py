"""Pure, jit-able train and eval steps."""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import optax

from unet_jax.losses import deep_supervision_loss
from unet_jax.training.state import TrainState

LossFn = Callable[..., jax.Array]


def _heads(outputs) -> list[jax.Array]:
    # Deep-supervision networks return a list of heads in training mode.
    return list(outputs) if isinstance(outputs, (list, tuple)) else [outputs]


def heads_loss(
    state: TrainState,
    params,
    batch: dict[str, jax.Array],
    loss_fn: LossFn,
    gather: Callable[[jax.Array], jax.Array] = lambda x: x,
) -> tuple[jax.Array, dict]:
    """Training-mode forward on `batch` and the loss averaged over the network's heads.

    `gather` is applied to each head's logits before the loss (the data-parallel step
    all-gathers them so the loss covers the global batch; `batch`'s labels and mask must
    then be the gathered ones). Returns (loss, mutable collection updates).
    """
    outputs, updates = state.apply_fn(
        {"params": params, "batch_stats": state.batch_stats},
        batch["image"],
        train=True,
        mutable=["batch_stats"],
    )
    heads = [gather(h) for h in _heads(outputs)]
    return deep_supervision_loss(loss_fn, heads, batch["label"], mask=batch["mask"]), updates


def train_step(state: TrainState, batch: dict[str, jax.Array], loss_fn: LossFn) -> tuple[TrainState, dict]:
    """One optimizer step on `batch` = {image (N,H,W,C), label (N,H,W,1), mask (N,H,W,1)}.

    The loss is averaged over the network's heads (one for most networks). Returns the new
    state and scalar metrics: loss, grad_norm.
    """
    grad_fn = jax.value_and_grad(lambda p: heads_loss(state, p, batch, loss_fn), has_aux=True)
    (loss, updates), grads = grad_fn(state.params)
    state = state.apply_gradients(grads=grads, batch_stats=updates.get("batch_stats", state.batch_stats))
    return state, {"loss": loss, "grad_norm": optax.tree.norm(grads)}


def eval_step(state: TrainState, images: jax.Array) -> jax.Array:
    """Probabilities for full images (N,H,W,C), batch norm in inference mode, from the
    state's moving average of the weights when it keeps one (``--ema-decay``).

    One output channel (a binary task): the foreground probability, (N,H,W). Several:
    the softmax over classes, (N,H,W,classes).
    """
    logits = state.apply_fn(state.eval_variables(), images, train=False)
    logits = logits.astype(jnp.float32)
    if logits.shape[-1] == 1:
        return jax.nn.sigmoid(logits[..., 0])
    return jax.nn.softmax(logits, axis=-1)
