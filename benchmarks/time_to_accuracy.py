"""Validation F1 against training wall time: the flax model and its PyTorch twin, from the
same initial weights, with the same recipe and the same patches, on DRIVE.

    uv run python -m benchmarks.time_to_accuracy --arch unet --max-seconds 600 --data-dir /path/to/DRIVE

Recipe: ``RunConfig()`` (the DRIVE CPU recipe: 64x64 patches, batch 32, AdamW 2e-3 with
warmup and cosine decay over ``--steps``, global-norm clip 1, BCE + Dice). The twin
(benchmarks/torch_reference) is initialised by PyTorch and its weights are ported into the
flax model (unet_jax.models.port), so both start from the same function. Both read the
same grain patch stream (same seed) and use the same learning-rate schedule (optax's,
evaluated per step for PyTorch). The two alternate in chunks of ``--eval-every`` steps, so
machine noise hits both alike; each clock counts only its own training (validation
excluded). Training stops at ``--steps`` or when a framework's clock passes
``--max-seconds``. Validation and test F1 (Dice within the FOV, threshold 0.5) and AUC come
from the library's ``evaluate`` for both.

Writes benchmarks/results/time_to_accuracy-<arch>-<device>.json and .png (or --out).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import time
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.timing import device_slug, machine
from benchmarks.torch_step import make_twin, masked_bce_dice, to_torch, torch_device
from benchmarks.train_step import model_kwargs
from unet_jax import data, losses, models
from unet_jax.config import RunConfig
from unet_jax.data.base import Dataset
from unet_jax.evaluation import evaluate
from unet_jax.training.loop import make_predict_fn
from unet_jax.training.run import split_train_val, training_data, training_source
from unet_jax.training.state import TrainState, make_optimizer, make_schedule
from unet_jax.training.steps import train_step


class _Jax:
    """The flax model from ported weights, trained by the engine's jitted step."""

    def __init__(self, cfg: RunConfig, variables: dict, channels: int):
        m = cfg.model
        dtype = jnp.bfloat16 if cfg.train.precision == "bf16" else None
        model = models.create(m.arch, dtype=dtype, **model_kwargs(m.arch, m.features, m.depth, channels))
        self.state = TrainState.create(apply_fn=model.apply, params=variables["params"], tx=make_optimizer(cfg.train),
                                       batch_stats=variables.get("batch_stats", {}))
        self.step = jax.jit(functools.partial(train_step, loss_fn=losses.get_loss(cfg.train.loss)), donate_argnums=0)

    def train(self, batch: dict[str, np.ndarray]) -> None:
        self.state, self.metrics = self.step(self.state, batch)

    def sync(self) -> None:
        jax.block_until_ready(self.metrics)

    def predict(self) -> Callable[[np.ndarray], Any]:
        return make_predict_fn(self.state)


class _Torch:
    """The PyTorch twin: AdamW with optax's schedule per step, clip, channels-last, AMP for bf16."""

    def __init__(self, cfg: RunConfig, twin):
        import torch

        self.torch, self.device = torch, torch_device()
        self.net = twin.to(self.device).to(memory_format=torch.channels_last).train()
        t = cfg.train
        self.opt = torch.optim.AdamW(self.net.parameters(), lr=0.0, weight_decay=t.weight_decay)
        self.schedule, self.clip, self.amp, self.count = make_schedule(t), t.grad_clip, t.precision == "bf16", 0

    def train(self, batch: dict[str, np.ndarray]) -> None:
        torch = self.torch
        x, y, m = (to_torch(batch[k], self.device) for k in ("image", "label", "mask"))
        for group in self.opt.param_groups:
            group["lr"] = float(self.schedule(self.count))
        self.opt.zero_grad(set_to_none=True)
        with torch.autocast(device_type=self.device, dtype=torch.bfloat16, enabled=self.amp):
            out = self.net(x)
        heads = out if isinstance(out, (list, tuple)) else [out]
        loss = sum(masked_bce_dice(h, y, m) for h in heads) / len(heads)
        loss.backward()
        if self.clip > 0:
            torch.nn.utils.clip_grad_norm_(self.net.parameters(), self.clip)
        self.opt.step()
        self.count += 1
        self.loss = loss

    def sync(self) -> None:
        self.loss.item()

    def predict(self) -> Callable[[np.ndarray], np.ndarray]:
        torch = self.torch

        def fn(images: np.ndarray) -> np.ndarray:
            self.net.eval()
            with torch.inference_mode(), torch.autocast(device_type=self.device, dtype=torch.bfloat16,
                                                         enabled=self.amp):
                out = self.net(to_torch(np.asarray(images, np.float32), self.device))
            self.net.train()
            out = out[0] if isinstance(out, (list, tuple)) else out
            return torch.sigmoid(out.float())[:, 0].cpu().numpy()

        return fn


def _twins(cfg: RunConfig, channels: int, seed: int) -> tuple[Any, dict]:
    """The PyTorch twin (seeded init) and the same weights as flax variables."""
    import torch

    from benchmarks.torch_reference.port import port_module

    torch.manual_seed(seed)
    m = cfg.model
    twin = make_twin(m.arch, m.features, m.depth, channels)
    model = models.create(m.arch, **model_kwargs(m.arch, m.features, m.depth, channels))
    p = cfg.data.patch_size
    template = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, p, p, channels))))
    return twin, port_module(twin, template)


def run(cfg: RunConfig, dataset: Dataset, *, max_seconds: float, eval_every: int,
        progress: bool = False) -> dict[str, Any]:
    """Trains both frameworks alternately; returns their curves and test figures."""
    fit_src, val_src = split_train_val(cfg, dataset.train())
    source = training_source(cfg, dataset, fit_src, progress)
    twin, variables = _twins(cfg, dataset.channels, cfg.train.seed)
    runners = {"jax": _Jax(cfg, variables, dataset.channels), "torch": _Torch(cfg, twin)}
    host = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, on_device="no"))  # numpy batches for both
    streams = {name: training_data(host, source, cfg.train.batch_size)[0] for name in runners}

    def score(r, src) -> dict:
        return evaluate(r.predict(), src, dataset.preprocess, num_classes=2, threshold=cfg.train.threshold).summary

    clock = {n: 0.0 for n in runners}
    steps = {n: 0 for n in runners}
    first_step_s: dict[str, float] = {}
    curves: dict[str, list[dict]] = {n: [] for n in runners}

    def validate(name: str) -> None:
        s = score(runners[name], val_src) if val_src is not None else {}
        curves[name].append({"step": steps[name], "train_s": clock[name], "val_f1": s.get("dice"),
                             "val_auc": s.get("auc")})
        if progress:
            print(f"{name}: step {steps[name]}, {clock[name]:.1f} s, val F1 {s.get('dice')}", flush=True)

    for name in runners:  # step 0: the same weights, so (nearly) the same scores
        validate(name)
    while True:
        active = [n for n in runners if steps[n] < cfg.train.steps and clock[n] < max_seconds]
        if not active:
            break
        for name in active:
            r = runners[name]
            for _ in range(min(eval_every, cfg.train.steps - steps[name])):
                batch = next(streams[name])  # outside the clock: both read the same stream
                t = time.perf_counter()
                r.train(batch)
                r.sync()
                dt = time.perf_counter() - t
                steps[name] += 1
                if steps[name] == 1:
                    first_step_s[name] = dt  # compilation / warm-up: reported apart, not on the clock
                else:
                    clock[name] += dt
                if clock[name] >= max_seconds:
                    break
            validate(name)
    test = {n: score(r, dataset.test()) for n, r in runners.items()}
    return {
        "curves": curves, "first_step_s": first_step_s, "steps": steps, "train_s": clock,
        "test": {n: {"f1": t["dice"], "auc": t.get("auc")} for n, t in test.items()},
        "params": {"jax": models.count_params(variables["params"]),
                   "torch": sum(p.numel() for p in twin.parameters())},
    }


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, curve in result["curves"].items():
        ax.plot([c["train_s"] for c in curve], [c["val_f1"] for c in curve], marker="o", ms=3,
                label=f"{name} (test F1 {result['test'][name]['f1']:.4f})")
    ax.set_xlabel("training wall time, s (validation excluded)")
    ax.set_ylabel("validation F1 (FOV)")
    ax.set_title(f"{result['arch']} on {result['dataset']}, {result['machine']['device']}")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="unet", choices=["unet", "attention_unet", "unetpp", "resunet34"])
    p.add_argument("--max-seconds", type=float, default=600.0, help="training-time budget per framework")
    p.add_argument("--steps", type=int, default=RunConfig().train.steps, help="at most this many steps (schedule length)")
    p.add_argument("--eval-every", type=int, default=50, help="steps between validations (and framework switches)")
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    p.add_argument("--data-dir", default=None, help="DRIVE folder; else $UNET_JAX_DRIVE_DIR, else ./data/DRIVE")
    p.add_argument("--tfds-dir", default=None)
    p.add_argument("--out", default=None, help="JSON path (the PNG goes next to it)")
    a = p.parse_args(argv)
    # JAX and PyTorch share one GPU here: JAX must not take 75% of its memory up front
    # (read when JAX's backend starts, which no code has done before this point).
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    base = RunConfig()
    cfg = dataclasses.replace(base, model=dataclasses.replace(base.model, arch=a.arch),
                              train=dataclasses.replace(base.train, steps=a.steps, precision=a.precision))
    dataset = data.get("drive", preprocess=cfg.data.preprocess, data_dir=a.data_dir, tfds_dir=a.tfds_dir)
    t0 = time.perf_counter()
    result = {"benchmark": "time_to_accuracy", "arch": a.arch, "dataset": dataset.name, "machine": machine(),
              "max_seconds": a.max_seconds, "max_steps": a.steps, "eval_every": a.eval_every,
              "precision": a.precision, "recipe": "RunConfig() defaults",
              **run(cfg, dataset, max_seconds=a.max_seconds, eval_every=a.eval_every, progress=True)}
    result["wall_s"] = time.perf_counter() - t0
    print(json.dumps({k: result[k] for k in ("steps", "train_s", "test", "first_step_s", "params")}, indent=2))
    out = Path(a.out) if a.out else (Path(__file__).parent / "results"
                                     / f"time_to_accuracy-{a.arch}-{device_slug()}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    plot(result, out.with_suffix(".png"))
    return result


if __name__ == "__main__":
    main()
