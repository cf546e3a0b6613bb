"""PyTorch twin of `unet_jax.models.unetpp.UNetPlusPlus` (Zhou et al. 2018)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from benchmarks.torch_reference.unet import ConvBlock, UpSample, crop_padding, pad_to_multiple


class UNetPlusPlus(nn.Module):
    """UNet++, NCHW -> logits NCHW. Nodes "x{i}_{j}", up-samplers "up{i}_{j}", heads "head{j}".

    Training mode: the list of head logits (deep supervision) or the single head. Eval
    mode: the mean of the heads' logits, or head `inference_head` computing only the
    nodes with i + j <= inference_head.
    """

    def __init__(
        self,
        features: int = 32,
        depth: int = 4,
        in_channels: int = 3,
        out_channels: int = 1,
        deep_supervision: bool = True,
        inference_head: int | None = None,
    ):
        super().__init__()
        self.depth, self.deep_supervision, self.inference_head = depth, deep_supervision, inference_head
        width = lambda i: features * 2**i
        for i in range(depth + 1):
            self.add_module(f"x{i}_0", ConvBlock(in_channels if i == 0 else width(i - 1), width(i)))
        for j in range(1, depth + 1):
            for i in range(depth + 1 - j):
                self.add_module(f"up{i}_{j}", UpSample(width(i + 1), width(i)))
                self.add_module(f"x{i}_{j}", ConvBlock((j + 1) * width(i), width(i)))
        for j in range(1, depth + 1) if deep_supervision else [depth]:
            self.add_module(f"head{j}", nn.Conv2d(features, out_channels, 1))

    def heads(self, x: torch.Tensor, last: int | None = None) -> list[torch.Tensor]:
        """Logits of heads 1..last (or only X(0, depth)'s without deep supervision)."""
        last = self.depth if last is None else last
        x, pads = pad_to_multiple(x, 2**self.depth)
        node = lambda i, j: getattr(self, f"x{i}_{j}")
        nodes = {}
        for i in range(last + 1):
            nodes[i, 0] = node(i, 0)(x if i == 0 else F.max_pool2d(nodes[i - 1, 0], 2))
        for j in range(1, last + 1):
            for i in range(last + 1 - j):
                up = getattr(self, f"up{i}_{j}")(nodes[i + 1, j - 1])
                nodes[i, j] = node(i, j)(torch.cat([nodes[i, k] for k in range(j)] + [up], dim=1))
        columns = range(1, last + 1) if self.deep_supervision else [self.depth]
        return [crop_padding(getattr(self, f"head{j}")(nodes[0, j]), pads) for j in columns]

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        if self.training:
            heads = self.heads(x)
            return heads if self.deep_supervision else heads[0]
        if self.inference_head is not None:
            return self.heads(x, self.inference_head)[-1]
        return torch.stack(self.heads(x)).mean(0)
