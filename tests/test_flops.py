"""benchmarks.flops: convolution and matmul FLOPs from the jaxpr, against closed forms and XLA's CPU count."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest

from benchmarks.flops import model_flops
from unet_jax.models.layers import DepthToSpaceUp


def _conv(x, w, padding="SAME"):
    return jax.lax.conv_general_dilated(x, w, (1, 1), padding, dimension_numbers=("NHWC", "HWIO", "NHWC"))


def test_conv_is_two_times_outputs_times_inputs_times_taps():
    x, w = jnp.ones((2, 12, 10, 3)), jnp.ones((3, 3, 3, 5))
    assert model_flops(_conv, x, w) == 2 * (2 * 12 * 10 * 5) * 3 * 9


def test_valid_conv_matches_xla_cpu_cost_analysis():
    # Without padding every tap is real, so XLA's own count (CPU backend) is the same number.
    x, w = jnp.ones((2, 12, 10, 3)), jnp.ones((3, 3, 3, 5))
    f = jax.jit(lambda x, w: _conv(x, w, "VALID"))
    cost = f.lower(x, w).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    assert model_flops(f, x, w) == cost["flops"] == 2 * (2 * 10 * 8 * 5) * 3 * 9


def test_conv_gradients_cost_two_more_convolutions():
    # d/dx and d/dw of a stride-1 convolution are convolutions with the same multiply count.
    x, w = jnp.ones((2, 8, 8, 3)), jnp.ones((3, 3, 3, 4))
    grad = jax.grad(lambda x, w: _conv(x, w).sum(), argnums=(0, 1))
    assert model_flops(grad, x, w) == 3 * model_flops(_conv, x, w)


def test_matmul_and_nested_jit():
    a, b = jnp.ones((4, 6, 7)), jnp.ones((7, 5))
    assert model_flops(jax.jit(lambda a, b: jax.jit(jnp.matmul)(a, b)), a, b) == 2 * 4 * 6 * 5 * 7


def test_scan_body_counts_length_times():
    a = jnp.ones((6, 6))
    body = lambda c, _: (c @ a, None)  # noqa: E731
    assert model_flops(lambda c: jax.lax.scan(body, c, None, length=5)[0], a) == 5 * 2 * 6**3


@pytest.mark.parametrize("cin,cout", [(3, 4), (8, 2)])
def test_transposed_conv_counts_real_products_like_its_matmul_form(cin, cout):
    # A 2x2 stride-2 transposed convolution multiplies each input pixel by 4 taps: the
    # zeros its dilated input holds are not counted, so it costs what its matmul form does.
    x = jnp.ones((2, 5, 6, cin))
    tconv = nn.ConvTranspose(cout, (2, 2), strides=(2, 2), padding="VALID")
    d2s = DepthToSpaceUp(cout)
    expected = 2 * (2 * 5 * 6) * 4 * cin * cout
    for layer in (tconv, d2s):
        v = layer.init(jax.random.key(0), x)
        assert model_flops(layer.apply, v, x) == expected


def test_cond_counts_its_dearest_branch():
    a = jnp.ones((6, 6))
    f = lambda p, a: jax.lax.cond(p, lambda a: a @ a, lambda a: a, a)  # noqa: E731
    assert model_flops(f, True, a) == 2 * 6**3
