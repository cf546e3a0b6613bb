"""U-Net: parameter counts against a closed-form count, shapes, registry errors."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from unet_jax import models
from unet_jax.training.state import init_variables


def _init(model, shape):
    return jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros(shape), train=False))


def unet_param_formula(features, depth, cin, cout, upsample="transpose"):
    """Trainable parameters of the reference U-Net, counted layer by layer by hand."""

    def block(ci, co):  # two bias-free 3x3 convs, each followed by BN (scale + shift)
        return 9 * ci * co + 2 * co + 9 * co * co + 2 * co

    total, ci = 0, cin
    for level in range(depth):
        total += block(ci, features * 2**level)
        ci = features * 2**level
    total += block(ci, features * 2**depth)
    for level in reversed(range(depth)):
        f = features * 2**level
        k = 4 if upsample == "transpose" else 1  # 2x2 transposed conv, or 1x1 conv after resize
        total += k * (2 * f) * f + f  # up-conv with bias
        total += block(2 * f, f)
    return total + features * cout + cout  # 1x1 head with bias


def test_reference_unet_has_7763041_parameters():
    model = models.create("unet", features=32, depth=4, in_channels=3, out_channels=1)
    v = _init(model, (1, 64, 64, 3))
    assert models.count_params(v["params"]) == 7_763_041  # the PyTorch brain-MRI U-Net


@pytest.mark.parametrize(
    "features,depth,cin,cout,up",
    [(8, 3, 1, 1, "transpose"), (16, 4, 3, 2, "bilinear"), (4, 2, 2, 3, "transpose")],
)
def test_param_count_matches_formula(features, depth, cin, cout, up):
    model = models.create(
        "unet", features=features, depth=depth, in_channels=cin, out_channels=cout, upsample=up
    )
    v = _init(model, (1, 32, 32, cin))
    assert models.count_params(v["params"]) == unet_param_formula(features, depth, cin, cout, up)


@functools.cache
def _shape_test_unet(up: str) -> tuple:
    """(model, variables), initialised once per upsampling mode: the parameters do not depend
    on the image size, and compiling the initialisers costs more than the forward passes."""
    model = models.create("unet", features=4, depth=3, in_channels=1, out_channels=2, upsample=up)
    return model, init_variables(model, (1, 37, 53, 1), jax.random.key(0))


@pytest.mark.parametrize("hw", [(37, 53), (64, 64), (31, 16)])
@pytest.mark.parametrize("up", ["transpose", "bilinear"])
def test_output_shape_equals_input_shape(hw, up):
    model, v = _shape_test_unet(up)
    x = jax.random.normal(jax.random.key(1), (2, *hw, 1))
    y = model.apply(v, x, train=False)
    assert y.shape == (2, *hw, 2)
    y_train, upd = model.apply(v, x, train=True, mutable=["batch_stats"])
    assert y_train.shape == y.shape and np.all(np.isfinite(y_train))


def test_padding_does_not_leak_between_images():
    # Batch elements are independent in eval mode: predicting one image alone equals
    # predicting it inside a batch (would fail if padding/cropping mixed up axes).
    model = models.create("unet", features=4, depth=2, in_channels=1)
    x = jax.random.normal(jax.random.key(2), (3, 21, 19, 1))
    v = init_variables(model, x.shape, jax.random.key(0))
    np.testing.assert_allclose(
        model.apply(v, x, train=False)[1:2], model.apply(v, x[1:2], train=False), atol=1e-5
    )


def test_bf16_compute_keeps_float32_params_and_output():
    model = models.create("unet", features=4, depth=2, in_channels=1, dtype=jnp.bfloat16)
    x = jnp.ones((1, 16, 16, 1))
    v = init_variables(model, x.shape, jax.random.key(0))
    assert all(p.dtype == jnp.float32 for p in jax.tree_util.tree_leaves(v["params"]))
    assert model.apply(v, x, train=False).dtype == jnp.float32


def test_registry_errors_name_the_problem():
    with pytest.raises(ValueError, match="unknown architecture 'vnet'.*unet"):
        models.create("vnet")
    with pytest.raises(ValueError, match="no option.*widht"):
        models.create("unet", widht=3)
    assert "unet" in models.available()


def test_wrong_channel_count_is_a_clear_error():
    model = models.create("unet", features=4, depth=2, in_channels=3)
    with pytest.raises(ValueError, match="3 channels"):
        model.init(jax.random.key(0), jnp.zeros((1, 16, 16, 1)), train=False)


def test_init_variables_gives_the_bits_of_a_default_compile():
    # create_train_state compiles the initialisers at a lower XLA optimisation level on CPU
    # (much faster to compile); the parameters must be exactly those of plain jit(model.init)
    # at XLA's default level 3, named here since tests/conftest.py lowers the default.
    model = models.create("attention_unet", features=4, depth=1, in_channels=3, out_channels=2)
    shape, rng = (1, 16, 16, 3), jax.random.key(7)
    init = jax.jit(model.init, static_argnames="train").lower(rng, jnp.zeros(shape), train=False)
    want = init.compile({"xla_backend_optimization_level": 3})(rng, jnp.zeros(shape))
    got = init_variables(model, shape, rng)
    assert jax.tree.structure(got) == jax.tree.structure(want)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # Under jax.eval_shape (how checkpoints get their template) it traces instead of compiling.
    assert jax.eval_shape(lambda: init_variables(model, shape, rng)) == jax.eval_shape(lambda: want)


@pytest.mark.parametrize("hw", [(8, 8), (7, 10)])
def test_reshape_pool_equals_window_pool_and_its_gradient(hw):
    from unet_jax.models.layers import max_pool2

    # Random normal values: no two in a window tie, so both gradients send each window's
    # cotangent to its one maximum (odd last rows/columns are dropped by both).
    x = jax.random.normal(jax.random.key(3), (2, *hw, 3))
    ct = jax.random.normal(jax.random.key(4), (2, hw[0] // 2, hw[1] // 2, 3))
    outs = {m: max_pool2(x, m) for m in ("window", "reshape")}
    np.testing.assert_array_equal(outs["reshape"], outs["window"])
    grads = {m: jax.grad(lambda x, m=m: (max_pool2(x, m) * ct).sum())(x) for m in ("window", "reshape")}
    np.testing.assert_array_equal(grads["reshape"], grads["window"])
    assert int((grads["window"] != 0).sum()) == ct.size  # one maximum per window got its cotangent


@pytest.mark.parametrize("arch", ["unet", "attention_unet", "unetpp"])
def test_pool_mode_reaches_every_pooling_and_keeps_the_parameters(arch):
    x = jnp.zeros((1, 16, 16, 1))
    prims = {}
    for mode in ("window", "reshape"):
        net = models.create(arch, features=4, depth=2, in_channels=1, pool=mode)
        v = _init(net, x.shape)
        prims[mode] = {e.primitive.name for e in jax.make_jaxpr(lambda v, x: net.apply(v, x, train=False))(v, x).eqns}
        prims[mode, "tree"] = jax.tree.structure(v)
    assert prims["window", "tree"] == prims["reshape", "tree"]
    assert "reduce_window_max" in prims["window"] and "reduce_window_max" not in prims["reshape"]


def _bilinear_up(a: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Resizes (H, W) up to `shape` linearly with half-pixel centres, edges clamped (float64)."""
    for axis, n in enumerate(shape):
        src = np.clip((np.arange(n) + 0.5) * a.shape[axis] / n - 0.5, 0, a.shape[axis] - 1)
        a = np.apply_along_axis(lambda v: np.interp(src, np.arange(v.size), v), axis, a)
    return a


def test_aux_heads_are_upsampled_1x1_heads_on_the_coarser_decoder_levels():
    hw = (21, 27)  # padded to 24 x 32: pads (1, 2) rows and (2, 3) columns
    model = models.create("unet", features=4, depth=3, in_channels=1, aux_heads=2)
    x = jax.random.normal(jax.random.key(1), (2, *hw, 1))
    v = init_variables(model, x.shape, jax.random.key(0))
    heads, upd = jax.jit(functools.partial(
        model.apply, train=True, mutable=["batch_stats", "intermediates"],
        capture_intermediates=lambda m, method: m.name in ("dec2", "dec3")))(v, x)
    assert isinstance(heads, list) and len(heads) == 3
    assert all(h.shape == (2, *hw, 1) and h.dtype == jnp.float32 for h in heads)
    for head, level in zip(heads[1:], (2, 3)):  # 1/2 and 1/4 of the padded 24 x 32
        feature = np.asarray(upd["intermediates"][f"dec{level}"]["__call__"][0], np.float64)
        assert feature.shape[1:3] == (24 // 2 ** (level - 1), 32 // 2 ** (level - 1))
        p = v["params"][f"aux_head{level}"]
        kernel, bias = np.asarray(p["kernel"], np.float64)[0, 0], np.asarray(p["bias"], np.float64)
        logits = feature @ kernel + bias
        want = np.stack([_bilinear_up(logits[n, ..., 0], (24, 32))[1:22, 2:29] for n in range(2)])[..., None]
        # float32 rounding of the 1x1 conv and the resize: a few ulps of the terms' magnitude.
        tol = 64 * np.finfo(np.float32).eps * (np.abs(feature) @ np.abs(kernel) + np.abs(bias)).max()
        np.testing.assert_allclose(np.asarray(head), want, rtol=0, atol=tol)


def test_aux_heads_leave_the_plain_unet_as_it_is():
    # Same initial weights for the shared layers (flax derives each layer's key from its
    # name), the plain network's output as the main head, and only that in evaluation.
    x = jax.random.normal(jax.random.key(3), (2, 12, 12, 3))
    plain = models.create("unet", features=4, depth=2)
    deep = models.create("unet", features=4, depth=2, aux_heads=1)
    vp, vd = init_variables(plain, x.shape, jax.random.key(0)), init_variables(deep, x.shape, jax.random.key(0))
    assert set(vd["params"]) - set(vp["params"]) == {"aux_head2"}
    shared = {"params": {k: p for k, p in vd["params"].items() if k != "aux_head2"}, "batch_stats": vd["batch_stats"]}
    for a, b in zip(jax.tree.leaves(shared), jax.tree.leaves(vp)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    np.testing.assert_array_equal(deep.apply(vd, x, train=False), plain.apply(vp, x, train=False))
    (main, aux), stats_d = deep.apply(vd, x, train=True, mutable=["batch_stats"])
    out, stats_p = plain.apply(vp, x, train=True, mutable=["batch_stats"])
    np.testing.assert_array_equal(main, out)
    assert aux.shape == out.shape and not np.allclose(aux, out)
    for a, b in zip(jax.tree.leaves(stats_d), jax.tree.leaves(stats_p)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_aux_heads_out_of_range_or_on_other_networks_are_refused():
    from unet_jax.config import ConfigError, ModelConfig

    with pytest.raises(ValueError, match="aux_heads must be in 0..2"):
        _init(models.create("unet", features=4, depth=3, aux_heads=3), (1, 16, 16, 3))
    with pytest.raises(ConfigError, match=r"model.aux_heads = 4: must be in 0..depth - 1 = 3"):
        ModelConfig(aux_heads=4)
    for arch in ("unetpp", "resunet34"):
        with pytest.raises(ConfigError, match=f"{arch} has no auxiliary heads; only attention_unet, unet"):
            ModelConfig(arch=arch, aux_heads=1)
    assert ModelConfig(arch="attention_unet", aux_heads=3).aux_heads == 3
    # Attention U-Net inherits them: main and two auxiliary heads at the input size.
    model = models.create("attention_unet", features=4, depth=3, aux_heads=2)
    v = _init(model, (1, 16, 16, 3))
    heads = jax.eval_shape(lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"])[0], v,
                           jnp.zeros((2, 20, 20, 3)))
    assert [h.shape for h in heads] == [(2, 20, 20, 1)] * 3 and {"aux_head2", "aux_head3"} <= set(v["params"])
    # bfloat16 compute: every head's logits come out float32, as the main head's do.
    model = models.create("unet", features=4, depth=3, aux_heads=2, dtype=jnp.bfloat16)
    heads = jax.eval_shape(lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"])[0],
                           _init(model, (1, 16, 16, 3)), jnp.zeros((2, 16, 16, 3)))
    assert [h.dtype for h in heads] == [jnp.float32] * 3
