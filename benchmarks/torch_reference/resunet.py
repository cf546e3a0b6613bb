"""PyTorch twin of `unet_jax.models.resunet.ResUNet34`, with a torchvision-shaped ResNet-34.

`ResNet34` is written here (torchvision is not a dependency) with torchvision's module
names (conv1, bn1, layer1..4, blocks' conv1/bn1/conv2/bn2/downsample.0/.1, fc), so a
torchvision `resnet34().state_dict()` loads into it and vice versa.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from benchmarks.torch_reference.unet import ConvBlock, crop_padding, pad_to_multiple


class BasicBlock(nn.Module):
    def __init__(self, in_channels: int, features: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, features, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(features)
        self.conv2 = nn.Conv2d(features, features, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(features)
        self.downsample = None
        if stride != 1 or in_channels != features:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, features, 1, stride=stride, bias=False), nn.BatchNorm2d(features)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        return F.relu(y + (x if self.downsample is None else self.downsample(x)))


class ResNet34(nn.Module):
    """torchvision-shaped resnet34. num_classes=None drops avgpool/fc and `forward` returns
    the five U-Net features [stem 1/2, layer1 1/4, layer2 1/8, layer3 1/16, layer4 1/32]."""

    def __init__(self, in_channels: int = 3, num_classes: int | None = 1000):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        ci = 64
        for stage, (blocks, width) in enumerate(zip((3, 4, 6, 3), (64, 128, 256, 512)), start=1):
            layer = []
            for b in range(blocks):
                layer.append(BasicBlock(ci, width, 2 if b == 0 and stage > 1 else 1))
                ci = width
            setattr(self, f"layer{stage}", nn.Sequential(*layer))
        self.num_classes = num_classes
        if num_classes is not None:
            self.avgpool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(512, num_classes)

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = F.relu(self.bn1(self.conv1(x)))
        out = [x]
        x = self.maxpool(x)
        for stage in range(1, 5):
            x = getattr(self, f"layer{stage}")(x)
            out.append(x)
        return out

    def forward(self, x: torch.Tensor):
        feats = self.features(x)
        if self.num_classes is None:
            return feats
        return self.fc(torch.flatten(self.avgpool(feats[-1]), 1))


class ResUNet34(nn.Module):
    """ResNet-34 encoder + smp-style U-Net decoder (nearest 2x, concat skip, ConvBlock), 1x1 head."""

    def __init__(self, in_channels: int = 3, out_channels: int = 1, decoder_features=(256, 128, 64, 32, 16)):
        super().__init__()
        self.encoder = ResNet34(in_channels, num_classes=None)
        ci = 512
        for k, (f, skip) in enumerate(zip(decoder_features, (256, 128, 64, 64, 0)), start=1):
            setattr(self, f"dec{k}", ConvBlock(ci + skip, f))
            ci = f
        self.head = nn.Conv2d(ci, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, pads = pad_to_multiple(x, 32)
        *skips, x = self.encoder(x)
        for k, skip in enumerate(skips[::-1] + [None], start=1):
            x = F.interpolate(x, scale_factor=2, mode="nearest")
            if skip is not None:
                x = torch.cat([x, skip], dim=1)
            x = getattr(self, f"dec{k}")(x)
        return crop_padding(self.head(x), pads)
