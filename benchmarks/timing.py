"""Shared timing helpers of the benchmarks: interleaved medians, matmul peak, machine facts."""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np


def timed_call(fn: Callable[[], object]) -> tuple[float, object]:
    """``(seconds, output)`` of one call of `fn`, its output synchronised."""
    t = time.perf_counter()
    out = jax.block_until_ready(fn())
    return time.perf_counter() - t, out


def first_call_s(fn: Callable[[], object]) -> float:
    """Seconds of one call of `fn`: compile or warm-up time."""
    return timed_call(fn)[0]


def interleaved_medians(runners: dict[str, Callable[[], object]], *, steps: int, warmup: int,
                        rounds: int = 4) -> dict[str, dict[str, float]]:
    """Median seconds per call of each synchronising runner, timed in interleaved rounds.

    Every runner gets `warmup` untimed calls, then `steps` timed calls split into `rounds`
    rounds that alternate between runners, so machine noise (shared cores, clocks) hits
    all of them alike. Returns name -> {median_s, p10_s, p90_s, calls}.
    """
    for fn in runners.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {k: [] for k in runners}
    per_round = [steps // rounds + (1 if r < steps % rounds else 0) for r in range(rounds)]
    for n in per_round:
        for name, fn in runners.items():
            for _ in range(n):
                t = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t)
    return {k: {"median_s": float(np.median(v)), "p10_s": float(np.percentile(v, 10)),
                "p90_s": float(np.percentile(v, 90)), "calls": len(v)} for k, v in times.items()}


def matmul_peak_tflops(dtype: str, n: int | None = None, calls: int = 10) -> dict[str, float]:
    """Achieved TFLOP/s of an n x n x n JAX matmul in `dtype` ("bf16" or "fp32"): the
    device's practical peak for that dtype (median of `calls` synchronised products).

    n defaults to 8192 on accelerators and 2048 on CPU (large enough to be compute
    bound there, small enough to take about a second). fp32 runs at JAX's default matmul
    precision (TF32 on NVIDIA GPUs that have it).
    """
    on_cpu = jax.devices()[0].platform == "cpu"
    n = n or (2048 if on_cpu else 8192)
    dt = jnp.bfloat16 if dtype == "bf16" else jnp.float32
    ka, kb = jax.random.split(jax.random.key(0))
    a, b = jax.random.normal(ka, (n, n), dt), jax.random.normal(kb, (n, n), dt)
    mm = jax.jit(jnp.matmul)
    jax.block_until_ready(mm(a, b))
    med = interleaved_medians({"mm": lambda: jax.block_until_ready(mm(a, b))}, steps=calls, warmup=1, rounds=1)
    s = med["mm"]["median_s"]
    return {"n": n, "median_s": s, "tflops": 2 * n**3 / s / 1e12}


def cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def machine() -> dict[str, object]:
    """Facts that decide the numbers: device, CPU, vector extensions, core count, versions."""
    flags = ""
    try:
        flags = next(line for line in open("/proc/cpuinfo") if line.startswith("flags"))
    except (OSError, StopIteration):
        pass
    return {
        "device": str(jax.devices()[0].device_kind), "platform": jax.devices()[0].platform,
        "cpu": cpu_model(), "cpus_visible": os.cpu_count(), "avx512": "avx512f" in flags,
        "avx2": "avx2" in flags, "jax": jax.__version__, "python": platform.python_version(),
    }


def device_slug() -> str:
    """File-name form of the device kind ("cpu", "nvidia_h100_80gb_hbm3", ...)."""
    kind = str(jax.devices()[0].device_kind).lower()
    return "".join(c if c.isalnum() else "_" for c in kind).strip("_")
