"""Building blocks shared by the U-Net family (NHWC throughout)."""

from __future__ import annotations

from typing import Any, Literal

import flax.linen as nn
import jax
import jax.numpy as jnp

from unet_jax.config import POOL_MODES, UPSAMPLE_MODES

Norm = Literal["batch", "group", "none"]
Upsample = Literal["auto", "transpose", "depth_to_space", "bilinear"]
Pool = Literal["window", "reshape"]

# PyTorch's BatchNorm2d defaults (momentum 0.1 == flax momentum 0.9, eps 1e-5), so that
# weights ported from the PyTorch twins behave identically.
BN_MOMENTUM = 0.9
BN_EPSILON = 1e-5


def norm_layer(
    norm: Norm,
    *,
    train: bool,
    dtype: Any = None,
    axis_name: str | None = None,
    name: str | None = None,
) -> Any:
    """A normalisation layer (or identity) for `norm`.

    `axis_name` syncs batch statistics across devices when the step runs under a mapped
    axis of that name (flax's cross-replica batch norm).
    """
    if norm == "batch":
        return nn.BatchNorm(
            use_running_average=not train,
            momentum=BN_MOMENTUM,
            epsilon=BN_EPSILON,
            dtype=dtype,
            axis_name=axis_name,
            name=name,
        )
    if norm == "group":
        return nn.GroupNorm(num_groups=None, group_size=16, epsilon=BN_EPSILON, dtype=dtype, name=name)
    if norm == "none":
        return lambda x: x
    raise ValueError(f"unknown norm {norm!r}; expected one of 'batch', 'group', 'none'")


class ConvBlock(nn.Module):
    """(conv3x3 -> norm -> ReLU) x 2; convs carry a bias only when there is no norm."""

    features: int
    norm: Norm = "batch"
    dtype: Any = None
    bn_axis_name: str | None = None

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        for i in range(2):
            x = nn.Conv(
                self.features,
                (3, 3),
                padding=1,
                use_bias=self.norm == "none",
                dtype=self.dtype,
                name=f"conv{i + 1}",
            )(x)
            x = norm_layer(
                self.norm, train=train, dtype=self.dtype, axis_name=self.bn_axis_name, name=f"norm{i + 1}"
            )(x)
            x = nn.relu(x)
        return x


def resolve_upsample(mode: Upsample) -> str:
    """The implementation "auto" stands for; any other mode as it is.

    "auto" is the faster of the two equal forms of the up-convolution, as measured by
    ``benchmarks.upsample`` (unet's train step): "depth_to_space" on every backend
    measured (CPU: 1.25-1.41x over "transpose" at the DRIVE recipe, with AVX-512 and
    without; H100: 1.82x in float32 and 1.54x in bf16 at batch 32 of 256x256, where
    cuDNN's transposed convolution was the step's dearest kernel). Both have the same
    parameters, so a run trained with either restores into the other.
    """
    return "depth_to_space" if mode == "auto" else mode


class UpSample(nn.Module):
    """Doubles height and width and sets the channel count to `features`.

    "auto" (the default): "depth_to_space", measured faster on CPU and GPU
    (:func:`resolve_upsample`).
    "transpose": a 2x2 stride-2 transposed convolution (the original U-Net's up-conv).
    "depth_to_space": the same layer with the same parameters, computed as one matmul to
      4 x features channels and a depth-to-space reshape. Its 2x2 windows do not overlap,
      so the two are equal; XLA's transposed convolution has slow paths on some backends
      (jax issues 8537, 23783, 31662), and a matmul has none.
    "bilinear": bilinear resize followed by a 1x1 convolution (fewer parameters, no
    checkerboard artefacts).
    """

    features: int
    mode: Upsample = "auto"
    dtype: Any = None

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        mode = resolve_upsample(self.mode)
        if mode == "transpose":
            return nn.ConvTranspose(
                self.features, (2, 2), strides=(2, 2), padding="VALID", dtype=self.dtype, name="up"
            )(x)
        if mode == "depth_to_space":
            return DepthToSpaceUp(self.features, self.dtype, name="up")(x)
        if mode == "bilinear":
            n, h, w, c = x.shape
            x = jax.image.resize(x, (n, 2 * h, 2 * w, c), method="bilinear")
            return nn.Conv(self.features, (1, 1), dtype=self.dtype, name="up")(x)
        raise ValueError(f"unknown upsample mode {self.mode!r}; expected one of {', '.join(UPSAMPLE_MODES)}")


class DepthToSpaceUp(nn.Module):
    """``nn.ConvTranspose(features, (2, 2), strides=(2, 2), padding="VALID")`` as a matmul.

    Same parameters (``kernel`` (2, 2, C, features), ``bias``) and initialisers. Output
    pixel ``(2h + i, 2w + j)`` sees input pixel ``(h, w)`` only, through the kernel tap
    ``(1 - i, 1 - j)`` (flax's transposed convolution correlates with the kernel
    flipped), so the layer is ``einsum(x, flipped kernel)`` reshaped.
    """

    features: int
    dtype: Any = None

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kernel = self.param("kernel", nn.initializers.lecun_normal(), (2, 2, x.shape[-1], self.features))
        bias = self.param("bias", nn.initializers.zeros_init(), (self.features,))
        x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
        n, h, w, _ = x.shape
        y = jnp.einsum("nhwc,ijcd->nhiwjd", x, kernel[::-1, ::-1])
        return y.reshape(n, 2 * h, 2 * w, self.features) + bias


def max_pool2(x: jax.Array, mode: Pool = "window") -> jax.Array:
    """2x2 max pooling with stride 2 (an odd last row or column is dropped, as flax's "VALID").

    "window": flax's ``max_pool`` (``lax.reduce_window``); its gradient is XLA's
      ``select_and_scatter``.
    "reshape": the maximum over each 2x2 block of the array reshaped to (N, H/2, 2, W/2, 2, C).
      The windows do not overlap, so the output is the same; the gradient is a comparison
      with the maximum, element-wise work XLA fuses, instead of ``select_and_scatter``
      (benchmarks.upsample times the two in the train step). Gradients differ only where a
      window holds tied maxima (shared among them instead of given to the first); the
      U-Net family pools ReLU outputs, whose likely tie, 0, gets no gradient from the ReLU.
    """
    if mode == "window":
        return nn.max_pool(x, (2, 2), strides=(2, 2))
    if mode == "reshape":
        n, h, w, c = x.shape
        x = x[:, : h // 2 * 2, : w // 2 * 2]
        return x.reshape(n, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))
    raise ValueError(f"unknown pool mode {mode!r}; expected one of {', '.join(POOL_MODES)}")


def pad_to_multiple(x: jax.Array, multiple: int) -> tuple[jax.Array, tuple[int, int, int, int]]:
    """Zero-pads H and W of an NHWC array up to a multiple of `multiple`, split evenly.

    Returns the padded array and (top, bottom, left, right) for `crop_padding`. DRIVE's
    584x565 images are not a multiple of 2**depth; padding keeps every pooling exact.
    """
    h, w = x.shape[-3], x.shape[-2]
    ph, pw = (-h) % multiple, (-w) % multiple
    pads = (ph // 2, ph - ph // 2, pw // 2, pw - pw // 2)
    if ph or pw:
        x = jnp.pad(x, ((0, 0), (pads[0], pads[1]), (pads[2], pads[3]), (0, 0)))
    return x, pads


def crop_padding(x: jax.Array, pads: tuple[int, int, int, int]) -> jax.Array:
    top, bottom, left, right = pads
    h, w = x.shape[-3], x.shape[-2]
    return x[:, top : h - bottom, left : w - right, :]


def output_logits(x: jax.Array, pads: tuple[int, int, int, int], size: tuple[int, int] | None = None) -> jax.Array:
    """The head's output cropped back to the input size, in float32 at least.

    bfloat16 logits would round the loss (and a resize); float64 (parity tests under x64)
    stays float64. `size` (the padded input's H, W): a coarser head's logits are first
    resized bilinearly (half-pixel centres) to it, e.g. U-Net's auxiliary heads.
    """
    x = x.astype(jnp.promote_types(x.dtype, jnp.float32))
    if size is not None:
        x = jax.image.resize(x, (x.shape[0], *size, x.shape[-1]), method="bilinear")
    return crop_padding(x, pads)
