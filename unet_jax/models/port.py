"""Converting PyTorch state dicts into flax variables, by name (no torch import needed).

The PyTorch twins (`benchmarks/torch_reference`) and torchvision's ResNet name their
modules so that a state-dict key maps to a flax path by one deterministic rule
(`torch_path_to_flax`): dots separate modules, and a purely numeric segment (an index
into an `nn.Sequential`/`ModuleList`) is joined to the preceding name with "_":

    "encoder.layer1.0.downsample.1.running_mean" -> batch_stats/encoder/layer1_0/downsample_1/mean

Leaves are converted by kind (PyTorch layout -> flax layout):

    Conv2d.weight           (O, I, kh, kw)  -> params/.../kernel (kh, kw, I, O)
    ConvTranspose2d.weight  (I, O, kh, kw)  -> params/.../kernel (kh, kw, I, O), spatially
                                               flipped (flax `ConvTranspose` with
                                               transpose_kernel=False does not flip)
    Linear.weight           (O, I)          -> params/.../kernel (I, O)
    BatchNorm2d.weight/bias                 -> params/.../scale, params/.../bias
    BatchNorm2d.running_mean/running_var    -> batch_stats/.../mean, batch_stats/.../var
    *.bias                                  -> params/.../bias
    BatchNorm2d.num_batches_tracked         -> dropped (flax keeps no such counter)

Every torch key must land on a template leaf of the same shape and every template leaf
must be filled; anything else raises `PortError` listing the offending keys.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

import jax.numpy as jnp
import numpy as np
from flax import traverse_util
from flax.core import unfreeze

_MAX_LISTED = 20  # keys named in an error message before "... and N more"


class PortError(ValueError):
    """A state dict does not match the flax model it is ported into."""


def torch_path_to_flax(path: str) -> tuple[str, ...]:
    """Module path in a torch state dict -> flax module path, e.g. 'layer1.0.conv1' -> ('layer1_0', 'conv1')."""
    out: list[str] = []
    for seg in path.split(".") if path else []:
        if seg.isdigit() and out:
            out[-1] = f"{out[-1]}_{seg}"
        else:
            out.append(seg)
    return tuple(out)


def to_numpy(value: Any) -> np.ndarray:
    """A torch tensor (any device, with or without grad) or array-like as a numpy array."""
    if hasattr(value, "detach"):  # a torch.Tensor; imported lazily so torch stays optional
        value = value.detach().cpu().numpy()
    return np.asarray(value)


def _listing(keys: list[str]) -> str:
    shown = ", ".join(keys[:_MAX_LISTED])
    return shown + (f" ... and {len(keys) - _MAX_LISTED} more" if len(keys) > _MAX_LISTED else "")


def _is_transposed(module: str, weight: np.ndarray, transposed: Collection[str] | None) -> bool:
    if transposed is not None:
        return module in transposed
    # Default: the `UpSample` convention. Its transposed conv is the child named "up" with a
    # kxk (k > 1) kernel; the bilinear mode's "up" is a 1x1 ordinary conv.
    return module.rsplit(".", 1)[-1] == "up" and weight.ndim == 4 and weight.shape[2:] != (1, 1)


def _convert_kernel(w: np.ndarray, transposed: bool) -> np.ndarray:
    if w.ndim == 4 and transposed:  # (I, O, kh, kw) -> (kh, kw, I, O), flipped spatially
        return w.transpose(2, 3, 0, 1)[::-1, ::-1]
    if w.ndim == 4:  # (O, I, kh, kw) -> (kh, kw, I, O)
        return w.transpose(2, 3, 1, 0)
    if w.ndim == 2:  # Linear (O, I) -> Dense (I, O)
        return w.T
    return w


def torch_to_flax(
    state_dict: Mapping[str, Any],
    flax_variables_template: Mapping[str, Any],
    *,
    transposed: Collection[str] | None = None,
) -> dict[str, Any]:
    """Converts a PyTorch `state_dict` into flax variables shaped like the template.

    Args:
      state_dict: key -> tensor/array, as returned by `torch.nn.Module.state_dict()`.
      flax_variables_template: the flax variables (`{"params": ..., "batch_stats": ...}`)
        of the target model; only structure and shapes are used, so `jax.eval_shape` of
        `model.init` is enough.
      transposed: torch module paths (e.g. "up1.up") that are `ConvTranspose2d`. None uses
        the `UpSample` convention (children named "up" with a kernel larger than 1x1).

    Returns:
      A new variables dict with exactly the template's collections and leaves, float
      arrays in the template's dtypes.

    Raises:
      PortError: naming every torch key that has no flax counterpart, every shape
        mismatch, and every flax leaf left unfilled.
    """
    flat_template = traverse_util.flatten_dict(unfreeze(dict(flax_variables_template)))
    filled: dict[tuple[str, ...], jnp.ndarray | None] = {}
    unmapped, mismatched = [], []
    for key, value in state_dict.items():
        module, _, leaf = key.rpartition(".")
        if leaf == "num_batches_tracked":
            continue
        path = torch_path_to_flax(module)
        value = to_numpy(value)
        torch_shape = tuple(value.shape)
        if leaf == "weight" and ("params", *path, "kernel") in flat_template:
            target = ("params", *path, "kernel")
            value = _convert_kernel(value, _is_transposed(module, value, transposed))
        elif leaf == "weight":
            target = ("params", *path, "scale")
        elif leaf == "bias":
            target = ("params", *path, "bias")
        elif leaf == "running_mean":
            target = ("batch_stats", *path, "mean")
        elif leaf == "running_var":
            target = ("batch_stats", *path, "var")
        else:
            target = None
        if target is None or target not in flat_template:
            unmapped.append(key)
            continue
        if target in filled:  # two torch names collapsing onto one flax path
            unmapped.append(f"{key} (duplicate of an earlier key for {'/'.join(target)})")
            continue
        expected = tuple(flat_template[target].shape)
        if value.shape != expected:
            mismatched.append(f"{key} {torch_shape} -> {'/'.join(target)} {expected}")
            filled[target] = None  # reported as a mismatch, not also as missing
            continue
        filled[target] = jnp.asarray(np.ascontiguousarray(value), dtype=flat_template[target].dtype)
    missing = ["/".join(k) for k in flat_template if k not in filled]
    problems = []
    if unmapped:
        problems.append(f"{len(unmapped)} torch key(s) with no flax counterpart: {_listing(unmapped)}")
    if mismatched:
        problems.append(f"{len(mismatched)} shape mismatch(es) (torch shape -> flax leaf, its shape): {_listing(mismatched)}")
    if missing:
        problems.append(f"{len(missing)} flax leaf/leaves not in the state dict: {_listing(missing)}")
    if problems:
        raise PortError("; ".join(problems))
    return traverse_util.unflatten_dict(filled)
