"""Patches/s the grain input pipeline produces, next to what the train step consumes.

    uv run python -m benchmarks.pipeline                       # workers 0 1 2 4, patch 64, batch 32
    uv run python -m benchmarks.pipeline --workers 0 2 --seconds 3

Uses the training images of real DRIVE when found (--data-dir, else $UNET_JAX_DRIVE_DIR,
else /work/shared/data/DRIVE, else ./data/DRIVE), preprocessed like `experiments.drive`
(green channel, CLAHE), otherwise the synthetic generator (labelled as such in the output).
The pipeline is the one the training engine reads (`unet_jax.data.make_train_iterator` over
the preprocessed images held in memory: random patches, flips/rot90, intensity jitter, batched); workers=0 is grain's in-process prefetch thread,
N>0 adds N `mp_prefetch` worker processes. The consumer only pulls batches, so the rate
is the pipeline's ceiling. The train step's rate is `benchmarks.train_step.measure` (the
jitted step alone, same patch size and batch). Writes benchmarks/results/pipeline_cpu.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

OUT = Path(__file__).parent / "results" / "pipeline_cpu.json"


def _train_set(data_dir: str | None, channels: str = "green"):
    """(the preprocessed DRIVE training images in memory, source label); synthetic when DRIVE is absent."""
    from unet_jax import data
    from unet_jax.config import PreprocessConfig

    pre = PreprocessConfig(channels=channels)
    candidates = [data_dir, os.environ.get("UNET_JAX_DRIVE_DIR"), "/work/shared/data/DRIVE", "data/DRIVE"]
    found = next((c for c in candidates if c and (Path(c) / "training").is_dir()), None)
    dataset = data.get("drive", data_dir=found, preprocess=pre) if found else data.get("synthetic", preprocess=pre)
    train = dataset.train()
    source = data.InMemorySource([dataset.preprocess(train[i]) for i in range(len(train))])
    label = f"DRIVE ({found}, 20 training images)" if found else "SYNTHETIC (DRIVE not found; 20 generated 584x565 images)"
    return source, label


def measure_pipeline(train_set, *, workers: int, patch_size: int, batch_size: int, seconds: float) -> dict:
    from unet_jax.data import make_train_iterator

    t0 = time.perf_counter()
    it = iter(make_train_iterator(train_set, patch_size=patch_size, batch_size=batch_size, worker_count=workers))
    b = next(it)  # starts the workers / prefetch thread
    startup = time.perf_counter() - t0
    assert b["image"].shape == (batch_size, patch_size, patch_size, train_set[0].image.shape[-1])
    for _ in range(5):  # fill the buffers' steady state
        next(it)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        next(it)
        n += 1
    dt = time.perf_counter() - t0
    if hasattr(it, "close"):
        it.close()
    return {"workers": workers, "batches": n, "seconds": dt, "batches_per_s": n / dt,
            "patches_per_s": n * batch_size / dt, "startup_s": startup}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", default=None)
    p.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2, 4])
    p.add_argument("--patch-size", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--features", type=int, default=16, help="model width for the train-step rate")
    p.add_argument("--seconds", type=float, default=4.0, help="timed seconds per worker count")
    p.add_argument("--step-steps", type=int, default=10, help="timed train steps")
    p.add_argument("--out", default=str(OUT))
    a = p.parse_args()

    import jax

    from benchmarks.train_step import measure

    train_set, source = _train_set(a.data_dir)
    rows = []
    for w in a.workers:
        r = measure_pipeline(train_set, workers=w, patch_size=a.patch_size, batch_size=a.batch_size, seconds=a.seconds)
        print(f"workers={w}: {r['patches_per_s']:.0f} patches/s ({r['batches_per_s']:.1f} batches/s; "
              f"startup {r['startup_s']:.1f}s)", flush=True)
        rows.append(r)
    step = measure(features=a.features, channels=train_set[0].image.shape[-1], patch_size=a.patch_size,
                   batch_size=a.batch_size, steps=a.step_steps)
    print(f"train step alone: {step['images_per_s']:.1f} images/s (median of {a.step_steps} steps)", flush=True)
    best = max(rows, key=lambda r: r["patches_per_s"])
    slowest = min(rows, key=lambda r: r["patches_per_s"])
    result = {
        "source": source,
        "patch_size": a.patch_size,
        "batch_size": a.batch_size,
        "pipeline": rows,
        "train_step": step,
        "pipeline_over_step_min": slowest["patches_per_s"] / step["images_per_s"],
        "bottleneck": ("train step" if slowest["patches_per_s"] > step["images_per_s"] else
                       "input pipeline (for some worker counts)" if best["patches_per_s"] > step["images_per_s"]
                       else "input pipeline"),
        "note": "pipeline measured alone (the consumer only pulls batches); during training the pipeline "
                "and the step share the same CPU cores, so both rates drop when run together",
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "jax": jax.__version__,
    }
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k not in ("pipeline", "train_step")}, indent=2))


if __name__ == "__main__":
    main()
