"""Where a training step's time goes: the dearest operations of the JAX step and of its PyTorch twin.

    uv run python -m benchmarks.profile_step --arch unet --batch-size 32 --image-size 256 --precision fp32

`benchmarks.step_time` says which framework is faster; this says why. Both steps are the
ones step_time times (the engine's jitted ``train_step`` with donation; the twin in eager
mode, ``channels_last``, AdamW, autocast for bf16), on the same synthetic batch:

* JAX: ``jax.profiler.trace`` over `--steps` synchronised steps, read back with
  ``jax.profiler.ProfileData``. On a GPU the kernels on the device's stream lines, on a
  CPU the XLA thunks on the host lines, are grouped by the HLO instruction they run
  (``hlo_op``), with the JAX operation that produced it (``tf_op``, e.g.
  ``.../select_and_scatter_add``): the ``op_name`` of the instruction in the compiled HLO,
  else what the profiler records (on a GPU with jax 0.11 that is only "XlaModule:"). The
  optimised HLO of the step is written next to the JSON (``<out>.hlo.txt.gz``) to look an
  instruction up.
* PyTorch: ``torch.profiler`` over `--steps` steps, ``key_averages()`` by self device
  time (CPU time on a CPU).

Writes JSON (--out): per framework the profiled time per step and the `--top` dearest
operations (milliseconds and calls per step, share of the profiled time); JAX's are also
summed by operation kind (the last part of ``tf_op``, else the HLO opcode).
"""

from __future__ import annotations

import argparse
import glob
import gzip
import json
import os
import re
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Any

import jax

from benchmarks.timing import machine
from benchmarks.train_step import compute_dtype, setup


def jax_profile(arch: str, batch: int, size: int, precision: str, *, features: int = 16, depth: int = 4,
                steps: int = 10, top: int = 30, hlo_out: Path | None = None) -> dict[str, Any]:
    """Profile `steps` JAX train steps; the dearest HLO instructions per step."""
    step, state, host_batch = setup(arch, features, depth, 1, size, batch, dtype=compute_dtype(precision))
    dev_batch = jax.device_put(host_batch)
    compiled = step.lower(state, dev_batch).compile()
    hlo = compiled.as_text()
    if hlo_out is not None:
        with gzip.open(hlo_out, "wt") as f:
            f.write(hlo)
    for _ in range(3):  # warm up (autotuning, allocator)
        state, m = compiled(state, dev_batch)
        jax.block_until_ready(m)
    with tempfile.TemporaryDirectory() as tmp:
        with jax.profiler.trace(tmp):
            for _ in range(steps):
                state, m = compiled(state, dev_batch)
                jax.block_until_ready(m)
        (path,) = glob.glob(f"{tmp}/**/*.xplane.pb", recursive=True)
        ops, on_device = _ops_from_xspace(path)
    source = "jax.profiler (device kernels by hlo_op)" if on_device else "jax.profiler (host XLA thunks by hlo_op)"
    return {"source": source, **summarize(ops, steps, top, hlo_index(hlo))}


def _ops_from_xspace(path: str) -> tuple[dict[str, list], bool]:
    """hlo_op (else kernel name) -> [total ns, calls, tf_op, an example kernel name] from a
    profile file, and whether they are device kernels (else host XLA thunks)."""
    from jax.profiler import ProfileData

    planes = list(ProfileData.from_file(path).planes)
    device = [p for p in planes if p.name.startswith("/device:")]
    ops: dict[str, list] = defaultdict(lambda: [0.0, 0, "", ""])
    for plane in device or planes:
        lines = list(plane.lines)
        if device:
            # A GPU's kernels run on its "Stream ..." lines; its "XLA Ops" and "XLA Modules"
            # lines restate the same time per instruction and per program: one of them only.
            streams = [x for x in lines if x.name.startswith("Stream")]
            lines = streams or [x for x in lines if x.name == "XLA Ops"] or lines
        for line in lines:
            for e in line.events:
                stats = dict(e.stats)
                # A device kernel without an hlo_op stat still counts, under its kernel name;
                # on the host only XLA's thunks (which have one) are the step's work.
                key = stats.get("hlo_op") or (e.name if device else None)
                if not key or e.name.startswith("end: ") or e.duration_ns <= 0:
                    continue
                rec = ops[str(key)]
                rec[0] += e.duration_ns
                rec[1] += 1
                rec[2] = rec[2] or str(stats.get("tf_op", ""))
                rec[3] = rec[3] or e.name
    return dict(ops), bool(device)


_INSTRUCTION = re.compile(r"(ROOT )?%?([\w.\-]+) = (.*?) ([a-z][\w\-]*)\(")
_COMPUTATION = re.compile(r"(ENTRY )?%?([\w.\-]+) .*\{$")
_OP_NAME = re.compile(r'op_name="([^"]+)"')


def hlo_index(text: str) -> dict[str, tuple[str, str]]:
    """Instruction name -> (opcode, JAX op_name) in optimised HLO text; a fusion takes its
    fused computation's root's op_name (the fusion line itself rarely carries one)."""
    lines: dict[str, tuple[str, str]] = {}
    roots: dict[str, str] = {}
    computation = ""
    for raw in text.splitlines():
        line = raw.strip()
        m = _INSTRUCTION.match(line)
        if m is None:
            c = _COMPUTATION.match(line)
            computation = c.group(2) if c else computation
            continue
        lines[m.group(2)] = (m.group(4), line)
        if m.group(1):
            roots[computation] = line
    index = {}
    for name, (opcode, line) in lines.items():
        called = re.search(r"calls=%?([\w.\-]+)", line)
        found = _OP_NAME.search(line) or (called and _OP_NAME.search(roots.get(called.group(1), "")))
        index[name] = (opcode, found.group(1) if found else "")
    return index


def summarize(ops: dict[str, list], steps: int, top: int, hlo: dict[str, tuple[str, str]]) -> dict[str, Any]:
    """Per-step rows of the `top` dearest instructions and of the operation kinds, from
    `ops` (hlo_op -> [total ns, calls, trace label, kernel]) over `steps` steps and the
    instruction index `hlo` (:func:`hlo_index`), whose op_name names a row before the trace
    label does."""
    rows = []
    for k, v in ops.items():
        opcode, op_name = hlo.get(k, ("", ""))
        rows.append({"hlo_op": k, "opcode": opcode, "ms_per_step": v[0] / 1e6 / steps, "calls_per_step": v[1] / steps,
                     "tf_op": op_name or v[2], "kernel": v[3]})
    total = sum(r["ms_per_step"] for r in rows)
    by_kind: dict[str, float] = defaultdict(float)
    for r in rows:
        r["share"] = r["ms_per_step"] / total if total else 0.0
        by_kind[_kind(r)] += r["ms_per_step"]
    rows.sort(key=lambda r: -r["ms_per_step"])
    kinds = sorted(({"kind": k, "ms_per_step": v, "share": v / total if total else 0.0} for k, v in by_kind.items()),
                   key=lambda r: -r["ms_per_step"])
    return {"profiled_ms_per_step": total, "ops": len(rows), "top": rows[:top], "by_kind": kinds[:top]}


def _kind(row: dict[str, Any]) -> str:
    """"select_and_scatter_add" from ".../transpose(jvp(UNet))/.../select_and_scatter_add", else the opcode."""
    if row["tf_op"]:
        return row["tf_op"].rstrip("/").rsplit("/", 1)[-1].split("[")[0]
    return row["opcode"] or row["hlo_op"].lstrip("%").split(".")[0]


def torch_profile(arch: str, batch: int, size: int, precision: str, *, features: int = 16, depth: int = 4,
                  steps: int = 10, top: int = 30) -> dict[str, Any]:
    """Profile `steps` eager PyTorch train steps; the dearest operations by self device time."""
    from torch.profiler import ProfilerActivity, profile

    from benchmarks.torch_step import adamw_train_step, to_torch, torch_device, twin_on
    from benchmarks.train_step import synthetic_batch

    device = torch_device()
    host = synthetic_batch(batch, size)
    x, y, m = (to_torch(host[k], device) for k in ("image", "label", "mask"))
    step = adamw_train_step(twin_on(device, arch, features, depth).train(), amp=precision == "bf16", device=device)
    for _ in range(3):
        step(x, y, m).item()
    on_gpu = device == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if on_gpu else [])
    with profile(activities=activities) as prof:
        for _ in range(steps):
            step(x, y, m).item()

    def self_us(e) -> float:
        if on_gpu:
            return float(getattr(e, "self_device_time_total", getattr(e, "self_cuda_time_total", 0.0)))
        return float(e.self_cpu_time_total)

    events = [e for e in prof.key_averages() if self_us(e) > 0]
    total = sum(self_us(e) for e in events) / 1e3 / steps
    rows = sorted(({"op": e.key, "ms_per_step": self_us(e) / 1e3 / steps, "calls_per_step": e.count / steps}
                   for e in events), key=lambda r: -r["ms_per_step"])
    for r in rows:
        r["share"] = r["ms_per_step"] / total if total else 0.0
    return {"source": f"torch.profiler (self {'device' if on_gpu else 'CPU'} time)", "profiled_ms_per_step": total,
            "ops": len(rows), "top": rows[:top]}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="unet", choices=["unet", "attention_unet", "unetpp", "resunet34"])
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--image-size", type=int, default=256)
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    p.add_argument("--features", type=int, default=16)
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--steps", type=int, default=10, help="profiled steps per framework")
    p.add_argument("--top", type=int, default=30, help="operations listed per framework")
    p.add_argument("--no-torch", dest="torch", action="store_false", help="JAX only")
    p.add_argument("--out", required=True, help="JSON path; the optimised HLO goes to <out>.hlo.txt.gz")
    a = p.parse_args(argv)
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # JAX and PyTorch share the GPU
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    kw = {"features": a.features, "depth": a.depth, "steps": a.steps, "top": a.top}
    result: dict[str, Any] = {
        "benchmark": "profile_step", "machine": machine(), "arch": a.arch, "batch_size": a.batch_size,
        "image_size": a.image_size, "precision": a.precision, "features": a.features, "depth": a.depth,
        "steps": a.steps,
        "jax": jax_profile(a.arch, a.batch_size, a.image_size, a.precision, hlo_out=out.with_suffix(".hlo.txt.gz"), **kw),
    }
    out.write_text(json.dumps(result, indent=2) + "\n")  # JAX's part survives a PyTorch failure
    if a.torch:
        try:
            result["torch"] = torch_profile(a.arch, a.batch_size, a.image_size, a.precision, **kw)
        except ImportError:
            result["torch"] = None
        out.write_text(json.dumps(result, indent=2) + "\n")
    for name in ("jax", "torch"):
        r = result.get(name)
        if r:
            print(f"{name}: {r['profiled_ms_per_step']:.2f} ms/step profiled ({r['source']})")
            for row in r["top"][:10]:
                label = row.get("op") or f"{row['hlo_op']} {row['tf_op'] or row['kernel']}"
                print(f"  {row['ms_per_step']:8.3f} ms  {100 * row['share']:5.1f}%  {label[:110]}")
    return result


if __name__ == "__main__":
    main()
