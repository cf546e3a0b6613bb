"""Images/s of the real training loop against the train step alone, for the host pipeline
and for device-resident data, on the DRIVE default recipe (``RunConfig()``).

    uv run python -m benchmarks.loop --data-dir /path/to/DRIVE --steps 200 --rounds 2

Modes, each timed in every round (rounds interleave the modes so machine noise hits all):

* ``step_alone``: the engine's data-parallel train step on one fixed device batch,
  dispatched back to back (no input, no logging), blocked once at the end;
* ``host_loop``: :func:`unet_jax.training.loop.fit` fed by the grain pipeline (patch
  sampling in a background thread, host-to-device copies, logging every 25 steps);
* ``device_loop_k1`` / ``device_loop_kK``: ``fit`` with the training set on the device,
  patches sampled in the step, 1 and K steps per dispatch.

``fit``'s own steady-state images/s is used for the loops (first, compiling step
excluded; no validation or checkpoints). Writes benchmarks/results/loop-<device>.json
(or --out): per-round figures, medians, and the ratios loop / step alone and device /
host.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np

from benchmarks.timing import device_slug, machine
from benchmarks.train_step import synthetic_batch
from unet_jax import data, losses
from unet_jax.config import RunConfig
from unet_jax.data.device_sampler import sampler_key
from unet_jax.training import parallel
from unet_jax.training.loop import fit
from unet_jax.training.run import initial_state, split_train_val, training_data, training_source


def step_alone(cfg: RunConfig, channels: int, steps: int) -> float:
    """Images/s of the train step on one fixed device batch, `steps` back-to-back dispatches."""
    mesh = parallel.make_data_mesh()
    step = parallel.TrainStep(losses.get_loss(cfg.train.loss), mesh)
    state = parallel.replicate(initial_state(cfg, channels, 2), mesh)
    batch = parallel.put_batch(synthetic_batch(cfg.train.batch_size, cfg.data.patch_size, channels),
                               parallel.data_sharding(mesh))
    state, m = step(state, batch)
    jax.block_until_ready(m)
    t = time.perf_counter()
    for _ in range(steps):
        state, m = step(state, batch)
    jax.block_until_ready((state, m))
    return steps * cfg.train.batch_size / (time.perf_counter() - t)


def loop(cfg: RunConfig, source: Any, channels: int) -> float:
    """Steady-state images/s of ``fit`` (host pipeline or device data, per ``cfg``)."""
    batches, sampler = training_data(cfg, source, cfg.train.batch_size)
    state = initial_state(cfg, channels, 2)
    if sampler is not None:
        state = state.replace(data_rng=sampler_key(cfg.train.seed))
    _, stats = fit(state, batches, cfg=cfg.train, loss_fn=losses.get_loss(cfg.train.loss), progress=False,
                   sampler=sampler)
    return stats.images_per_s


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", default=None, help="DRIVE folder; else $UNET_JAX_DRIVE_DIR, else ./data/DRIVE")
    p.add_argument("--tfds-dir", default=None)
    p.add_argument("--steps", type=int, default=200, help="steps per mode and round")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--k", type=int, default=25, help="steps per call of the last mode (must divide 25 and --steps)")
    p.add_argument("--out", default=None)
    a = p.parse_args(argv)

    base = RunConfig()
    dataset = data.get("drive", preprocess=base.data.preprocess, data_dir=a.data_dir, tfds_dir=a.tfds_dir)
    source = training_source(base, dataset, split_train_val(base, dataset.train())[0], progress=False)
    ch = dataset.channels

    def run_cfg(on_device: str, k: int = 1) -> RunConfig:
        train = dataclasses.replace(base.train, steps=a.steps, eval_every=a.steps, checkpoint_every=a.steps,
                                    steps_per_call=k)
        return dataclasses.replace(base, data=dataclasses.replace(base.data, on_device=on_device), train=train)

    modes = {
        "step_alone": lambda: step_alone(run_cfg("no"), ch, a.steps),
        "host_loop": lambda: loop(run_cfg("no"), source, ch),
        "device_loop_k1": lambda: loop(run_cfg("yes"), source, ch),
        f"device_loop_k{a.k}": lambda: loop(run_cfg("yes", a.k), source, ch),
    }
    per_round: dict[str, list[float]] = {m: [] for m in modes}
    t0 = time.perf_counter()
    for r in range(a.rounds):
        for name, fn in modes.items():
            per_round[name].append(fn())
            print(f"round {r + 1}: {name} {per_round[name][-1]:.1f} images/s", flush=True)
    med = {m: float(np.median(v)) for m, v in per_round.items()}
    result = {
        "benchmark": "loop", "machine": machine(), "recipe": "RunConfig() defaults (DRIVE, unet 16, 64x64, batch 32)",
        "steps_per_mode_and_round": a.steps, "rounds": a.rounds, "images_per_s_per_round": per_round,
        "images_per_s": med,
        "ratios": {
            "host_loop_over_step_alone": med["host_loop"] / med["step_alone"],
            "device_loop_k1_over_step_alone": med["device_loop_k1"] / med["step_alone"],
            f"device_loop_k{a.k}_over_step_alone": med[f"device_loop_k{a.k}"] / med["step_alone"],
            "device_k1_over_host": med["device_loop_k1"] / med["host_loop"],
            f"device_k{a.k}_over_host": med[f"device_loop_k{a.k}"] / med["host_loop"],
        },
        "wall_s": time.perf_counter() - t0,
    }
    print(json.dumps(result, indent=2))
    out = Path(a.out) if a.out else Path(__file__).parent / "results" / f"loop-{device_slug()}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
