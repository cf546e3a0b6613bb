"""Multi-device runs for tests/test_parallel.py, in a subprocess of its own.

    python tests/_parallel_worker.py OUT_DIR NUM_DEVICES

JAX fixes its CPU device count when it initialises, so forcing several host devices
(XLA_FLAGS=--xla_force_host_platform_device_count=N) needs a fresh process. The
one-device references run in the same process on a mesh of its first device (sharing
the initial state, whose compilation dominates the cost).
"""

from __future__ import annotations

import os
import sys

STEPS, BATCH, PATCH = 20, 8, 16


def setup(bn_axis_name=None):
    """(cfg, state, batches) of a tiny U-Net and 20 fixed random batches (same on every call)."""
    import jax
    import numpy as np

    from unet_jax import models
    from unet_jax.config import TrainConfig
    from unet_jax.training.state import create_train_state

    # With a moving average of the weights, so the sharded steps are checked to keep it too.
    cfg = TrainConfig(steps=STEPS, batch_size=BATCH, warmup_steps=2, log_every=10, eval_every=10**6, ema_decay=0.9)
    model = models.create("unet", features=4, depth=2, in_channels=1, bn_axis_name=bn_axis_name)
    state = create_train_state(model, cfg, (1, PATCH, PATCH, 1), jax.random.key(0))
    rng = np.random.default_rng(0)
    batches = []
    for _ in range(STEPS):
        image = rng.random((BATCH, PATCH, PATCH, 1), np.float32)
        batches.append({
            "image": image,
            "label": (image > 0.6).astype(np.float32),
            # Uneven masks: the masked losses then depend on how pixels spread over devices.
            "mask": (rng.random((BATCH, PATCH, PATCH, 1)) < 0.8).astype(np.float32),
        })
    return cfg, state, batches


def train(state, batches, cfg, mesh):
    """fit() over `batches`; returns (flat float64 vector of params, batch stats and their
    moving average, FitStats)."""
    import jax
    import numpy as np

    from unet_jax import losses
    from unet_jax.training.loop import fit

    state, stats = fit(state, iter(batches), cfg=cfg, loss_fn=losses.bce_dice_loss, progress=False, mesh=mesh)
    leaves = jax.tree.leaves(jax.device_get((state.params, state.batch_stats, state.ema)))
    return np.concatenate([np.ravel(x).astype(np.float64) for x in leaves]), stats


def train_on_device(state, cfg, mesh):
    """fit() with device-resident data (4 random 40x40 images), 2 steps per call; as `train`."""
    import dataclasses

    import jax
    import numpy as np

    from unet_jax import losses
    from unet_jax.data.base import Example, InMemorySource
    from unet_jax.data.device_sampler import DeviceSampler, prepare_device_data, sampler_key
    from unet_jax.training.loop import fit

    rng = np.random.default_rng(1)
    examples = []
    for i in range(4):
        image = rng.random((40, 40, 1), np.float32)
        examples.append(Example(str(i), image, (image[..., 0] > 0.6).astype(np.uint8),
                                (rng.random((40, 40)) < 0.9).astype(np.uint8)))
    data = prepare_device_data(InMemorySource(examples), PATCH)
    cfg = dataclasses.replace(cfg, steps_per_call=2)
    state, stats = fit(state.replace(data_rng=sampler_key(0)), data, cfg=cfg, loss_fn=losses.bce_dice_loss,
                       progress=False, mesh=mesh, sampler=DeviceSampler(patch_size=PATCH, foreground_bias=0.5))
    leaves = jax.tree.leaves(jax.device_get((state.params, state.batch_stats, state.ema)))
    return np.concatenate([np.ravel(x).astype(np.float64) for x in leaves]), stats


def main(out_dir: str, n: int) -> None:
    import contextlib
    import functools
    import io
    import json

    import jax
    import numpy as np

    from unet_jax import losses, models
    from unet_jax.training import parallel
    from unet_jax.training.steps import train_step

    assert jax.device_count() == n, jax.devices()
    mesh = parallel.make_data_mesh()
    cfg, state, batches = setup()
    # Same initial parameters; only the batch-norm axis differs (apply_fn is static).
    synced = state.replace(apply_fn=models.create("unet", features=4, depth=2, in_channels=1,
                                                  bn_axis_name=parallel.DATA).apply)
    p_sync, s_sync = train(synced, batches, cfg, mesh)  # fit copies the state: `state` stays valid
    p_local, _ = train(state, batches, cfg, mesh)
    p_one, s_one = train(state, batches, cfg, parallel.make_data_mesh(jax.devices()[:1]))
    p_dev_sync, s_dev = train_on_device(synced, cfg, mesh)
    p_dev_one, _ = train_on_device(state, cfg, parallel.make_data_mesh(jax.devices()[:1]))
    # The plain single-device step (no mesh, no shard_map) on the first device.
    step = jax.jit(functools.partial(train_step, loss_fn=losses.bce_dice_loss))
    for b in batches:
        state, _ = step(state, b)
    leaves = jax.tree.leaves(jax.device_get((state.params, state.batch_stats, state.ema)))
    p_plain = np.concatenate([np.ravel(x).astype(np.float64) for x in leaves])

    facts = {"devices": n, "traces": s_sync.step_traces, "cache_size": s_sync.step_cache_size,
             "traces_one": s_one.step_traces, "cache_size_one": s_one.step_cache_size,
             "traces_device": s_dev.step_traces, "cache_size_device": s_dev.step_cache_size}
    try:
        train(state, [{k: v[:6] for k, v in b.items()} for b in batches], cfg.__class__(steps=2, batch_size=6), mesh)
    except ValueError as e:
        facts["fit_error"] = str(e)
    from experiments import drive

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        facts["cli_rc"] = drive.main(["--synthetic", "--batch-size", "6", "--no-progress",
                                      "--workdir", os.path.join(out_dir, "never")])
    facts["cli_err"] = err.getvalue()
    facts["cli_workdir_created"] = os.path.exists(os.path.join(out_dir, "never"))
    np.savez(os.path.join(out_dir, "params.npz"), sync=p_sync, local=p_local, one=p_one, plain=p_plain,
             device_sync=p_dev_sync, device_one=p_dev_one)
    with open(os.path.join(out_dir, "facts.json"), "w") as f:
        json.dump(facts, f)


if __name__ == "__main__":
    out, num = sys.argv[1], int(sys.argv[2])
    # Optimisation level 1 compiles the six training programs in 4/5 of the time; every
    # comparison here is between programs compiled alike.
    os.environ["XLA_FLAGS"] = (f"--xla_force_host_platform_device_count={num} --xla_backend_optimization_level=1 "
                               + os.environ.get("XLA_FLAGS", ""))
    os.environ["JAX_PLATFORMS"] = "cpu"
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    main(out, num)
