"""Mixed precision: bf16 compute trains, and parameters, optimizer state and loss stay float32."""

import jax
import jax.numpy as jnp
import numpy as np

from unet_jax import losses, models
from unet_jax.config import TrainConfig
from unet_jax.training.loop import fit
from unet_jax.training.state import create_train_state


class _Records:
    def __init__(self):
        self.records = []

    def write(self, record):
        self.records.append(record)

    def image(self, *args):
        pass


def test_bf16_trains_with_float32_state():
    cfg = TrainConfig(steps=20, batch_size=8, warmup_steps=3, lr=1e-2, log_every=1, eval_every=10**6)
    model = models.create("unet", features=4, depth=1, in_channels=1, dtype=jnp.bfloat16)
    state = create_train_state(model, cfg, (1, 16, 16, 1), jax.random.key(0))
    rng = np.random.default_rng(0)
    batches = []
    for _ in range(cfg.steps):
        image = rng.random((8, 16, 16, 1), np.float32)
        batches.append({"image": image, "label": (image > 0.6).astype(np.float32), "mask": np.ones_like(image)})

    # The network really computes in bfloat16: its output differs from the float32 network's
    # (same parameters) by bf16 rounding, yet is returned as float32.
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    out16 = jax.jit(model.apply)(variables, batches[0]["image"])
    out32 = jax.jit(models.create("unet", features=4, depth=1, in_channels=1).apply)(variables, batches[0]["image"])
    assert out16.dtype == jnp.float32
    assert 0 < float(jnp.max(jnp.abs(out16 - out32))) < 0.1

    rec = _Records()
    state, stats = fit(state, iter(batches), cfg=cfg, loss_fn=losses.bce_dice_loss, recorder=rec, progress=False)
    loss = [r["loss"] for r in rec.records if r["split"] == "train"]
    assert len(loss) == cfg.steps and all(np.isfinite(loss))
    assert np.mean(loss[-5:]) < 0.8 * np.mean(loss[:5])  # it learns
    for tree in (state.params, state.opt_state, state.batch_stats):
        floats = [x for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.floating)]
        assert floats and all(x.dtype == jnp.float32 for x in floats)
    assert stats.step_traces == 1
