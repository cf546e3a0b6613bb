"""PyTorch twins of the unet_jax models: the numerical reference for parity tests and benchmarks.

Written for this project (not copied), NCHW, with module names chosen so that
`port.torch_to_flax` maps every state-dict key to the flax model's variables by name.
Needs the optional `bench` extra (torch); torchvision is not required.
"""

from benchmarks.torch_reference.attention_unet import AttentionUNet
from benchmarks.torch_reference.resunet import ResNet34, ResUNet34
from benchmarks.torch_reference.unet import UNet
from benchmarks.torch_reference.unetpp import UNetPlusPlus

TWINS = {"unet": UNet, "attention_unet": AttentionUNet, "unetpp": UNetPlusPlus, "resunet34": ResUNet34}

__all__ = ["TWINS", "AttentionUNet", "ResNet34", "ResUNet34", "UNet", "UNetPlusPlus"]
