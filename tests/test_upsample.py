"""The depth-to-space upsampling equals the transposed convolution it replaces.

Compared in float64 (x64 for this module only): the two compute the same sums of four-
or-fewer products per input channel in different orders, so they agree to a few float64
roundings (relative 1e-12 leaves a wide margin on any CPU), while a wrong kernel tap (an
unflipped kernel, swapped i/j) is off by O(1).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from unet_jax import models
from unet_jax.config import ModelConfig
from unet_jax.models.layers import DepthToSpaceUp, resolve_upsample
from unet_jax.training.state import init_variables

RTOL = 1e-12


@pytest.fixture(autouse=True)
def float64():
    with jax.enable_x64(True):
        yield


def _close(a, b):
    np.testing.assert_allclose(a, b, rtol=0, atol=RTOL * float(np.abs(b).max()))


@pytest.mark.parametrize("shape", [(2, 5, 7, 3), (1, 1, 1, 8)])
def test_depth_to_space_equals_conv_transpose(shape):
    x = jnp.asarray(np.random.default_rng(0).normal(size=shape))
    ref = nn.ConvTranspose(6, (2, 2), strides=(2, 2), padding="VALID", param_dtype=jnp.float64)
    variables = ref.init(jax.random.key(0), x)
    variables = jax.tree.map(lambda a: a + jnp.asarray(np.random.default_rng(1).normal(size=a.shape)), variables)
    ours = DepthToSpaceUp(6)
    assert jax.tree.map(jnp.shape, ours.init(jax.random.key(0), x)) == jax.tree.map(jnp.shape, variables)
    expected = ref.apply(variables, x)
    assert expected.shape == (shape[0], 2 * shape[1], 2 * shape[2], 6)
    _close(ours.apply(variables, x), expected)
    # a kernel that is not flipped is a different layer: the test can tell
    unflipped = {"params": {"kernel": variables["params"]["kernel"][::-1, ::-1], "bias": variables["params"]["bias"]}}
    assert np.abs(ours.apply(unflipped, x) - expected).max() > 1e-3


def test_ported_pytorch_weights_still_match():
    torch = pytest.importorskip("torch")
    from benchmarks.torch_reference import TWINS
    from benchmarks.torch_reference.port import port_module

    torch.manual_seed(0)
    twin = TWINS["unet"](features=4, depth=2).double().eval()
    model = models.create("unet", features=4, depth=2, upsample="depth_to_space")
    x = np.random.default_rng(3).normal(size=(1, 20, 24, 3))
    template = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, jnp.float64),
                            jax.eval_shape(lambda v: model.init(jax.random.key(0), v), x))
    variables = port_module(twin, template)
    with torch.no_grad():
        expected = twin(torch.from_numpy(x).permute(0, 3, 1, 2)).permute(0, 2, 3, 1).numpy()
    _close(np.asarray(model.apply(variables, x)), expected)


def test_auto_picks_the_measured_form_with_the_same_parameters():
    assert resolve_upsample("auto") == "depth_to_space"
    assert [resolve_upsample(m) for m in ("transpose", "depth_to_space", "bilinear")] == \
        ["transpose", "depth_to_space", "bilinear"]
    assert ModelConfig().upsample == "auto" and models.create("unet").upsample == "auto"
    # The default unet (depth_to_space) and the transposed-convolution unet:
    # one parameter tree, one function.
    x = jnp.asarray(np.random.default_rng(4).normal(size=(2, 16, 16, 3)))
    auto, transpose = (models.create("unet", features=4, depth=2, upsample=m) for m in ("auto", "transpose"))
    variables = init_variables(transpose, x.shape, jax.random.key(0))  # compiled quickly: see its docstring
    assert jax.tree.map(jnp.shape, jax.eval_shape(auto.init, jax.random.key(0), x)) == \
        jax.tree.map(jnp.shape, variables)
    # Random weights (the batch statistics stay as initialised: a negative variance would give NaNs)
    params = {**variables, "params": jax.tree.map(
        lambda a: a + jnp.asarray(np.random.default_rng(5).normal(size=a.shape)), variables["params"])}
    expected = jax.jit(transpose.apply)(params, x)  # compiled: op by op is slow
    assert np.isfinite(np.asarray(expected)).all()
    _close(jax.jit(auto.apply)(params, x), expected)

    def transposed_convs(model):  # convolutions with an input dilated by 2: the transposed ones
        return str(jax.make_jaxpr(lambda v: model.apply(v, x))(params)).count("lhs_dilation=(2, 2)")

    assert transposed_convs(transpose) == 2  # one per decoder level
    assert transposed_convs(auto) == 0
