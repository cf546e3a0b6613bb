"""Layer implementations of the same network inside the full train step: the transposed
convolution vs its depth-to-space form, and 2x2 max pooling as reduce_window vs reshape.

    uv run python -m benchmarks.upsample --arch unet --points 32x64          # the DRIVE default recipe
    uv run python -m benchmarks.upsample --points 32x64,32x256,8x512 --precision fp32 bf16   # a GPU sweep
    uv run python -m benchmarks.upsample --points 32x256 --pool window reshape   # upsampling x pooling

The `--upsample` implementations have the same parameters and compute the same function
(tests/test_upsample.py), as do the `--pool` ones (tests/test_models.py); this measures
which is faster on this backend, for each batch x size point and precision. Every
combination of the `--upsample` and `--pool` modes given is one jitted step; at each point
they are interleaved in rounds (so machine noise hits all), each blocking on its result
every step; medians, and each one's speed-up over the first combination (the library
default) taken within this one run. Writes benchmarks/results/upsample_<device>.json
(or --out): one row per point and precision.
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

import jax

from benchmarks.step_time import parse_points
from benchmarks.timing import device_slug, first_call_s, interleaved_medians, machine
from benchmarks.train_step import compute_dtype, setup
from unet_jax.config import POOL_MODES, UPSAMPLE_MODES


def compare(arch: str, features: int, depth: int, batch_size: int, patch_size: int, precision: str, *,
            variants: list[tuple[str, str]], steps: int, rounds: int) -> dict:
    """The train steps of every (upsample, pool) variant at one point, interleaved; medians, speed-ups."""
    dtype = compute_dtype(precision)
    runners, compile_s = {}, {}
    for upsample, pool in variants:
        name = f"{upsample}+{pool}"
        step, state, batch = setup(arch, features, depth, 1, patch_size, batch_size, upsample=upsample, dtype=dtype,
                                   pool=pool)
        held = {"state": state, "batch": jax.device_put(batch)}

        def run(step=step, held=held):  # the step donates its state: keep the new one
            held["state"], m = step(held["state"], held["batch"])
            jax.block_until_ready(m)

        compile_s[name] = first_call_s(run)
        runners[name] = run
    med = interleaved_medians(runners, steps=steps, warmup=1, rounds=rounds)
    base = next(iter(med))
    return {
        "batch_size": batch_size, "patch_size": patch_size, "precision": precision,
        "steps_timed_each": med[base]["calls"], "baseline": base,
        "variants": {name: {"first_step_s": compile_s[name], "median_step_s": r["median_s"],
                            "images_per_s": batch_size / r["median_s"],
                            "speedup": med[base]["median_s"] / r["median_s"]} for name, r in med.items()},
    }


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="unet", choices=["unet", "attention_unet", "unetpp"])
    p.add_argument("--features", type=int, default=16)
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--points", default="32x64", help="BATCHxSIZE,... (default: the DRIVE recipe's batch 32 of 64x64)")
    p.add_argument("--precision", nargs="+", choices=["fp32", "bf16"], default=["fp32"])
    p.add_argument("--upsample", nargs="+", choices=[m for m in UPSAMPLE_MODES if m != "auto"],
                   default=["transpose", "depth_to_space"], help="upsampling modes (the first is the baseline)")
    p.add_argument("--pool", nargs="+", choices=POOL_MODES, default=["window"],
                   help="pooling modes (the first is the baseline)")
    p.add_argument("--steps", type=int, default=30, help="timed steps per implementation and point")
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds the timed steps are split into")
    p.add_argument("--out", default=None)
    a = p.parse_args(argv)
    try:
        points = parse_points(a.points)
    except ValueError:
        p.error(f"--points {a.points!r}: expected BATCHxSIZE[,BATCHxSIZE...], e.g. 32x64,8x512")

    result = {"arch": a.arch, "features": a.features, "depth": a.depth, "machine": machine(), "rows": []}
    out = Path(a.out) if a.out else Path(__file__).parent / "results" / f"upsample_{device_slug()}.json"
    for batch_size, size in points:
        for precision in a.precision:
            row = compare(a.arch, a.features, a.depth, batch_size, size, precision, steps=a.steps, rounds=a.rounds,
                          variants=list(itertools.product(a.upsample, a.pool)))
            print(json.dumps(row), flush=True)
            result["rows"].append(row)
            out.write_text(json.dumps(result, indent=2) + "\n")  # after every row: a sweep cut short keeps them
    print(f"wrote {out}")
    return result


if __name__ == "__main__":
    main()
