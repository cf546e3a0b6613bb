"""The training state pytree and the optimizer that updates it."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax.training import train_state

from unet_jax.config import TrainConfig


class TrainState(train_state.TrainState):
    """flax's TrainState plus batch-norm running statistics (empty dict without BN) and,
    with device-resident data, the patch sampler's raw uint32 key (None otherwise): in the
    state, so it is checkpointed with the weights and a resumed run draws the same patches."""

    batch_stats: Any = None
    data_rng: Any = None


def make_schedule(cfg: TrainConfig) -> optax.Schedule:
    """Linear warmup from 0 to `lr`, then cosine decay to `lr * end_lr_fraction`."""
    warmup = min(cfg.warmup_steps, max(cfg.steps - 1, 0))
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=cfg.lr,
        warmup_steps=warmup,
        decay_steps=max(cfg.steps, warmup + 1),
        end_value=cfg.lr * cfg.end_lr_fraction,
    )


def make_optimizer(cfg: TrainConfig) -> optax.GradientTransformation:
    schedule = make_schedule(cfg)
    if cfg.optimizer == "adam":
        opt = optax.adam(schedule)
    elif cfg.optimizer == "adamw":
        opt = optax.adamw(schedule, weight_decay=cfg.weight_decay)
    else:
        raise ValueError(f"unknown optimizer {cfg.optimizer!r}; expected 'adam' or 'adamw'")
    if cfg.grad_clip > 0:
        opt = optax.chain(optax.clip_by_global_norm(cfg.grad_clip), opt)
    return opt


def create_train_state(
    model: nn.Module, cfg: TrainConfig, input_shape: tuple[int, ...], rng: jax.Array
) -> TrainState:
    """Initialises parameters on a dummy batch of `input_shape` (N, H, W, C)."""
    variables = init_variables(model, input_shape, rng)
    return TrainState.create(
        apply_fn=model.apply,
        params=variables["params"],
        tx=make_optimizer(cfg),
        batch_stats=variables.get("batch_stats", {}),
    )


def init_variables(model: nn.Module, input_shape: tuple[int, ...], rng: jax.Array) -> Any:
    """``model.init`` on zeros of `input_shape`, compiled as one program.

    On CPU it is compiled at XLA backend optimisation level 1: at the default level XLA
    spends most of a run's start-up (about 15 s for a 16-feature U-Net on 2 cores) optimising
    the random-number code of the ~100 initialisers, which then runs once, for milliseconds.
    Level 1 compiles in a few seconds and gives the same bits (tests/test_models.py).
    """
    lowered = jax.jit(lambda r: model.init(r, jnp.zeros(input_shape, jnp.float32), train=False)).lower(rng)
    options = {"xla_backend_optimization_level": 1} if jax.default_backend() == "cpu" else None
    return lowered.compile(compiler_options=options)(rng)
