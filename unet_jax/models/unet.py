"""U-Net (Ronneberger et al. 2015), the encoder-decoder with skip connections."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax

from unet_jax.models.layers import ConvBlock, Norm, Pool, Upsample, UpSample, max_pool2, output_logits, pad_to_multiple


class UNet(nn.Module):
    """U-Net on NHWC inputs; returns logits of shape (N, H, W, out_channels).

    Width doubles at each of the `depth` poolings: with features=32, depth=4 the encoder
    has 32, 64, 128, 256 channels and the bottleneck 512 (7,763,041 parameters with batch
    norm and transposed-conv upsampling, the brain-MRI reference U-Net). Inputs of any
    height/width are zero-padded to a multiple of 2**depth and the output cropped back.
    """

    features: int = 32
    depth: int = 4
    in_channels: int = 3
    out_channels: int = 1
    norm: Norm = "batch"
    upsample: Upsample = "auto"
    pool: Pool = "window"  # see layers.max_pool2
    dtype: Any = None  # computation dtype (e.g. jnp.bfloat16); parameters stay float32
    bn_axis_name: str | None = None

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        if x.ndim != 4 or x.shape[-1] != self.in_channels:
            raise ValueError(
                f"{type(self).__name__} expects NHWC input with {self.in_channels} channels, got shape {x.shape}"
            )
        x, pads = pad_to_multiple(x, 2**self.depth)
        block = lambda f, name: ConvBlock(f, self.norm, self.dtype, self.bn_axis_name, name=name)

        skips = []
        for level in range(self.depth):
            x = block(self.features * 2**level, f"enc{level + 1}")(x, train)
            skips.append(x)
            x = max_pool2(x, self.pool)
        x = block(self.features * 2**self.depth, "bottleneck")(x, train)
        for level in reversed(range(self.depth)):
            f = self.features * 2**level
            skip = self.gate_skip(level, skips[level], x, train)
            x = UpSample(f, self.upsample, self.dtype, name=f"up{level + 1}")(x)
            x = jax.numpy.concatenate([x, skip], axis=-1)
            x = block(f, f"dec{level + 1}")(x, train)
        x = nn.Conv(self.out_channels, (1, 1), dtype=self.dtype, name="head")(x)
        return output_logits(x, pads)

    def gate_skip(self, level: int, skip: jax.Array, coarser: jax.Array, train: bool) -> jax.Array:
        """What of encoder level `level`'s feature reaches the decoder: all of it, here.

        `coarser` is the decoder feature one level down, before upsampling; subclasses
        (Attention U-Net) use it to gate the skip.
        """
        return skip
