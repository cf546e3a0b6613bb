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

    Deep supervision (`aux_heads` = k >= 1, as in nnU-Net and MONAI's DynUNet): a 1x1 head
    "aux_head{l}" on each of the decoder levels l = 2 .. k+1 (1/2, 1/4, ... of the input
    size), its logits resized bilinearly (half-pixel centres) to the input size. With
    train=True the network then returns [main logits, aux 1, ..., aux k] and the training
    step averages the loss over them; with train=False only the main logits, so evaluation
    and inference are the plain U-Net's (the auxiliary heads are a training signal only).
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
    aux_heads: int = 0  # deep supervision: auxiliary heads on the k decoder levels below the last

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array | list[jax.Array]:
        if not 0 <= self.aux_heads < self.depth:
            raise ValueError(f"aux_heads must be in 0..{self.depth - 1} (depth - 1), got {self.aux_heads}")
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
        aux = []
        for level in reversed(range(self.depth)):
            f = self.features * 2**level
            skip = self.gate_skip(level, skips[level], x, train)
            x = UpSample(f, self.upsample, self.dtype, name=f"up{level + 1}")(x)
            x = jax.numpy.concatenate([x, skip], axis=-1)
            x = block(f, f"dec{level + 1}")(x, train)
            if 1 <= level <= self.aux_heads:
                # Built in both modes so that init (train=False) creates their parameters.
                aux.append(nn.Conv(self.out_channels, (1, 1), dtype=self.dtype, name=f"aux_head{level + 1}")(x))
        main = output_logits(nn.Conv(self.out_channels, (1, 1), dtype=self.dtype, name="head")(x), pads)
        if not (train and aux):
            return main
        return [main] + [output_logits(a, pads, size=x.shape[1:3]) for a in reversed(aux)]

    def gate_skip(self, level: int, skip: jax.Array, coarser: jax.Array, train: bool) -> jax.Array:
        """What of encoder level `level`'s feature reaches the decoder: all of it, here.

        `coarser` is the decoder feature one level down, before upsampling; subclasses
        (Attention U-Net) use it to gate the skip.
        """
        return skip
