"""Model FLOPs of a JAX function, counted from its jaxpr: the same on every backend.

    flops = model_flops(jax.jit(train_step), state, batch)

Why not XLA's cost analysis: on a GPU, XLA hands convolutions to cuDNN as custom calls,
which its cost analysis counts as zero FLOPs (an H200 run reported 0.2 GFLOP per 256x256
U-Net training image where the CPU backend counts 17.9), so FLOPs must not depend on
the backend that compiles the program.

Counted: convolutions and matrix products (``conv_general_dilated``, ``dot_general``), the
usual "model FLOPs" of MFU figures; a multiply-add is 2 FLOPs, element-wise work is not
counted. A convolution costs 2 x (output elements) x (input features per group) x (kernel
taps per output), where an input dilated by d (a transposed convolution, or the input
gradient of a strided one) contributes k/d taps per kernel dimension of size k: the
inserted zeros are not counted. Padding taps are counted (XLA's CPU count skips them, so it
is a little lower at image borders). Nested jaxprs (jit, custom_vjp, remat, cond branches:
the most expensive one) are followed; a ``scan`` body counts ``length`` times, a
``while_loop`` body once (its trip count is unknown when tracing).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any

import jax
from jax.extend import core


def model_flops(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> float:
    """FLOPs of convolutions and matrix products in one call of `fn` on `args` (traced, not run)."""
    return jaxpr_flops(jax.make_jaxpr(fn)(*args, **kwargs).jaxpr)


def jaxpr_flops(jaxpr: core.Jaxpr) -> float:
    """FLOPs of the convolutions and matrix products of `jaxpr` and the jaxprs nested in it."""
    total = 0.0
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        if name == "conv_general_dilated":
            total += _conv_flops(eqn)
        elif name == "dot_general":
            total += _dot_flops(eqn)
        subs = list(_jaxprs(eqn.params.values()))
        if not subs:
            continue
        if name == "cond":  # one branch runs: count the dearest
            total += max(jaxpr_flops(j) for j in subs)
        elif name == "scan":
            total += eqn.params["length"] * sum(jaxpr_flops(j) for j in subs)
        else:
            total += sum(jaxpr_flops(j) for j in subs)
    return total


def _jaxprs(values: Any) -> Iterator[core.Jaxpr]:
    """The jaxprs among an equation's parameters (a cond's branches come as a tuple)."""
    for v in values:
        if isinstance(v, core.ClosedJaxpr):
            yield v.jaxpr
        elif isinstance(v, core.Jaxpr):
            yield v
        elif isinstance(v, (tuple, list)):
            yield from _jaxprs(v)


def _conv_flops(eqn: core.JaxprEqn) -> float:
    out = eqn.outvars[0].aval.shape
    rhs = eqn.invars[1].aval.shape
    rhs_spec = eqn.params["dimension_numbers"].rhs_spec  # (out features, in features, *spatial)
    taps = math.prod(rhs[d] / dil for d, dil in zip(rhs_spec[2:], eqn.params["lhs_dilation"], strict=True))
    return 2.0 * math.prod(out) * rhs[rhs_spec[1]] * taps


def _dot_flops(eqn: core.JaxprEqn) -> float:
    lhs = eqn.invars[0].aval.shape
    (lhs_contract, _), _ = eqn.params["dimension_numbers"]
    return 2.0 * math.prod(eqn.outvars[0].aval.shape) * math.prod(lhs[d] for d in lhs_contract)
