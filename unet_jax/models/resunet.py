"""ResUNet-34: a U-Net decoder on a ResNet-34 encoder (He et al. 2016), optionally ImageNet-initialised.

The decoder follows segmentation_models_pytorch's `Unet("resnet34")` (nearest 2x
upsampling, concatenation with the encoder feature of that resolution, ConvBlock), the
encoder is torchvision's `resnet34` layer for layer so that its state dict loads 1:1
(`load_torchvision_resnet34`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax.core import unfreeze

from unet_jax.models.layers import ConvBlock, norm_layer, output_logits, pad_to_multiple
from unet_jax.models.port import PortError, to_numpy, torch_to_flax

RESNET34_BLOCKS = (3, 4, 6, 3)  # basic blocks per stage (He et al. 2016, Table 1)
RESNET34_WIDTHS = (64, 128, 256, 512)


class BasicBlock(nn.Module):
    """ResNet basic block: conv3x3(stride) -> BN -> ReLU -> conv3x3 -> BN, + shortcut, ReLU.

    The shortcut is the identity, or a 1x1 strided conv + BN where the shape changes
    ("downsample_0"/"downsample_1": torchvision's `downsample` Sequential). (N, H, W, C) ->
    (N, H / strides, W / strides, features).
    """

    features: int
    strides: int = 1
    dtype: Any = None
    bn_axis_name: str | None = None

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        def bn(name: str):
            return norm_layer("batch", train=train, dtype=self.dtype, axis_name=self.bn_axis_name, name=name)

        def conv(f: int, k: int, s: int, name: str):
            return nn.Conv(f, (k, k), strides=(s, s), padding=k // 2, use_bias=False, dtype=self.dtype, name=name)

        y = nn.relu(bn("bn1")(conv(self.features, 3, self.strides, "conv1")(x)))
        y = bn("bn2")(conv(self.features, 3, 1, "conv2")(y))
        if self.strides != 1 or x.shape[-1] != self.features:
            x = bn("downsample_1")(conv(self.features, 1, self.strides, "downsample_0")(x))
        return nn.relu(y + x)


class ResNet34Encoder(nn.Module):
    """torchvision's resnet34 without avgpool/fc; flax names mirror its state-dict keys.

    (N, H, W, C), H and W multiples of 32 -> five features: stem (N, H/2, W/2, 64) after
    conv1/bn1/ReLU, then layer1..layer4 at 1/4, 1/8, 1/16, 1/32 with 64, 128, 256, 512
    channels. Block b of stage s is named "layer{s}_{b}" (torchvision "layer{s}.{b}").
    """

    dtype: Any = None
    bn_axis_name: str | None = None

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> list[jax.Array]:
        x = nn.Conv(64, (7, 7), strides=(2, 2), padding=3, use_bias=False, dtype=self.dtype, name="conv1")(x)
        x = norm_layer("batch", train=train, dtype=self.dtype, axis_name=self.bn_axis_name, name="bn1")(x)
        x = nn.relu(x)
        features = [x]
        x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))  # pads with -inf, like torch
        for stage, (blocks, width) in enumerate(zip(RESNET34_BLOCKS, RESNET34_WIDTHS), start=1):
            for b in range(blocks):
                strides = 2 if b == 0 and stage > 1 else 1
                x = BasicBlock(width, strides, self.dtype, self.bn_axis_name, name=f"layer{stage}_{b}")(x, train)
            features.append(x)
        return features


def _upsample_nearest2(x: jax.Array) -> jax.Array:
    return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)


class ResUNet34(nn.Module):
    """U-Net with a ResNet-34 encoder; NHWC (N, H, W, in_channels) -> logits (N, H, W, out_channels).

    Decoder (segmentation_models_pytorch `Unet("resnet34")` style): starting from layer4
    (1/32, 512 ch), block "dec{k}" (k = 1..5) upsamples 2x (nearest), concatenates the
    encoder feature of the new resolution (layer3 1/16, layer2 1/8, layer1 1/4, stem 1/2;
    none at full resolution) and applies a ConvBlock with `decoder_features[k-1]`
    channels; "head" is a 1x1 conv (smp uses 3x3; 1x1 as in the rest of this family).
    Inputs of any size are zero-padded to a multiple of 32 and the output cropped back.

    ImageNet weights: `load_torchvision_resnet34(variables, path)`.
    """

    in_channels: int = 3
    out_channels: int = 1
    decoder_features: Sequence[int] = (256, 128, 64, 32, 16)
    dtype: Any = None  # computation dtype (e.g. jnp.bfloat16); parameters stay float32
    bn_axis_name: str | None = None

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        if x.ndim != 4 or x.shape[-1] != self.in_channels:
            raise ValueError(
                f"ResUNet34 expects NHWC input with {self.in_channels} channels, got shape {x.shape}"
            )
        if len(self.decoder_features) != 5:
            raise ValueError(f"decoder_features needs 5 widths (1/16 ... 1/1), got {tuple(self.decoder_features)}")
        x, pads = pad_to_multiple(x, 32)
        *skips, x = ResNet34Encoder(self.dtype, self.bn_axis_name, name="encoder")(x, train)
        skips = skips[::-1] + [None]  # layer3, layer2, layer1, stem, (full resolution: none)
        for k, (f, skip) in enumerate(zip(self.decoder_features, skips), start=1):
            x = _upsample_nearest2(x)
            if skip is not None:
                x = jnp.concatenate([x, skip], axis=-1)
            x = ConvBlock(f, "batch", self.dtype, self.bn_axis_name, name=f"dec{k}")(x, train)
        x = nn.Conv(self.out_channels, (1, 1), dtype=self.dtype, name="head")(x)
        return output_logits(x, pads)


def adapt_stem_weight(weight: np.ndarray, in_channels: int) -> np.ndarray:
    """Adapts torchvision's RGB stem kernel (64, 3, 7, 7) to `in_channels` inputs.

    1 channel: summed over RGB (a grey image replicated to RGB gives the same response).
    C > 1 channels: the RGB filters are repeated cyclically (R, G, B, R, ...) and scaled
    by 3 / C, keeping the activation scale for inputs of comparable magnitude (the
    convention of timm's `adapt_input_conv`). C = 3 is returned unchanged.
    """
    weight = np.asarray(weight)
    if in_channels == 3:
        return weight
    if in_channels == 1:
        return weight.sum(axis=1, keepdims=True)
    reps = -(-in_channels // 3)
    return np.tile(weight, (1, reps, 1, 1))[:, :in_channels] * (3.0 / in_channels)


def _read_torch_state_dict(path: str | os.PathLike) -> dict[str, Any]:
    try:
        import torch
    except ImportError as e:  # the file format is torch's pickle; reading it needs torch
        raise ImportError(
            f"reading {path} needs PyTorch (CPU build is enough), e.g. `uv pip install torch`; it is the `bench` extra"
        ) from e
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no such file: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # corrupt file, a pickled nn.Module (needs weights_only=False), ...
        raise ValueError(f"{path} is not a readable torch state dict (torch.load failed: {e})") from e
    if isinstance(obj, Mapping) and not any(hasattr(v, "shape") for v in obj.values()):
        for wrapper in ("state_dict", "model"):  # common checkpoint wrappers
            if isinstance(obj.get(wrapper), Mapping):
                obj = obj[wrapper]
                break
    if not isinstance(obj, Mapping) or not obj or not all(hasattr(v, "shape") for v in obj.values()):
        raise ValueError(f"{path} does not hold a state dict (a mapping of parameter names to tensors); got {type(obj).__name__}")
    return {k.removeprefix("module."): v for k, v in obj.items()}  # DataParallel prefix


def load_torchvision_resnet34(variables: Mapping[str, Any], path: str | os.PathLike) -> dict[str, Any]:
    """Returns `variables` of a `ResUNet34` with its encoder set from a torchvision resnet34 file.

    `path` is a state dict saved with `torch.save(torchvision.models.resnet34(weights=...)
    .state_dict(), path)` (the ImageNet checkpoint torchvision downloads, resnet34-b627a593.pth,
    is such a file); nothing is downloaded here. The classifier (`fc.*`) is ignored; every
    other key must match the encoder (conv1, bn1, layer1..4 incl. BN running statistics).
    The decoder and head are left as they are. If the model has in_channels != 3 the stem
    kernel is adapted with `adapt_stem_weight` (summed over RGB for 1 channel, cycled and
    rescaled otherwise).

    Raises:
      FileNotFoundError / ValueError naming `path` (unreadable, not a state dict, missing,
      unexpected or mismatched keys); ImportError if torch is not installed.
    """
    variables = unfreeze(dict(variables))
    try:
        template = {col: variables[col]["encoder"] for col in ("params", "batch_stats")}
    except KeyError as e:
        raise ValueError("variables must be those of a ResUNet34 (params and batch_stats with an 'encoder')") from e
    state = {k: v for k, v in _read_torch_state_dict(path).items() if not k.startswith("fc.")}
    in_channels = template["params"]["conv1"]["kernel"].shape[2]
    if "conv1.weight" in state and in_channels != 3:
        state["conv1.weight"] = adapt_stem_weight(to_numpy(state["conv1.weight"]), in_channels)
    try:
        encoder = torch_to_flax(state, template, transposed=())
    except PortError as e:
        raise ValueError(f"{path} is not a torchvision resnet34 state dict: {e}") from None
    out = dict(variables)
    for col in ("params", "batch_stats"):
        out[col] = {**variables[col], "encoder": encoder[col]}
    return out


__all__ = ["BasicBlock", "ResNet34Encoder", "ResUNet34", "adapt_stem_weight", "load_torchvision_resnet34"]
