"""The training state pytree and the optimizer that updates it."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax import struct
from flax.training import train_state

from unet_jax.config import TrainConfig


class TrainState(train_state.TrainState):
    """flax's TrainState plus batch-norm running statistics (empty dict without BN);
    with device-resident data, the patch sampler's raw uint32 key (None otherwise): in the
    state, so it is checkpointed with the weights and a resumed run draws the same patches;
    and with ``ema_decay > 0`` an exponential moving average of the weights, ``ema``
    (``{"params", "batch_stats"}``; None otherwise), which evaluation uses instead of the
    live weights (:meth:`eval_variables`)."""

    batch_stats: Any = None
    data_rng: Any = None
    ema: Any = None
    ema_decay: float = struct.field(pytree_node=False, default=0.0)

    @classmethod
    def create(cls, *, params: Any, batch_stats: Any = None, ema_decay: float = 0.0, **kwargs: Any) -> "TrainState":
        """flax's ``create``; with ``ema_decay > 0`` the moving average starts as a copy of
        `params` and `batch_stats` (so an average is kept exactly when a decay is set)."""
        # A copy: the train step donates the state, and one buffer cannot be donated twice.
        ema = jax.tree.map(jnp.copy, {"params": params, "batch_stats": batch_stats}) if ema_decay > 0 else None
        return super().create(params=params, batch_stats=batch_stats, ema=ema, ema_decay=ema_decay, **kwargs)

    def apply_gradients(self, *, grads: Any, **kwargs: Any) -> "TrainState":
        """flax's update, then the average: ``ema <- d_t * ema + (1 - d_t) * new``, with
        ``d_t = min(ema_decay, (1 + t) / (10 + t))`` at the new step ``t`` (TensorFlow's
        ``ExponentialMovingAverage`` with ``num_updates``), so the first steps do not keep
        the random initial weights in the average for thousands of steps."""
        new = super().apply_gradients(grads=grads, **kwargs)
        if self.ema is None:
            return new
        decay = jnp.minimum(self.ema_decay, (1.0 + new.step) / (10.0 + new.step))
        live = {"params": new.params, "batch_stats": new.batch_stats}
        return new.replace(ema=optax.incremental_update(live, self.ema, 1.0 - decay))

    def eval_variables(self) -> dict[str, Any]:
        """The variables evaluation applies: the moving average when kept, else the live weights."""
        if self.ema is not None:
            return self.ema
        return {"params": self.params, "batch_stats": self.batch_stats}


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
    """Initialises parameters on a dummy batch of `input_shape` (N, H, W, C); with
    ``cfg.ema_decay > 0`` the moving average starts as a copy of them."""
    variables = init_variables(model, input_shape, rng)
    return TrainState.create(
        apply_fn=model.apply,
        params=variables["params"],
        tx=make_optimizer(cfg),
        batch_stats=variables.get("batch_stats", {}),
        ema_decay=cfg.ema_decay,
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
