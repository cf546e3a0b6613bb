"""PyTorch twin of `unet_jax.models.unet.UNet` (Ronneberger et al. 2015), plus the shared blocks."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ConvBlock(nn.Module):
    """(conv3x3 bias-free -> BatchNorm -> ReLU) x 2, names as in the flax `ConvBlock`."""

    def __init__(self, in_channels: int, features: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, features, 3, padding=1, bias=False)
        self.norm1 = nn.BatchNorm2d(features)
        self.conv2 = nn.Conv2d(features, features, 3, padding=1, bias=False)
        self.norm2 = nn.BatchNorm2d(features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.norm1(self.conv1(x)))
        return F.relu(self.norm2(self.conv2(x)))


class UpSample(nn.Module):
    """2x2 stride-2 transposed conv with bias (the flax `UpSample(mode="transpose")`)."""

    def __init__(self, in_channels: int, features: int):
        super().__init__()
        self.up = nn.ConvTranspose2d(in_channels, features, 2, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(x)


def pad_to_multiple(x: torch.Tensor, multiple: int) -> tuple[torch.Tensor, tuple[int, int, int, int]]:
    """Zero-pads NCHW H and W up to a multiple, split evenly with the floor on top/left (as the flax model)."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    pads = (ph // 2, ph - ph // 2, pw // 2, pw - pw // 2)
    if ph or pw:
        x = F.pad(x, (pads[2], pads[3], pads[0], pads[1]))
    return x, pads


def crop_padding(x: torch.Tensor, pads: tuple[int, int, int, int]) -> torch.Tensor:
    top, bottom, left, right = pads
    h, w = x.shape[-2:]
    return x[..., top : h - bottom, left : w - right]


class UNet(nn.Module):
    """U-Net, NCHW (N, in_channels, H, W) -> logits (N, out_channels, H, W); batch norm, transposed-conv up."""

    def __init__(self, features: int = 32, depth: int = 4, in_channels: int = 3, out_channels: int = 1):
        super().__init__()
        self.depth = depth
        ci = in_channels
        for level in range(depth):
            setattr(self, f"enc{level + 1}", ConvBlock(ci, features * 2**level))
            ci = features * 2**level
        self.bottleneck = ConvBlock(ci, features * 2**depth)
        for level in range(depth):
            f = features * 2**level
            setattr(self, f"up{level + 1}", UpSample(2 * f, f))
            setattr(self, f"dec{level + 1}", ConvBlock(2 * f, f))
        self.head = nn.Conv2d(features, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, pads = pad_to_multiple(x, 2**self.depth)
        skips = []
        for level in range(self.depth):
            x = getattr(self, f"enc{level + 1}")(x)
            skips.append(x)
            x = F.max_pool2d(x, 2)
        x = self.bottleneck(x)
        for level in reversed(range(self.depth)):
            skip = self.gate_skip(level, skips[level], x)
            x = getattr(self, f"up{level + 1}")(x)
            x = getattr(self, f"dec{level + 1}")(torch.cat([x, skip], dim=1))
        return crop_padding(self.head(x), pads)

    def gate_skip(self, level: int, skip: torch.Tensor, coarser: torch.Tensor) -> torch.Tensor:
        """The encoder feature that reaches the decoder (all of it; the attention twin gates it)."""
        return skip
