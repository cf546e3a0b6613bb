"""PyTorch twin of `unet_jax.models.attention_unet.AttentionUNet` (Oktay et al. 2018)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from benchmarks.torch_reference.unet import UNet


class AttentionGate(nn.Module):
    """alpha = sigmoid(BN(psi(relu(BN(W_x x) + BN(W_g g))))), bilinearly resized to x; returns x * alpha.

    W_x: 2x2 stride-2 conv on the skip (to the gate's grid), W_g: 1x1 conv on the gate.
    """

    def __init__(self, skip_channels: int, gate_channels: int, inter: int):
        super().__init__()
        self.skip_conv = nn.Conv2d(skip_channels, inter, 2, stride=2, bias=False)
        self.skip_norm = nn.BatchNorm2d(inter)
        self.gate_conv = nn.Conv2d(gate_channels, inter, 1, bias=False)
        self.gate_norm = nn.BatchNorm2d(inter)
        self.psi_conv = nn.Conv2d(inter, 1, 1, bias=False)
        self.psi_norm = nn.BatchNorm2d(1)

    def forward(self, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        q = F.relu(self.skip_norm(self.skip_conv(x)) + self.gate_norm(self.gate_conv(g)))
        alpha = torch.sigmoid(self.psi_norm(self.psi_conv(q)))
        alpha = F.interpolate(alpha, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return x * alpha


class AttentionUNet(UNet):
    """Attention U-Net, NCHW -> logits NCHW; the twin UNet plus a gate "att{l}" on every skip."""

    def __init__(self, features: int = 32, depth: int = 4, in_channels: int = 3, out_channels: int = 1):
        super().__init__(features, depth, in_channels, out_channels)
        for level in range(depth):
            f = features * 2**level
            setattr(self, f"att{level + 1}", AttentionGate(f, 2 * f, max(f // 2, 1)))

    def gate_skip(self, level: int, skip: torch.Tensor, coarser: torch.Tensor) -> torch.Tensor:
        return getattr(self, f"att{level + 1}")(skip, coarser)
