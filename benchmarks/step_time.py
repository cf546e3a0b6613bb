"""The full training step (forward, loss, backward, optimizer) and the forward pass alone:
the flax model against its PyTorch twin on the same device, shapes and dtype policy.

    uv run python -m benchmarks.step_time --arch unet --batch-size 32 --image-size 256 --precision bf16
    uv run python -m benchmarks.step_time --all --points 8x256,32x256,8x512 --precision fp32 bf16

Measured, per (arch, batch, size, precision), in one process:

* JAX: the engine's ``train_step`` jitted with the state donated; inference is
  ``eval_step`` (batch norm in inference mode, sigmoid). Compile time (lower + compile)
  is reported apart from the steady state.
* PyTorch eager: the twin (benchmarks/torch_reference) in ``channels_last``, AdamW, the
  same masked BCE + Dice loss; bf16 = ``torch.autocast(bfloat16)`` over the forward (the
  JAX bf16 policy: bf16 activations, float32 parameters, optimizer and loss).
* PyTorch ``torch.compile`` of the same twin (``--no-compile`` skips it); a compile
  failure is recorded as its error string and the run continues.

Every mode gets `--warmup` untimed steps, then `--steps` timed, synchronised steps
interleaved in rounds; the median gives images/s and the JAX/PyTorch ratio (>1: JAX
faster). Model FLOPs are counted from the JAX programs' jaxprs (benchmarks/flops.py: the
same on every backend, and the same network as the twin); achieved TFLOP/s = FLOPs /
median, and its fraction of a large matmul of the same dtype measured in the same process.
``--recount-flops FILE`` recounts the FLOPs of a result written before they were counted
this way (XLA's GPU cost analysis had counted no convolution) and updates its rates.
Parameter counts of both frameworks are reported (they must be equal).

``--all`` sweeps the four architectures over ``--points`` and writes
benchmarks/results/step_time-<device>.json (or --out) and a markdown table next to it.
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import os
import time
from pathlib import Path
from typing import Any

import jax

from benchmarks.flops import model_flops
from benchmarks.timing import device_slug, first_call_s, interleaved_medians, machine, matmul_peak_tflops
from benchmarks.train_step import compute_dtype, setup
from unet_jax import models
from unet_jax.models.layers import resolve_upsample
from unet_jax.training.steps import eval_step

ARCHS = ("unet", "attention_unet", "unetpp", "resunet34")
TORCH_MODES = ("torch_eager", "torch_compile")


def _jax_runners(arch: str, batch: int, size: int, precision: str, features: int, depth: int) -> dict[str, Any]:
    """Compiled JAX train and inference runners, their compile times, FLOPs and parameter count."""
    step, state, host_batch = setup(arch, features, depth, 1, size, batch, dtype=compute_dtype(precision))
    dev_batch = jax.device_put(host_batch)
    t = time.perf_counter()
    train = step.lower(state, dev_batch).compile()
    train_compile = time.perf_counter() - t
    fwd_jit = jax.jit(eval_step)
    t = time.perf_counter()
    fwd = fwd_jit.lower(state, dev_batch["image"]).compile()
    fwd_compile = time.perf_counter() - t
    holder = {"state": state}

    def train_once():
        holder["state"], m = train(holder["state"], dev_batch)
        jax.block_until_ready(m)

    def fwd_once():
        jax.block_until_ready(fwd(holder["state"], dev_batch["image"]))

    return {
        "train": train_once, "infer": fwd_once, "host_batch": host_batch,
        "params": models.count_params(state.params),
        "train_compile_s": train_compile, "infer_compile_s": fwd_compile,
        **{f"{kind}_flops": f for kind, f in _flops(step, state, dev_batch).items()},
    }


def _flops(step, state, batch) -> dict[str, float]:
    """Model FLOPs of the train step and of the forward pass (traced, not compiled)."""
    return {"train": model_flops(step, state, batch), "infer": model_flops(jax.jit(eval_step), state, batch["image"])}


def _torch_runners(arch: str, host_batch: dict, precision: str, features: int, depth: int,
                   compile_: bool) -> dict[str, Any]:
    """PyTorch eager (and compiled) train and inference runners, first-call times, errors."""
    import torch

    from benchmarks.torch_step import adamw_train_step, to_torch, torch_device, twin_on

    device = torch_device()
    amp = precision == "bf16"
    x, y, m = (to_torch(host_batch[k], device) for k in ("image", "label", "mask"))
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    base = twin_on(device, arch, features, depth)
    out: dict[str, Any] = {"params": sum(p.numel() for p in base.parameters()), "device": device,
                           "torch": torch.__version__, "runners": {}, "first_s": {}, "errors": {}}

    def add(mode: str, compiled: bool) -> None:
        train_net = copy.deepcopy(base).train()
        infer_net = copy.deepcopy(base).eval()
        if compiled:
            train_net, infer_net = torch.compile(train_net), torch.compile(infer_net)
        step = adamw_train_step(train_net, amp=amp, device=device)

        def train_once():
            step(x, y, m).item()  # .item() synchronises

        def infer_once():
            with torch.inference_mode(), torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=amp):
                infer_net(x)
            sync()

        for kind, fn in (("train", train_once), ("infer", infer_once)):
            try:
                out["first_s"][f"{kind}/{mode}"] = first_call_s(fn)
                out["runners"][f"{kind}/{mode}"] = fn
            except Exception as e:  # noqa: BLE001 - torch.compile may fail in many ways; record and go on
                out["errors"][f"{kind}/{mode}"] = f"{type(e).__name__}: {str(e)[:500]}"

    add("torch_eager", compiled=False)
    if compile_:
        add("torch_compile", compiled=True)
    return out


def measure_point(arch: str, batch: int, size: int, precision: str, *, features: int = 16, depth: int = 4,
                  steps: int = 20, warmup: int = 3, rounds: int = 4, torch_modes: bool = True,
                  compile_: bool = True, peaks: dict[str, dict] | None = None) -> dict[str, Any]:
    """One (arch, batch, size, precision) point: train and inference timings of every mode."""
    j = _jax_runners(arch, batch, size, precision, features, depth)
    runners = {"train/jax": j["train"], "infer/jax": j["infer"]}
    first = {"train/jax": first_call_s(j["train"]), "infer/jax": first_call_s(j["infer"])}
    t = _torch_runners(arch, j["host_batch"], precision, features, depth, compile_) if torch_modes else None
    if t is not None:
        runners.update(t["runners"])
        first.update(t["first_s"])
    med = interleaved_medians(runners, steps=steps, warmup=warmup, rounds=rounds)
    peak = (peaks or {}).get(precision, {}).get("tflops")
    point: dict[str, Any] = {
        "arch": arch, "batch_size": batch, "image_size": size, "precision": precision,
        "features": features if "features" in models.options(arch) else None,
        "depth": depth if "depth" in models.options(arch) else None,
        "params": {"jax": j["params"], "torch": None if t is None else t["params"]},
        "torch_device": None if t is None else t["device"],
        "errors": {} if t is None else t["errors"],
    }
    for kind in ("train", "infer"):
        flops = j[f"{kind}_flops"]
        modes: dict[str, Any] = {}
        for name, r in med.items():
            k, mode = name.split("/")
            if k != kind:
                continue
            modes[mode] = {**r, "images_per_s": batch / r["median_s"], "first_call_s": first[name],
                           **_rates(flops, r["median_s"], peak)}
        modes["jax"]["compile_s"] = j[f"{kind}_compile_s"]
        ratios = {f"jax_over_{m}": modes[m]["median_s"] / modes["jax"]["median_s"]
                  for m in TORCH_MODES if m in modes}
        point[kind] = {"flops": flops, "modes": modes, "ratios": ratios}
    return point


def _rates(flops: float | None, median_s: float, peak: float | None) -> dict[str, float | None]:
    tflops = flops / median_s / 1e12 if flops else None
    return {"tflops": tflops, "peak_fraction": tflops / peak if tflops and peak else None}


def recount_flops(result: dict[str, Any]) -> dict[str, Any]:
    """`result` with every point's FLOPs counted again from the jaxprs, and the rates that follow."""
    s = result["settings"]
    for p in result["points"]:
        if "error" in p:
            continue
        flops = _flops(*setup(p["arch"], s["features"], s["depth"], 1, p["image_size"], p["batch_size"],
                              dtype=compute_dtype(p["precision"])))
        peak = result["matmul_peak"].get(p["precision"], {}).get("tflops")
        for kind in ("train", "infer"):
            p[kind]["flops"] = flops[kind]
            for r in p[kind]["modes"].values():
                r.update(_rates(flops[kind], r["median_s"], peak))
    result["flops_counted_by"] = "benchmarks/flops.py (jaxpr), recounted with --recount-flops"
    return result


def _cell(x: float | None, fmt: str) -> str:
    return "-" if x is None else format(x, fmt)


def markdown(result: dict[str, Any]) -> str:
    """A table: images/s of every mode, JAX/PyTorch ratios, TFLOP/s and % of matmul peak."""
    head = ("| arch | batch x size | prec | kind | JAX img/s | eager img/s | compiled img/s | JAX/eager | "
            "JAX/compiled | JAX TFLOP/s | JAX % peak | JAX compile s |")
    lines = [head, "|" + " --- |" * 12]
    for p in result["points"]:
        if "error" in p:
            lines.append(f"| {p['arch']} | {p['batch_size']}x{p['image_size']} | {p['precision']} | "
                         f"error: {p['error'][:80]} |" + " |" * 8)
            continue
        for kind in ("train", "infer"):
            m, r = p[kind]["modes"], p[kind]["ratios"]
            get = lambda mode, key: m.get(mode, {}).get(key)  # noqa: E731
            pf = get("jax", "peak_fraction")
            lines.append(
                f"| {p['arch']} | {p['batch_size']}x{p['image_size']} | {p['precision']} | {kind} | "
                f"{_cell(get('jax', 'images_per_s'), '.1f')} | {_cell(get('torch_eager', 'images_per_s'), '.1f')} | "
                f"{_cell(get('torch_compile', 'images_per_s'), '.1f')} | {_cell(r.get('jax_over_torch_eager'), '.2f')} | "
                f"{_cell(r.get('jax_over_torch_compile'), '.2f')} | {_cell(get('jax', 'tflops'), '.3f')} | "
                f"{_cell(None if pf is None else 100 * pf, '.1f')} | {_cell(get('jax', 'compile_s'), '.1f')} |")
    peaks = ", ".join(f"{k} {v['tflops']:.3f} TFLOP/s (n={v['n']})" for k, v in result["matmul_peak"].items())
    return "\n".join(lines) + f"\n\nMatmul peak on {result['machine']['device']}: {peaks}.\n"


def parse_points(text: str) -> list[tuple[int, int]]:
    """"8x256,32x256" -> [(8, 256), (32, 256)] (batch x image size)."""
    out = []
    for item in text.split(","):
        b, s = item.lower().split("x")
        out.append((int(b), int(s)))
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="unet", choices=ARCHS)
    p.add_argument("--all", action="store_true", help="sweep the four architectures over --points")
    p.add_argument("--archs", default=",".join(ARCHS), help="with --all: which architectures")
    p.add_argument("--points", default="8x256,32x256,8x512", help="with --all: BATCHxSIZE,...")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--image-size", type=int, default=256)
    p.add_argument("--precision", nargs="+", choices=["fp32", "bf16"], default=["fp32"])
    p.add_argument("--features", type=int, default=16, help="base width of the U-Net family (the library default)")
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--steps", type=int, default=20, help="timed steps per mode")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps per mode after the first call")
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--no-compile", dest="compile", action="store_false", help="skip torch.compile")
    p.add_argument("--no-torch", dest="torch", action="store_false", help="JAX only")
    p.add_argument("--note", default="", help="free text stored in the JSON (e.g. why a sweep was cut)")
    p.add_argument("--out", default=None, help="JSON path (default with --all: benchmarks/results/step_time-<device>.json)")
    p.add_argument("--recount-flops", metavar="FILE", default=None,
                   help="recount the FLOPs of the result FILE (and its markdown table) instead of measuring")
    a = p.parse_args(argv)
    if a.recount_flops:
        path = Path(a.recount_flops)
        result = recount_flops(json.loads(path.read_text()))
        path.write_text(json.dumps(result, indent=2) + "\n")
        path.with_suffix(".md").write_text(markdown(result))
        print(markdown(result))
        return result
    # JAX and PyTorch share one GPU here: JAX must not take 75% of its memory up front
    # (read when JAX's backend starts, which no code has done before this point).
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    if a.torch:
        try:
            import torch  # noqa: F401
        except ImportError:
            a.torch = False
    points = parse_points(a.points) if a.all else [(a.batch_size, a.image_size)]
    archs = a.archs.split(",") if a.all else [a.arch]
    peaks = {prec: matmul_peak_tflops(prec) for prec in a.precision}
    result: dict[str, Any] = {
        "benchmark": "step_time", "machine": machine(), "matmul_peak": peaks,
        "settings": {"steps": a.steps, "warmup": a.warmup, "rounds": a.rounds, "features": a.features,
                     "depth": a.depth, "channels": 1, "torch_compile": a.compile and a.torch, "torch": a.torch,
                     "optimizer": "AdamW (both)", "loss": "masked BCE + pooled soft Dice (both)",
                     "jax_upsample": resolve_upsample("auto")},
        "note": a.note, "flops_counted_by": "benchmarks/flops.py (jaxpr)", "points": [],
    }
    if a.torch:
        import torch

        result["machine"]["torch"] = torch.__version__
        result["machine"]["torch_threads"] = torch.get_num_threads()
    out = Path(a.out) if a.out else (Path(__file__).parent / "results" / f"step_time-{device_slug()}.json"
                                     if a.all else None)

    def save() -> str:
        table = markdown(result)
        if out is not None:  # after every point, so a sweep cut short keeps what it measured
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(result, indent=2) + "\n")
            out.with_suffix(".md").write_text(table)
        return table

    t0 = time.perf_counter()
    for prec in a.precision:
        for batch, size in points:
            for arch in archs:
                try:
                    point = measure_point(arch, batch, size, prec, features=a.features, depth=a.depth,
                                          steps=a.steps, warmup=a.warmup, rounds=a.rounds, torch_modes=a.torch,
                                          compile_=a.compile, peaks=peaks)
                except Exception as e:  # noqa: BLE001 - e.g. out of memory at one point; the sweep goes on
                    if not a.all:
                        raise
                    point = {"arch": arch, "batch_size": batch, "image_size": size, "precision": prec,
                             "error": f"{type(e).__name__}: {str(e)[:500]}"}
                result["points"].append(point)
                result["wall_s"] = time.perf_counter() - t0
                save()
                _release()
                print(json.dumps({k: point.get(k) for k in ("arch", "batch_size", "image_size", "precision")}
                                 | {"train_ratios": point.get("train", {}).get("ratios"),
                                    "error": point.get("error")}), flush=True)
    print(save())
    return result


def _release() -> None:
    """Frees one point's buffers before the next (large points nearly fill a GPU)."""
    gc.collect()
    jax.clear_caches()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:
        pass


if __name__ == "__main__":
    main()
