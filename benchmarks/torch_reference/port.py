"""PyTorch twin -> flax variables.

`torch_to_flax` is the library's name-based converter (`unet_jax.models.port`, which
documents the layout rules); this module adds the torch-side conveniences: the exact set
of `ConvTranspose2d` modules read off a live module, and randomised BN statistics so
eval-mode batch norm is exercised by parity checks.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from unet_jax.models.port import PortError, torch_path_to_flax, torch_to_flax

__all__ = ["PortError", "port_module", "randomize_bn_stats", "torch_path_to_flax", "torch_to_flax", "transposed_modules"]


def transposed_modules(module: nn.Module) -> set[str]:
    """State-dict paths of the `ConvTranspose2d` layers in `module` (e.g. {"up1.up", ...})."""
    return {name for name, m in module.named_modules() if isinstance(m, nn.ConvTranspose2d)}


def port_module(module: nn.Module, flax_variables_template: Any) -> dict[str, Any]:
    """flax variables holding `module`'s weights and BN statistics (raises PortError on any mismatch)."""
    return torch_to_flax(module.state_dict(), flax_variables_template, transposed=transposed_modules(module))


@torch.no_grad()
def randomize_bn_stats(module: nn.Module, generator: torch.Generator | None = None) -> None:
    """Random running statistics and affine parameters for every BatchNorm (in place)."""
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.normal_(0.0, 0.2, generator=generator)
            m.running_var.uniform_(0.5, 1.5, generator=generator)
            m.weight.uniform_(0.5, 1.5, generator=generator)
            m.bias.normal_(0.0, 0.2, generator=generator)
