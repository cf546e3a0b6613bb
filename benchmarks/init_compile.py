"""Start-up cost of parameter initialisation: plain ``jit(model.init)`` against the library's
``init_variables`` (on CPU compiled at XLA backend optimisation level 1), per architecture.

    uv run python -m benchmarks.init_compile                      # the four architectures, 16 features
    uv run python -m benchmarks.init_compile --arch unet --rounds 3

Each timing is one call from a fresh ``jax.jit`` (compile + the single run), the two ways
alternating in rounds; medians. The parameters of both ways are compared bit for bit.
Writes benchmarks/results/init_compile_<device>.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.timing import device_slug, machine, timed_call
from unet_jax import models
from unet_jax.training.state import init_variables


def measure(arch: str, features: int, shape: tuple[int, ...], rounds: int) -> dict[str, object]:
    kwargs = {} if arch == "resunet34" else {"features": features}  # resunet34's widths are fixed
    model = models.create(arch, in_channels=shape[-1], out_channels=1, **kwargs)
    rng = jax.random.key(0)
    plain_s, library_s, same = [], [], True
    for _ in range(rounds):
        t, want = timed_call(lambda: jax.jit(model.init, static_argnames="train")(rng, jnp.zeros(shape), train=False))
        plain_s.append(t)
        t, got = timed_call(lambda: init_variables(model, shape, rng))
        library_s.append(t)
        same &= all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(want), jax.tree.leaves(got)))
    plain, library = statistics.median(plain_s), statistics.median(library_s)
    return {"arch": arch, "features": kwargs.get("features"), "input_shape": list(shape),
            "params": models.count_params(got["params"]), "leaves": len(jax.tree.leaves(got)),
            "jit_model_init_s": plain, "init_variables_s": library, "speedup": plain / library,
            "bit_identical": bool(same), "rounds": rounds}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.init_compile", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--arch", nargs="+", default=models.available(), choices=models.available())
    p.add_argument("--features", type=int, default=16)
    p.add_argument("--shape", default="1x64x64x1", help="NxHxWxC of the dummy batch (the DRIVE recipe's)")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--out", default=None, help="JSON path (default benchmarks/results/init_compile_<device>.json)")
    a = p.parse_args(argv)
    shape = tuple(int(v) for v in a.shape.split("x"))
    out = Path(a.out) if a.out else Path(__file__).parent / "results" / f"init_compile_{device_slug()}.json"
    result = {"machine": machine(), "backend": jax.default_backend(), "rows": []}
    for arch in a.arch:
        row = measure(arch, a.features, shape, a.rounds)
        print(json.dumps(row), flush=True)
        result["rows"].append(row)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
