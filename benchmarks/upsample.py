"""Transposed convolution vs its depth-to-space form, inside the full train step.

    uv run python -m benchmarks.upsample --arch unet --patch-size 64 --batch-size 32

The two `--upsample` implementations have the same parameters and compute the same
function (tests/test_upsample.py); this measures which is faster on this backend. The
two jitted steps are interleaved in rounds (so machine noise hits both), each blocking
on its result every step; medians, and the ratio taken within this one run. Writes
benchmarks/results/upsample_<device>.json (or --out).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import jax
import numpy as np

from benchmarks.train_step import setup

MODES = ("transpose", "depth_to_space")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="unet", choices=["unet", "attention_unet", "unetpp"])
    p.add_argument("--features", type=int, default=16)
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--patch-size", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps-per-round", type=int, default=6)
    p.add_argument("--out", default=None)
    a = p.parse_args()

    runs, compile_s, times = {}, {}, {m: [] for m in MODES}
    for mode in MODES:
        step, state, batch = setup(a.arch, a.features, a.depth, 1, a.patch_size, a.batch_size, upsample=mode)
        batch = jax.device_put(batch)
        t = time.perf_counter()
        state, m = step(state, batch)
        jax.block_until_ready(m)
        compile_s[mode] = time.perf_counter() - t
        runs[mode] = [step, state, batch]
    for _ in range(a.rounds):
        for mode in MODES:
            step, state, batch = runs[mode]
            for _ in range(a.steps_per_round):
                t = time.perf_counter()
                state, m = step(state, batch)
                jax.block_until_ready(m)
                times[mode].append(time.perf_counter() - t)
            runs[mode][1] = state
    med = {m: float(np.median(times[m])) for m in MODES}
    device = jax.devices()[0].device_kind
    result = {
        "arch": a.arch, "features": a.features, "depth": a.depth, "patch_size": a.patch_size,
        "batch_size": a.batch_size, "device": device, "jax": jax.__version__, "steps_timed_each": len(times[MODES[0]]),
        **{f"{m}_first_step_s": compile_s[m] for m in MODES},
        **{f"{m}_median_step_s": med[m] for m in MODES},
        **{f"{m}_images_per_s": a.batch_size / med[m] for m in MODES},
        "depth_to_space_speedup": med["transpose"] / med["depth_to_space"],
    }
    print(json.dumps(result, indent=2))
    out = Path(a.out) if a.out else Path(__file__).parent / "results" / f"upsample_{device.replace(' ', '_').lower()}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
