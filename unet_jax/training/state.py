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
    spends seconds optimising the random-number code of the initialisers, which then runs
    once, for milliseconds (a 16-feature U-Net on an idle 2-core CPU: 9.1 s, at level 1
    3.1 s; benchmarks/init_compile.py). The bits are the same (tests/test_models.py).
    """
    # Under a transformation (jax.eval_shape of a state template, an outer jit) nothing is
    # compiled here, and jax accepts compiler options on the outermost jit only.
    traced = isinstance(jnp.zeros(()), jax.core.Tracer)  # every op is staged while tracing
    options = {"xla_backend_optimization_level": 1} if jax.default_backend() == "cpu" and not traced else None
    init = jax.jit(lambda r: model.init(r, jnp.zeros(input_shape, jnp.float32), train=False), compiler_options=options)
    return init(rng)
