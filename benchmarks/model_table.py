"""Model table: parameters, forward GFLOPs and parity with the PyTorch twin for each architecture.

    uv run python benchmarks/model_table.py [--size 512] [--diff-size 512]

For every architecture at its default configuration (unet / attention_unet / unetpp:
features=32, depth=4, in_channels=3, out_channels=1; resunet34: defaults), plus the
pruned UNet++ heads (`inference_head=k`):

* params: trainable parameters of the flax model (and of its torch twin: they must match);
  for pruned UNet++ also the parameters the sub-network actually uses;
* GFLOPs: XLA's compiled cost analysis (`flops`, a multiply-add counts 2) of the eval-mode
  float32 forward on one (1, size, size, 3) image;
* max_abs_diff: max |flax - torch| of eval-mode logits on a random (1, diff_size, diff_size, 3)
  image, after porting the twin's random weights (BN running statistics randomised) with
  `benchmarks.torch_reference.port`.

Writes benchmarks/results/model_table.json and prints a markdown table. Needs torch (the
`bench` extra); runs on CPU in a couple of minutes.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np
import torch

from benchmarks.torch_reference import TWINS
from benchmarks.torch_reference.port import port_module, randomize_bn_stats
from unet_jax import models

RESULTS = pathlib.Path(__file__).resolve().parent / "results" / "model_table.json"
FAMILY = dict(features=32, depth=4, in_channels=3, out_channels=1)
ROWS: list[tuple[str, dict, int | None]] = [  # (arch, config, UNet++ inference_head)
    ("unet", FAMILY, None),
    ("attention_unet", FAMILY, None),
    ("unetpp", FAMILY, None),
    *[("unetpp", FAMILY, k) for k in (1, 2, 3)],
    ("resunet34", {}, None),
]


def _flops(compiled) -> float:
    cost = compiled.cost_analysis()  # a dict, or a list of per-module dicts in older jax
    cost = [cost] if isinstance(cost, dict) else cost
    return float(sum(c.get("flops", 0.0) for c in cost))


def _row(arch: str, cfg: dict, head: int | None, size: int, diff_size: int, twins: dict) -> dict:
    model = models.create(arch, **cfg, **({"inference_head": head} if head is not None else {}))
    if arch not in twins:  # one twin (and one set of weights) per architecture
        torch.manual_seed(0)
        twin = TWINS[arch](**cfg)
        randomize_bn_stats(twin)
        template = jax.eval_shape(lambda x: models.create(arch, **cfg).init(jax.random.key(0), x), jnp.zeros((1, 64, 64, 3)))
        twins[arch] = twin.eval(), port_module(twin, template)
    twin, variables = twins[arch]
    if arch == "unetpp":
        twin.inference_head = head
    used = jax.eval_shape(lambda x: model.init(jax.random.key(0), x), jnp.zeros((1, 64, 64, 3)))

    x = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
    t0 = time.perf_counter()
    gflops = _flops(jax.jit(model.apply).lower(variables, x).compile()) / 1e9

    image = np.random.default_rng(0).normal(size=(1, diff_size, diff_size, 3)).astype(np.float32)
    ours = np.asarray(jax.jit(model.apply)(variables, image))
    with torch.no_grad():
        theirs = twin(torch.from_numpy(image).permute(0, 3, 1, 2)).permute(0, 2, 3, 1).numpy()
    name = arch if head is None else f"unetpp (head {head})"
    return {
        "arch": name,
        "config": {**cfg, **({"inference_head": head} if head is not None else {})},
        "params": models.count_params(variables["params"]),
        "params_torch": sum(p.numel() for p in twin.parameters()),
        "params_used": models.count_params(used["params"]),
        "gflops": round(gflops, 3),
        "max_abs_diff": float(np.abs(ours - theirs).max()),
        "max_abs_logit": float(np.abs(theirs).max()),
        "seconds": round(time.perf_counter() - t0, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=512, help="image side for the FLOP count")
    parser.add_argument("--diff-size", type=int, default=512, help="image side for the torch comparison")
    parser.add_argument("--out", type=pathlib.Path, default=RESULTS)
    args = parser.parse_args()

    twins: dict = {}
    rows = []
    for arch, cfg, head in ROWS:
        row = _row(arch, cfg, head, args.size, args.diff_size, twins)
        assert row["params"] == row["params_torch"], row
        rows.append(row)
        print(f"{row['arch']}: done in {row['seconds']} s", flush=True)
    report = {
        "flops_input": [1, args.size, args.size, 3],
        "diff_input": [1, args.diff_size, args.diff_size, 3],
        "dtype": "float32",
        "mode": "eval (running BN statistics)",
        "flops_note": "XLA cost_analysis()['flops'] of the compiled eval forward; a multiply-add counts 2",
        "versions": {"jax": jax.__version__, "torch": torch.__version__, "python": platform.python_version()},
        "device": f"{jax.devices()[0].platform}: {jax.devices()[0].device_kind}",
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")

    print(f"\nForward cost at {args.size}x{args.size}x3 (eval, float32); parity vs PyTorch twin at {args.diff_size}x{args.diff_size}x3\n")
    print("| architecture | parameters | params used | GFLOPs | max abs diff vs torch | max abs logit |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['arch']} | {r['params']:,} | {r['params_used']:,} | {r['gflops']:.1f} | {r['max_abs_diff']:.2e} | {r['max_abs_logit']:.3f} |"
        )
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
