"""JAX vs PyTorch train step on the same network, timed in one run (CPU or GPU).

    uv run python -m benchmarks.torch_step --arch unet --features 16 --patch-size 64 --batch-size 32

Both sides: the same architecture (the PyTorch twin from benchmarks/torch_reference),
BCE + soft Dice on logits, Adam(W), one optimizer step per iteration, batch norm in
training mode. Each side is warmed up, blocks on its result every step (JAX:
block_until_ready; PyTorch: .item() / cuda.synchronize), and reports the median. The
two are interleaved in rounds so that machine noise hits both. PyTorch runs eagerly
with its default (oneDNN on CPU) kernels and channels-last memory format.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np


def make_twin(arch: str, features: int = 16, depth: int = 4, channels: int = 1):
    """The PyTorch twin of `arch` (one output channel), on the CPU, in training mode."""
    from benchmarks.torch_reference import TWINS

    if arch not in TWINS:
        raise ValueError(f"no PyTorch twin for {arch!r}")
    cfg = {"in_channels": channels, "out_channels": 1}
    if arch != "resunet34":  # fixed width: no features/depth
        cfg.update(features=features, depth=depth)
    return TWINS[arch](**cfg)


def masked_bce_dice(logits, y, mask):
    """unet_jax's ``bce_dice`` loss: BCE averaged over mask pixels + pooled soft Dice (smooth 1)."""
    import torch

    logits, y, mask = logits.float(), y.float(), mask.float()
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, y, reduction="none")
    bce = (bce * mask).sum() / mask.sum().clamp_min(1.0)
    p = torch.sigmoid(logits) * mask
    ym = y * mask
    dice = 1 - (2 * (p * ym).sum() + 1) / (p.sum() + ym.sum() + 1)
    return bce + dice


def make_train_step(net, opt, *, amp: bool, device: str):
    """``step(x, y, mask) -> loss`` (a device tensor, not synchronised): one AdamW step.

    `amp`: forward under bfloat16 autocast (the loss in float32), as the JAX bf16 policy.
    """
    import torch

    def step(x, y, mask):
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=amp):
            out = net(x)
        heads = out if isinstance(out, (list, tuple)) else [out]
        loss = sum(masked_bce_dice(h, y, mask) for h in heads) / len(heads)
        loss.backward()
        opt.step()
        return loss.detach()

    return step


def twin_on(device: str, arch: str, features: int = 16, depth: int = 4, channels: int = 1):
    """The PyTorch twin of `arch` on `device`, in channels-last memory format (training mode)."""
    import torch

    return make_twin(arch, features, depth, channels).to(device).to(memory_format=torch.channels_last)


def adamw_train_step(net, *, amp: bool, device: str, lr: float = 2e-3):
    """:func:`make_train_step` with the benchmarks' optimizer: AdamW, weight decay 1e-4."""
    import torch

    return make_train_step(net, torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4), amp=amp, device=device)


def torch_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def to_torch(a: np.ndarray, device: str):
    """NHWC numpy -> NCHW channels-last tensor on `device`."""
    import torch

    return torch.from_numpy(a).permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last).to(device)


def torch_step_fn(arch: str, features: int, depth: int, channels: int, lr: float = 2e-3):
    """(step(x, y) -> float loss (synchronised), to_dev, device, torch version): eager, channels-last."""
    import torch

    device = torch_device()
    step = adamw_train_step(twin_on(device, arch, features, depth, channels).train(), amp=False, device=device, lr=lr)
    return (lambda x, y: step(x, y, torch.ones_like(y)).item()), (lambda a: to_torch(a, device)), device, \
        torch.__version__


def main() -> None:
    import jax

    from benchmarks.train_step import setup

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="unet")
    p.add_argument("--features", type=int, default=16)
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--channels", type=int, default=1)
    p.add_argument("--patch-size", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--steps-per-round", type=int, default=8)
    p.add_argument("--out", default=None)
    a = p.parse_args()

    jstep, state, batch = setup(a.arch, a.features, a.depth, a.channels, a.patch_size, a.batch_size)
    x, y = batch["image"], batch["label"]
    batch = jax.device_put(batch)
    t = time.perf_counter()
    state, m = jstep(state, batch)
    jax.block_until_ready(m)
    jax_first = time.perf_counter() - t

    tstep, to_dev, device, torch_version = torch_step_fn(a.arch, a.features, a.depth, a.channels)
    tx, ty = to_dev(x), to_dev(y)
    t = time.perf_counter()
    tstep(tx, ty)
    torch_first = time.perf_counter() - t

    jax_times, torch_times = [], []
    for _ in range(a.rounds):
        for _ in range(a.steps_per_round):
            t = time.perf_counter()
            state, m = jstep(state, batch)
            jax.block_until_ready(m)
            jax_times.append(time.perf_counter() - t)
        for _ in range(a.steps_per_round):
            t = time.perf_counter()
            tstep(tx, ty)
            torch_times.append(time.perf_counter() - t)
    jm, tm = float(np.median(jax_times)), float(np.median(torch_times))
    r = {
        "arch": a.arch, "features": a.features, "depth": a.depth, "channels": a.channels,
        "patch_size": a.patch_size, "batch_size": a.batch_size, "device": str(jax.devices()[0].device_kind),
        "torch_device": device, "jax": jax.__version__, "torch": torch_version,
        "jax_first_step_s": jax_first, "torch_first_step_s": torch_first,
        "jax_median_step_s": jm, "torch_median_step_s": tm,
        "jax_images_per_s": a.batch_size / jm, "torch_images_per_s": a.batch_size / tm,
        "jax_over_torch_speed": tm / jm, "steps_timed_each": len(jax_times),
    }
    print(json.dumps(r, indent=2))
    if a.out:
        with open(a.out, "w") as f:
            json.dump(r, f, indent=2)


if __name__ == "__main__":
    main()
