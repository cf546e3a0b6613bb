"""UNet++ (Zhou et al. 2018, "UNet++: A Nested U-Net Architecture for Medical Image Segmentation").

Nested, dense skip pathways between the encoder and decoder, deep supervision on the
first row of nodes, and "model pruning" at inference (evaluate only a sub-network).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from unet_jax.models.layers import ConvBlock, Norm, Pool, Upsample, UpSample, max_pool2, output_logits, pad_to_multiple


class UNetPlusPlus(nn.Module):
    """UNet++ on NHWC inputs (N, H, W, in_channels).

    Node X(i, j) sits at resolution level i (H / 2**i, `features * 2**i` channels) and
    column j. X(i, 0) is the encoder (ConvBlock of the input, or of the 2x2 max-pool of
    X(i-1, 0)); for j >= 1

        X(i, j) = ConvBlock(concat[X(i, 0), ..., X(i, j-1), Up(X(i+1, j-1))])

    where Up is `UpSample` (a 2x2 up-convolution to level i's width by default), as in
    `UNet`. Flax names: nodes "x{i}_{j}", their up-samplers "up{i}_{j}", heads "head{j}".

    Outputs (logits, float32, cropped to (N, H, W, out_channels)):
      * deep_supervision=True: a 1x1 head on each of X(0, 1) ... X(0, depth).
        - train=True: the list of the `depth` head logits (the training step averages
          the loss over them).
        - train=False, inference_head=None: the mean of the heads' *logits* (the paper's
          "accurate mode"). Averaging logits, not probabilities, keeps the output a plain
          logits array that every loss, metric and `sigmoid`/`softmax` downstream accepts;
          sigmoid(mean logit) is the normalised geometric mean of the heads' odds, which
          differs slightly from the mean of their probabilities when the heads disagree.
        - train=False, inference_head=k (1 <= k <= depth): head k only (the paper's "fast
          mode" / model pruning). Only nodes X(i, j) with i + j <= k are built and run,
          so compute drops with k; variables from the full network apply unchanged (the
          unused ones are ignored).
      * deep_supervision=False: a single 1x1 head on X(0, depth), in both modes
        (inference_head may then only be None or depth).

    `inference_head` is ignored when train=True: training always runs the full network.
    `all_heads` (via `model.apply(v, x, method="all_heads")`) returns the head list in
    either mode, e.g. to score every pruning level from one evaluation.

    Inputs of any height/width are zero-padded to a multiple of 2**depth (also when
    pruned, so a pruned head equals the full network's head exactly) and cropped back.
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
    deep_supervision: bool = True
    inference_head: int | None = None

    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array | list[jax.Array]:
        if train:
            heads = self._forward(x, train, self.depth)
            return heads if self.deep_supervision else heads[0]
        if self.inference_head is not None:
            return self._forward(x, train, self.inference_head)[-1]
        heads = self._forward(x, train, self.depth)
        return sum(heads[1:], heads[0]) / len(heads) if len(heads) > 1 else heads[0]

    def all_heads(self, x: jax.Array, train: bool = False) -> list[jax.Array]:
        """Logits of every head, X(0, 1) ... X(0, depth) (just X(0, depth) without deep supervision)."""
        return self._forward(x, train, self.depth)

    @nn.compact
    def _forward(self, x: jax.Array, train: bool, last: int) -> list[jax.Array]:
        """Builds nodes X(i, j) with i + j <= `last`; returns the logits of heads 1..last."""
        if x.ndim != 4 or x.shape[-1] != self.in_channels:
            raise ValueError(
                f"UNetPlusPlus expects NHWC input with {self.in_channels} channels, got shape {x.shape}"
            )
        if not 1 <= last <= self.depth:
            raise ValueError(f"inference_head must be in 1..{self.depth} (depth), got {last}")
        if not self.deep_supervision and last != self.depth:
            raise ValueError(
                f"without deep supervision the only head is X(0,{self.depth}); inference_head={last} needs deep_supervision=True"
            )
        x, pads = pad_to_multiple(x, 2**self.depth)
        block = lambda i, j: ConvBlock(self.features * 2**i, self.norm, self.dtype, self.bn_axis_name, name=f"x{i}_{j}")

        nodes: dict[tuple[int, int], jax.Array] = {}
        for i in range(last + 1):  # encoder column X(i, 0)
            nodes[i, 0] = block(i, 0)(x if i == 0 else max_pool2(nodes[i - 1, 0], self.pool), train)
        for j in range(1, last + 1):
            for i in range(last + 1 - j):
                up = UpSample(self.features * 2**i, self.upsample, self.dtype, name=f"up{i}_{j}")(nodes[i + 1, j - 1])
                dense = [nodes[i, k] for k in range(j)] + [up]
                nodes[i, j] = block(i, j)(jnp.concatenate(dense, axis=-1), train)

        columns = range(1, last + 1) if self.deep_supervision else [self.depth]
        return [
            output_logits(nn.Conv(self.out_channels, (1, 1), dtype=self.dtype, name=f"head{j}")(nodes[0, j]), pads)
            for j in columns
        ]
