"""Attention U-Net (Oktay et al. 2018, "Attention U-Net: Learning Where to Look for the Pancreas").

A U-Net whose skip connections pass through additive attention gates: the decoder
feature one level coarser (the gating signal g) decides, per pixel, how much of the
encoder feature x reaches the decoder.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax

from unet_jax.models.layers import Norm, norm_layer
from unet_jax.models.unet import UNet


class AttentionGate(nn.Module):
    """Additive attention gate (Oktay et al. 2018, Fig. 2 and Eq. 1-2).

    alpha = sigmoid(psi(relu(W_x(x) + W_g(g)))), resampled bilinearly to x's grid; returns
    x * alpha. Shapes: skip x (N, 2h, 2w, Cx), gate g (N, h, w, Cg) -> (N, 2h, 2w, Cx).

    W_g is a 1x1 conv on g. W_x brings x down to the gate's grid; it is a 2x2 stride-2
    conv, i.e. the paper's channel-wise 1x1 transform applied to x's 2x2 space-to-depth
    blocks (the authors' released code, `sub_sample_kernel_size=2`), so that every skip
    pixel contributes (a strided 1x1 conv would ignore three pixels in four). W_x, W_g
    and psi are followed by batch norm as in the widely used reference implementation
    (LeeJunHyun/Image_Segmentation `Attention_block`); convs carry a bias only when no
    norm follows (a bias before batch norm is cancelled by its mean subtraction). psi's
    norm is batch norm when `norm="batch"` and nothing otherwise (one channel is too few
    for group norm).
    """

    inter_features: int
    norm: Norm = "batch"
    dtype: Any = None
    bn_axis_name: str | None = None

    @nn.compact
    def __call__(self, x: jax.Array, g: jax.Array, train: bool) -> jax.Array:
        n, h, w, _ = x.shape
        if g.shape[1:3] != (h // 2, w // 2):
            raise ValueError(f"gate {g.shape} must be half the size of the skip {x.shape}")
        has_norm = self.norm != "none"

        def norm(name: str, kind: Norm = self.norm):
            return norm_layer(kind, train=train, dtype=self.dtype, axis_name=self.bn_axis_name, name=name)

        theta_x = nn.Conv(
            self.inter_features, (2, 2), strides=(2, 2), padding="VALID", use_bias=not has_norm, dtype=self.dtype, name="skip_conv"
        )(x)
        theta_x = norm("skip_norm")(theta_x)
        phi_g = nn.Conv(self.inter_features, (1, 1), use_bias=not has_norm, dtype=self.dtype, name="gate_conv")(g)
        phi_g = norm("gate_norm")(phi_g)
        q = nn.relu(theta_x + phi_g)
        psi_norm: Norm = "batch" if self.norm == "batch" else "none"
        psi = nn.Conv(1, (1, 1), use_bias=psi_norm == "none", dtype=self.dtype, name="psi_conv")(q)
        alpha = nn.sigmoid(norm("psi_norm", psi_norm)(psi))
        # Half-pixel-centre bilinear resize == torch interpolate(align_corners=False) at 2x.
        alpha = jax.image.resize(alpha, (n, h, w, 1), method="bilinear")
        return x * alpha


class AttentionUNet(UNet):
    """Attention U-Net on NHWC inputs; returns logits of shape (N, H, W, out_channels).

    The U-Net of `unet.UNet` (same fields, same parameter names for the shared layers)
    with an `AttentionGate` on every skip: at decoder level l the gate is the coarser
    decoder feature (the bottleneck for the deepest level) before it is upsampled, the
    gate's intermediate width is half the skip's channels, and the gated skip is
    concatenated after the upsampled feature. Inputs of any height/width are zero-padded
    to a multiple of 2**depth and the output cropped back.
    """

    def gate_skip(self, level: int, skip: jax.Array, coarser: jax.Array, train: bool) -> jax.Array:
        f = self.features * 2**level
        gate = AttentionGate(max(f // 2, 1), self.norm, self.dtype, self.bn_axis_name, name=f"att{level + 1}")
        return gate(skip, coarser, train)
