"""Images/s of the jitted train step alone (no input pipeline), and its compile time.

    uv run python -m benchmarks.train_step --features 16 --patch-size 64 --batch-size 32

Feeds the same device-resident batch every step, blocks on every result, reports the
median of per-step times after warm-up. Writes JSON to --out if given.
"""

from __future__ import annotations

import argparse
import functools
import json
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np

from unet_jax import losses, models
from unet_jax.config import UPSAMPLE_MODES, TrainConfig
from unet_jax.training.state import create_train_state
from unet_jax.training.steps import train_step


def model_kwargs(arch: str, features: int = 16, depth: int = 4, channels: int = 1,
                 upsample: str = "auto", pool: str = "window") -> dict:
    """`models.create` keyword arguments (fixed-width networks, resunet34, take no width/depth)."""
    cfg = {"in_channels": channels, "out_channels": 1}
    if "features" in models.options(arch):
        cfg.update(features=features, depth=depth, upsample=upsample, pool=pool)
    return cfg


def synthetic_batch(batch_size: int, patch_size: int, channels: int = 1, seed: int = 0) -> dict[str, np.ndarray]:
    """A float32 batch: uniform images, ~12% foreground labels, an all-ones mask."""
    rng = np.random.default_rng(seed)
    shape = (batch_size, patch_size, patch_size)
    return {
        "image": rng.random(shape + (channels,), np.float32),
        "label": (rng.random(shape + (1,)) < 0.12).astype(np.float32),
        "mask": np.ones(shape + (1,), np.float32),
    }


def compute_dtype(precision: str):
    """The model's computation dtype for a benchmark precision ("bf16": bfloat16, else float32)."""
    return jnp.bfloat16 if precision == "bf16" else None


def setup(arch="unet", features=16, depth=4, channels=1, patch_size=64, batch_size=32, loss="bce_dice",
          upsample="auto", dtype=None, pool="window"):
    """(jitted step donating its state, state, host batch) for a synthetic batch with ~12% foreground.

    `dtype` is the model's computation dtype (None: float32; jnp.bfloat16: the engine's
    bf16 policy, float32 parameters and loss).
    """
    model = models.create(arch, dtype=dtype, **model_kwargs(arch, features, depth, channels, upsample, pool))
    state = create_train_state(model, TrainConfig(), (1, patch_size, patch_size, channels), jax.random.key(0))
    step = jax.jit(functools.partial(train_step, loss_fn=losses.get_loss(loss)), donate_argnums=0)
    return step, state, synthetic_batch(batch_size, patch_size, channels)


def measure(arch="unet", features=16, depth=4, channels=1, patch_size=64, batch_size=32, steps=30, loss="bce_dice",
            upsample="auto"):
    step, state, batch = setup(arch, features, depth, channels, patch_size, batch_size, loss, upsample)
    batch = jax.device_put(batch)
    t = time.perf_counter()
    state, m = step(state, batch)
    jax.block_until_ready(m)
    first = time.perf_counter() - t
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        state, m = step(state, batch)
        jax.block_until_ready(m)
        times.append(time.perf_counter() - t)
    med = float(np.median(times))
    return {
        "arch": arch, "features": features, "depth": depth, "upsample": upsample, "channels": channels,
        "patch_size": patch_size,
        "batch_size": batch_size, "steps_timed": steps, "first_step_s": first, "median_step_s": med,
        "images_per_s": batch_size / med, "device": jax.devices()[0].device_kind, "num_cpus_visible": __import__("os").cpu_count(),
        "jax": jax.__version__, "machine": platform.machine(),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="unet")
    p.add_argument("--features", type=int, default=16)
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--channels", type=int, default=1)
    p.add_argument("--patch-size", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--upsample", choices=UPSAMPLE_MODES, default="auto")
    p.add_argument("--out", default=None)
    a = p.parse_args()
    r = measure(a.arch, a.features, a.depth, a.channels, a.patch_size, a.batch_size, a.steps, upsample=a.upsample)
    print(json.dumps(r, indent=2))
    if a.out:
        with open(a.out, "w") as f:
            json.dump(r, f, indent=2)


if __name__ == "__main__":
    main()
