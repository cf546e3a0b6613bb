"""Attention U-Net, UNet++ and ResUNet-34: shapes, registry, UNet++ pruning, weight porting and loading."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from unet_jax import models
from unet_jax.models.port import PortError, torch_path_to_flax, torch_to_flax
from unet_jax.models.resunet import adapt_stem_weight, load_torchvision_resnet34

SMALL = {
    "unet": dict(features=4, depth=3),
    "attention_unet": dict(features=4, depth=3),
    "unetpp": dict(features=4, depth=3),
    "resunet34": dict(decoder_features=(16, 8, 8, 8, 4)),  # the encoder is fixed-size
}


def _cost_flops(compiled) -> float:
    """XLA's FLOP count; cost_analysis() is a dict or a list of per-module dicts across jax versions."""
    cost = compiled.cost_analysis()
    if isinstance(cost, dict):
        cost = [cost]
    return float(sum(c.get("flops", 0.0) for c in cost))


def _shapes(model, x):
    return jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), x)


def random_variables(template, seed=0):
    """Well-scaled random variables shaped like `template`, drawn with numpy.

    Cheaper than `model.init` here: jax's initialisers compile a random kernel per
    parameter shape, which dominates a small test on a busy CPU.
    """
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        name, shape = path[-1].key, leaf.shape
        if name == "kernel":
            return rng.normal(0, 1 / np.sqrt(np.prod(shape[:-1])), shape).astype(np.float32)
        if name in ("scale", "var"):
            return rng.uniform(0.5, 1.5, shape).astype(np.float32)
        return rng.normal(0, 0.2, shape).astype(np.float32)  # bias, mean

    return jax.tree_util.tree_map_with_path(draw, template)


def test_registry_has_the_family():
    assert {"unet", "attention_unet", "unetpp", "resunet34"} <= set(models.available())
    assert isinstance(models.create("unetpp", deep_supervision=False), models.UNetPlusPlus)
    with pytest.raises(ValueError, match="no option.*features"):
        models.create("resunet34", features=8)  # the ResNet encoder has no width knob


@pytest.mark.parametrize("arch", ["attention_unet", "unetpp", "resunet34"])
def test_odd_sizes_round_trip(arch):
    model = models.create(arch, in_channels=2, out_channels=3, **SMALL[arch])
    x = jax.ShapeDtypeStruct((2, 37, 45, 2), jnp.float32)
    v = _shapes(model, x)
    y = jax.eval_shape(lambda v, x: model.apply(v, x, train=False), v, x)
    assert y.shape == (2, 37, 45, 3) and y.dtype == jnp.float32
    y_train, _ = jax.eval_shape(lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"]), v, x)
    heads = y_train if isinstance(y_train, list) else [y_train]
    assert len(heads) == (3 if arch == "unetpp" else 1)  # deep supervision: one head per X(0, j)
    assert all(h.shape == y.shape and h.dtype == jnp.float32 for h in heads)
    with pytest.raises(ValueError, match="2 channels"):
        jax.eval_shape(model.apply, v, jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32))


def test_attention_unet_bf16_keeps_float32_params_and_output():
    model = models.create("attention_unet", features=4, depth=2, in_channels=1, dtype=jnp.bfloat16)
    x = jax.ShapeDtypeStruct((1, 16, 16, 1), jnp.float32)
    v = _shapes(model, x)
    assert all(p.dtype == jnp.float32 for p in jax.tree_util.tree_leaves(v["params"]))
    assert jax.eval_shape(model.apply, v, x).dtype == jnp.float32


class TestUNetPlusPlusPruning:
    cfg = dict(features=4, depth=3, in_channels=1)
    x = np.random.default_rng(3).normal(size=(2, 21, 27, 1)).astype(np.float32)

    @pytest.fixture(scope="class")
    @classmethod
    def variables(cls):
        return random_variables(_shapes(models.create("unetpp", **cls.cfg), cls.x))

    def test_pruned_head_equals_full_head_in_eval_and_costs_less(self, variables):
        full = models.create("unetpp", **self.cfg)
        heads = jax.jit(lambda v, x: full.apply(v, x, train=False, method="all_heads"))(variables, self.x)
        assert len(heads) == 3
        flops = []
        for k in (1, 2, 3):
            pruned = models.create("unetpp", inference_head=k, **self.cfg)
            compiled = jax.jit(pruned.apply).lower(variables, self.x).compile()
            np.testing.assert_allclose(compiled(variables, self.x), heads[k - 1], atol=1e-6)
            flops.append(_cost_flops(compiled))
        compiled = jax.jit(full.apply).lower(variables, self.x).compile()
        # Accurate mode averages the heads' logits.
        np.testing.assert_allclose(compiled(variables, self.x), sum(heads) / 3, atol=1e-6)
        assert 0 < flops[0] < flops[1] < flops[2] <= _cost_flops(compiled)

    def test_pruned_network_builds_only_its_nodes(self):
        pruned = models.create("unetpp", inference_head=1, **self.cfg)
        assert set(_shapes(pruned, self.x)["params"]) == {"x0_0", "x1_0", "up0_1", "x0_1", "head1"}

    def test_train_mode_returns_every_head(self, variables):
        full = models.create("unetpp", inference_head=1, **self.cfg)  # ignored in training
        train = lambda v, x: full.apply(v, x, train=True, mutable=["batch_stats"])
        train_heads, _ = jax.eval_shape(train, variables, self.x)
        assert isinstance(train_heads, list) and len(train_heads) == 3
        assert all(h.shape == (2, 21, 27, 1) for h in train_heads)

    def test_bad_heads_are_rejected(self):
        with pytest.raises(ValueError, match="1..3"):
            _shapes(models.create("unetpp", inference_head=4, **self.cfg), self.x)
        with pytest.raises(ValueError, match="deep_supervision"):
            _shapes(models.create("unetpp", deep_supervision=False, inference_head=2, **self.cfg), self.x)

    def test_without_deep_supervision_one_head_in_both_modes(self):
        model = models.create("unetpp", deep_supervision=False, **self.cfg)
        v = _shapes(model, self.x)
        assert [k for k in v["params"] if k.startswith("head")] == ["head3"]
        y, _ = jax.eval_shape(lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"]), v, self.x)
        assert isinstance(y, jax.ShapeDtypeStruct) and y.shape == (2, 21, 27, 1)


def test_resunet34_parameter_count():
    # torchvision resnet34 minus fc (21,284,672) + decoder (3,151,552) + 1x1 head (17); the
    # segmentation_models_pytorch Unet("resnet34") has 24,436,369 with its 3x3 head.
    model = models.create("resunet34")
    v = _shapes(model, jnp.zeros((1, 64, 64, 3)))
    assert models.count_params(v["params"]) == 24_436_241
    assert models.count_params(v["params"]["encoder"]) == 21_284_672


# --------------------------------------------------------------------------- porting (numpy)


def test_torch_path_rule():
    assert torch_path_to_flax("encoder.layer1.0.downsample.1") == ("encoder", "layer1_0", "downsample_1")
    assert torch_path_to_flax("x0_1.conv1") == ("x0_1", "conv1")


def test_port_converts_layouts_and_rejects_mismatches():
    import flax.linen as nn

    class Tiny(nn.Module):
        @nn.compact
        def __call__(self, x, train=False):
            x = nn.Conv(4, (3, 3), use_bias=False, name="conv")(x)
            x = nn.BatchNorm(use_running_average=not train, name="bn")(x)
            return nn.Dense(2, name="fc")(x)

    tmpl = _shapes(Tiny(), jnp.zeros((1, 5, 5, 3)))
    rng = np.random.default_rng(0)
    sd = {
        "conv.weight": rng.normal(size=(4, 3, 3, 3)).astype(np.float32),
        "bn.weight": np.ones(4, np.float32),
        "bn.bias": np.zeros(4, np.float32),
        "bn.running_mean": np.arange(4, dtype=np.float32),
        "bn.running_var": np.ones(4, np.float32),
        "bn.num_batches_tracked": np.array(3),
        "fc.weight": rng.normal(size=(2, 4)).astype(np.float32),
        "fc.bias": np.zeros(2, np.float32),
    }
    v = torch_to_flax(sd, tmpl)
    np.testing.assert_array_equal(v["params"]["conv"]["kernel"], sd["conv.weight"].transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(v["params"]["fc"]["kernel"], sd["fc.weight"].T)
    np.testing.assert_array_equal(v["batch_stats"]["bn"]["mean"], sd["bn.running_mean"])

    with pytest.raises(PortError, match=r"no flax counterpart: extra\.weight"):
        torch_to_flax({**sd, "extra.weight": np.zeros(3)}, tmpl)
    with pytest.raises(PortError, match=r"fc\.weight \(3, 4\) -> params/fc/kernel \(4, 2\)"):
        torch_to_flax({**sd, "fc.weight": np.zeros((3, 4), np.float32)}, tmpl)
    with pytest.raises(PortError, match="not in the state dict: batch_stats/bn/var"):
        torch_to_flax({k: a for k, a in sd.items() if k != "bn.running_var"}, tmpl)


def test_adapt_stem_weight():
    w = np.random.default_rng(0).normal(size=(64, 3, 7, 7))
    np.testing.assert_allclose(adapt_stem_weight(w, 1), w.sum(1, keepdims=True))
    np.testing.assert_array_equal(adapt_stem_weight(w, 3), w)
    w4 = adapt_stem_weight(w, 4)
    np.testing.assert_allclose(w4, np.concatenate([w, w[:, :1]], axis=1) * 0.75)


# --------------------------------------------------------------------------- pretrained loading (torch)


@pytest.fixture(scope="module")
def resnet34_file(tmp_path_factory):
    torch = pytest.importorskip("torch")
    from benchmarks.torch_reference.port import randomize_bn_stats
    from benchmarks.torch_reference.resunet import ResNet34

    torch.manual_seed(0)
    net = ResNet34()  # torchvision-shaped, with fc: what torchvision's resnet34().state_dict() holds
    randomize_bn_stats(net)
    path = tmp_path_factory.mktemp("weights") / "resnet34.pth"
    torch.save(net.state_dict(), path)
    return net.eval(), path


def test_load_torchvision_resnet34_reproduces_the_encoder(resnet34_file):
    net, path = resnet34_file
    model = models.create("resunet34", **SMALL["resunet34"])
    v = random_variables(_shapes(model, jnp.zeros((1, 32, 32, 3))))
    loaded = load_torchvision_resnet34(v, path)
    sd = net.state_dict()
    enc_p, enc_s = loaded["params"]["encoder"], loaded["batch_stats"]["encoder"]
    np.testing.assert_array_equal(enc_p["conv1"]["kernel"], sd["conv1.weight"].numpy().transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(enc_p["layer2_0"]["downsample_0"]["kernel"], sd["layer2.0.downsample.0.weight"].numpy().transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(enc_p["layer3_5"]["bn2"]["scale"], sd["layer3.5.bn2.weight"].numpy())
    np.testing.assert_array_equal(enc_s["layer4_2"]["bn2"]["var"], sd["layer4.2.bn2.running_var"].numpy())
    # Every tensor but the classifier lands somewhere, each exactly once.
    n_loaded = sum(a.size for a in jax.tree_util.tree_leaves((enc_p, enc_s)))
    assert n_loaded == sum(t.numel() for k, t in sd.items() if not k.startswith("fc.") and "num_batches" not in k)
    for a, b in zip(jax.tree_util.tree_leaves(loaded["params"]["dec1"]), jax.tree_util.tree_leaves(v["params"]["dec1"])):
        np.testing.assert_array_equal(a, b)  # the decoder is left alone
    # (That the ported encoder computes what the torch network computes is test_torch_parity's job.)


def test_load_into_one_channel_model_sums_rgb(resnet34_file):
    net, path = resnet34_file
    model = models.create("resunet34", in_channels=1, **SMALL["resunet34"])
    loaded = load_torchvision_resnet34(random_variables(_shapes(model, jnp.zeros((1, 32, 32, 1)))), path)
    expected = net.state_dict()["conv1.weight"].numpy().sum(1, keepdims=True).transpose(2, 3, 1, 0)
    np.testing.assert_allclose(loaded["params"]["encoder"]["conv1"]["kernel"], expected, rtol=1e-6)


def test_load_errors_name_the_file_and_keys(resnet34_file, tmp_path):
    import torch

    net, _ = resnet34_file
    model = models.create("resunet34", **SMALL["resunet34"])
    v = _shapes(model, jnp.zeros((1, 32, 32, 3)))

    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"definitely not a checkpoint")
    with pytest.raises(ValueError, match="garbage.pth is not a readable torch state dict"):
        load_torchvision_resnet34(v, garbage)

    a_list = tmp_path / "list.pth"
    torch.save([torch.zeros(3)], a_list)
    with pytest.raises(ValueError, match="list.pth does not hold a state dict"):
        load_torchvision_resnet34(v, a_list)

    sd = net.state_dict()
    partial = tmp_path / "partial.pth"
    torch.save({k: t for k, t in sd.items() if k != "layer3.2.bn1.running_var"}, partial)
    with pytest.raises(ValueError, match=r"partial.pth .*batch_stats/layer3_2/bn1/var"):
        load_torchvision_resnet34(v, partial)

    resized = tmp_path / "resized.pth"
    torch.save({**sd, "layer1.0.conv1.weight": torch.zeros(64, 64, 5, 5)}, resized)
    with pytest.raises(
        ValueError,
        match=r"resized.pth .*layer1\.0\.conv1\.weight \(64, 64, 5, 5\) -> params/layer1_0/conv1/kernel \(3, 3, 64, 64\)",
    ):
        load_torchvision_resnet34(v, resized)

    with pytest.raises(FileNotFoundError, match="nope.pth"):
        load_torchvision_resnet34(v, tmp_path / "nope.pth")
