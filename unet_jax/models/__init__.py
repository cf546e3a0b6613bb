"""Model registry: `create("unet", features=32, ...)` builds any network of the family."""

from __future__ import annotations

import dataclasses
from typing import Callable

import flax.linen as nn

from unet_jax.models.attention_unet import AttentionUNet
from unet_jax.models.resunet import ResUNet34, load_torchvision_resnet34
from unet_jax.models.unet import UNet
from unet_jax.models.unetpp import UNetPlusPlus

_REGISTRY: dict[str, type[nn.Module]] = {}


def register(name: str) -> Callable[[type[nn.Module]], type[nn.Module]]:
    """Class decorator adding a model to the registry under `name`."""

    def wrap(cls: type[nn.Module]) -> type[nn.Module]:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is already registered")
        _REGISTRY[name] = cls
        return cls

    return wrap


register("unet")(UNet)
register("attention_unet")(AttentionUNet)
register("unetpp")(UNetPlusPlus)
register("resunet34")(ResUNet34)


def available() -> list[str]:
    """Names accepted by `create` (and by `--arch`)."""
    return sorted(_REGISTRY)


def options(arch: str) -> set[str]:
    """The configuration fields `create(arch, ...)` accepts."""
    if arch not in _REGISTRY:
        raise ValueError(f"unknown architecture {arch!r}; available: {', '.join(available())}")
    return {f.name for f in dataclasses.fields(_REGISTRY[arch]) if f.init and f.name not in ("parent", "name")}


def create(arch: str, **cfg) -> nn.Module:
    """Builds the network `arch` with fields `cfg` (e.g. features, depth, in_channels)."""
    if arch not in _REGISTRY:
        raise ValueError(f"unknown architecture {arch!r}; available: {', '.join(available())}")
    cls = _REGISTRY[arch]
    fields = options(arch)
    unknown = sorted(set(cfg) - fields)
    if unknown:
        raise ValueError(f"{arch} has no option(s) {', '.join(unknown)}; its options are {', '.join(sorted(fields))}")
    return cls(**cfg)


def count_params(params) -> int:
    """Number of trainable scalars in a params pytree."""
    import jax

    return sum(int(x.size) for x in jax.tree_util.tree_leaves(params))


__all__ = [
    "AttentionUNet",
    "ResUNet34",
    "UNet",
    "UNetPlusPlus",
    "available",
    "count_params",
    "create",
    "load_torchvision_resnet34",
    "options",
    "register",
]
