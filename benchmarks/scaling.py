"""Data-parallel train-step images/s on 1, 2, 4 (forced) CPU devices, and fp32 vs bf16.

    uv run python -m benchmarks.scaling                      # 1 2 4 devices fp32, 1 device bf16
    uv run python -m benchmarks.scaling --devices 1 --precisions fp32 bf16

Each (devices, precision) pair runs in its own subprocess with
XLA_FLAGS=--xla_force_host_platform_device_count=N, since JAX fixes the device count when
it starts. The step is the data-parallel one `experiments.drive` trains with
(`unet_jax.training.parallel.TrainStep`, synced batch norm), at the same global batch
(default 32), patch 64, U-Net features 16, depth 4. Forced CPU devices share the same
cores, so this measures the overhead of the sharded step rather than a speed-up; on a
multi-GPU host the same code splits the batch over real devices. Results are merged
into benchmarks/results/scaling_cpu.json (one entry per pair).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

OUT = Path(__file__).parent / "results" / "scaling_cpu.json"


def worker(devices: int, precision: str, features: int, depth: int, patch: int, batch: int, steps: int) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np

    from unet_jax import losses, models
    from unet_jax.config import TrainConfig
    from unet_jax.training import parallel
    from unet_jax.training.state import create_train_state

    assert jax.device_count() == devices, jax.devices()
    mesh = parallel.make_data_mesh()
    parallel.check_batch_size(batch, mesh)
    model = models.create("unet", features=features, depth=depth, in_channels=1,
                          bn_axis_name=parallel.DATA if devices > 1 else None,
                          dtype=jnp.bfloat16 if precision == "bf16" else None)
    cfg = TrainConfig(steps=steps + 2, batch_size=batch)
    state = parallel.replicate(create_train_state(model, cfg, (1, patch, patch, 1), jax.random.key(0)), mesh)
    rng = np.random.default_rng(0)
    shape = (batch, patch, patch)
    batch_arrays = parallel.put_batch({
        "image": rng.random(shape + (1,), np.float32),
        "label": (rng.random(shape + (1,)) < 0.12).astype(np.float32),
        "mask": np.ones(shape + (1,), np.float32),
    }, parallel.data_sharding(mesh))
    step = parallel.TrainStep(losses.get_loss("bce_dice"), mesh)
    t = time.perf_counter()
    state, m = step(state, batch_arrays)
    jax.block_until_ready(m)
    first = time.perf_counter() - t
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        state, m = step(state, batch_arrays)
        jax.block_until_ready(m)
        times.append(time.perf_counter() - t)
    med = float(np.median(times))
    return {"devices": devices, "precision": precision, "features": features, "depth": depth, "patch_size": patch,
            "global_batch": batch, "per_device_batch": batch // devices, "steps_timed": steps,
            "first_step_s": first, "median_step_s": med, "images_per_s": batch / med,
            "compiles": step.traces, "device_kind": jax.devices()[0].device_kind}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--devices", type=int, nargs="+", default=[1, 2, 4])
    p.add_argument("--precisions", nargs="+", default=["fp32"], choices=["fp32", "bf16"])
    p.add_argument("--bf16-devices", type=int, nargs="*", default=[1],
                   help="device counts also measured in bf16 (in addition to --precisions)")
    p.add_argument("--features", type=int, default=16)
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--patch-size", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--out", default=str(OUT))
    p.add_argument("--worker", nargs=2, metavar=("DEVICES", "PRECISION"), help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.worker:
        r = worker(int(a.worker[0]), a.worker[1], a.features, a.depth, a.patch_size, a.batch_size, a.steps)
        print("RESULT " + json.dumps(r), flush=True)
        return

    pairs = [(n, prec) for prec in a.precisions for n in a.devices]
    pairs += [(n, "bf16") for n in a.bf16_devices if (n, "bf16") not in pairs]
    out = Path(a.out)
    merged = json.loads(out.read_text()) if out.exists() else {}
    runs = merged.get("runs", {})
    for n, prec in pairs:
        env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={n}", JAX_PLATFORMS="cpu")
        cmd = [sys.executable, "-m", "benchmarks.scaling", "--worker", str(n), prec, "--features", str(a.features),
               "--depth", str(a.depth), "--patch-size", str(a.patch_size), "--batch-size", str(a.batch_size),
               "--steps", str(a.steps)]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=Path(__file__).parents[1])
        lines = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
        if proc.returncode or not lines:
            raise SystemExit(f"{n} devices {prec} failed:\n{proc.stderr[-3000:]}")
        r = json.loads(lines[-1][len("RESULT "):])
        runs[f"{n}dev-{prec}"] = r
        print(f"{n} device(s) {prec}: {r['images_per_s']:.1f} images/s (median step {r['median_step_s'] * 1e3:.0f} ms, "
              f"first step {r['first_step_s']:.1f}s)", flush=True)
    import jax

    merged.update({
        "runs": dict(sorted(runs.items())),
        "note": "forced host-platform CPU devices share the machine's cores: this shows the cost of the "
                "data-parallel step (all-gathered logits, synced batch norm, gradient all-reduce), not a speed-up. "
                "bf16 on CPU is usually slower (no native bf16 convolutions).",
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "jax": jax.__version__,
    })
    base = runs.get("1dev-fp32")
    if base:
        merged["relative_to_1dev_fp32"] = {k: r["images_per_s"] / base["images_per_s"] for k, r in merged["runs"].items()}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(merged, indent=2) + "\n")


if __name__ == "__main__":
    main()
