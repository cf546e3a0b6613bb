"""Every flax architecture equals its PyTorch twin (benchmarks/torch_reference) after porting.

Eval-mode logits (running BN statistics, randomised so they matter) agree on an even and
an odd input size; one training step (batch statistics) gives the same loss, gradient
global norm and per-parameter gradients; parameter counts are equal.

Both twins run in float64 (x64 for this module only, `torch.float64`). In float32 the two
frameworks' convolution kernels sum in different orders, and how far apart they land
depends on the CPU's vector instructions (ResUNet-34's gradient norm differed by 5e-4 on
an AVX2 CPU and by less than 1e-4 on an AVX-512 one), so no float32 tolerance is both
tight and portable. In float64 the same rounding is ~1e-16 per operation: a dot product of
length K is off by at most K*u*sum|a*b| (u = 2**-53; K <= 3*3*512 = 4608 here, so ~5e-13
relative), and some 40 layers deep that is ~2e-11 of the output's scale (seen: 2e-12 on
an AMD EPYC with AVX2). RTOL = 1e-9 leaves a margin of 50x over that bound on any CPU,
while porting mistakes stay far above it: a BN epsilon off by 1% shows up at 3e-9 to
1e-8, an unflipped kernel or a misplaced channel at 1e-2 or more.
"""

import copy

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

torch = pytest.importorskip("torch")

from benchmarks.torch_reference import TWINS  # noqa: E402
from benchmarks.torch_reference.port import port_module, randomize_bn_stats, torch_to_flax, transposed_modules  # noqa: E402
from benchmarks.torch_reference.unet import UpSample  # noqa: E402
from unet_jax import models  # noqa: E402

CONFIGS = {
    "unet": dict(features=8, depth=3),
    "attention_unet": dict(features=8, depth=3),
    "unetpp": dict(features=8, depth=3),
    "resunet34": dict(),  # the real network: the encoder has no width knob, 40x40 inputs keep it fast
}
# (arch, UNet++ inference_head): the averaged heads and each pruned head.
EVAL_CASES = [("unet", None), ("attention_unet", None), ("resunet34", None)] + [
    ("unetpp", k) for k in (None, 1, 2, 3)
]
RTOL = 1e-9  # relative to the compared quantity's largest magnitude; see the module docstring
SIZES = [(40, 40), (37, 45)]  # even, and odd (zero-padded and cropped back)
# The training-step check compiles a backward pass, the slowest thing here, so the U-Net
# family runs it one level shallower (every level runs the same code).
TRAIN_CONFIGS = {**{a: dict(features=8, depth=2) for a in ("unet", "attention_unet", "unetpp")}, "resunet34": dict()}


@pytest.fixture(scope="module", autouse=True)
def float64():
    """x64 for this module's tests only (the context manager restores the setting after)."""
    with jax.enable_x64(True):
        yield


def _float64(tree):
    return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, jnp.float64), tree)


@pytest.fixture(scope="module")
def ported(float64):
    """arch -> (torch twin, ported flax variables), built once per module."""
    cache = {}

    def get(arch, cfg=None):
        cfg = CONFIGS[arch] if cfg is None else cfg
        key = (arch, tuple(sorted(cfg.items())))
        if key not in cache:
            torch.manual_seed(0)
            twin = TWINS[arch](**cfg)
            randomize_bn_stats(twin)
            twin.double()
            model = models.create(arch, **cfg)
            x = jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float64)
            template = _float64(jax.eval_shape(lambda x: model.init(jax.random.key(0), x), x))
            cache[key] = twin, port_module(twin, template)
        return cache[key]

    return get


def _nchw(x: np.ndarray) -> "torch.Tensor":
    return torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()


def _nhwc(t: "torch.Tensor") -> np.ndarray:
    return t.detach().permute(0, 2, 3, 1).numpy()


@pytest.mark.parametrize("arch", list(CONFIGS))
def test_parameter_counts_match(arch, ported):
    twin, variables = ported(arch)
    assert models.count_params(variables["params"]) == sum(p.numel() for p in twin.parameters())


@pytest.mark.parametrize("arch,head", EVAL_CASES)
def test_eval_outputs_match(arch, head, ported):
    twin, variables = ported(arch)
    cfg = dict(CONFIGS[arch], **({"inference_head": head} if arch == "unetpp" else {}))
    model = models.create(arch, **cfg)
    twin.eval()
    if arch == "unetpp":
        twin.inference_head = head
    # Pruned UNet++ heads at the odd size only: compiles dominate this file's runtime, and the
    # padding logic they share with the averaged network is covered at both sizes.
    for i, hw in enumerate(SIZES[1:] if head is not None else SIZES):
        x = np.random.default_rng(i).normal(size=(2, *hw, 3))
        with torch.no_grad():
            expected = _nhwc(twin(_nchw(x)))
        got = np.asarray(jax.jit(model.apply)(variables, x))
        assert got.dtype == expected.dtype == np.float64
        assert got.shape == expected.shape == (2, *hw, 1)
        assert expected.std() > 1e-3  # a non-trivial output, so agreement means something
        np.testing.assert_allclose(got, expected, rtol=0, atol=RTOL * np.abs(expected).max())


def _bce_dice_jax(logits, labels):
    bce = optax.sigmoid_binary_cross_entropy(logits, labels).mean()
    p = jax.nn.sigmoid(logits)
    return bce + 1 - (2 * (p * labels).sum() + 1) / (p.sum() + labels.sum() + 1)


def _bce_dice_torch(logits, labels):
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, labels)
    p = torch.sigmoid(logits)
    return bce + 1 - (2 * (p * labels).sum() + 1) / (p.sum() + labels.sum() + 1)


@pytest.mark.parametrize("arch", list(CONFIGS))
def test_train_step_matches(arch, ported):
    """Train mode (batch statistics, UNet++'s deep-supervision heads): loss and gradients agree."""
    twin, variables = ported(arch, TRAIN_CONFIGS[arch])
    twin = copy.deepcopy(twin)  # the train-mode pass updates its running statistics
    model = models.create(arch, **TRAIN_CONFIGS[arch])
    rng = np.random.default_rng(7)
    x = rng.normal(size=(2, 37, 45, 3))
    y = (rng.random((2, 37, 45, 1)) < 0.3).astype(np.float64)

    twin.train()
    twin.zero_grad()
    out = twin(_nchw(x))
    heads = out if isinstance(out, list) else [out]
    loss_t = sum(_bce_dice_torch(h, _nchw(y)) for h in heads) / len(heads)
    loss_t.backward()
    grads_t = {name: p.grad for name, p in twin.named_parameters()}

    def loss_fn(params):
        out, updates = model.apply(
            {"params": params, "batch_stats": variables["batch_stats"]},
            x,
            train=True,
            mutable=["batch_stats"],
        )
        heads = out if isinstance(out, list) else [out]
        return sum(_bce_dice_jax(h, y) for h in heads) / len(heads), updates

    (loss_f, updates), grads_f = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(variables["params"])
    assert len(heads) == (2 if arch == "unetpp" else 1)
    assert loss_f.dtype == jnp.float64
    np.testing.assert_allclose(float(loss_f), loss_t.item(), rtol=RTOL)
    norm_t = torch.sqrt(sum((g**2).sum() for g in grads_t.values())).item()
    norm_f = float(optax.tree.norm(grads_f))
    np.testing.assert_allclose(norm_f, norm_t, rtol=RTOL)
    # Leaf by leaf, through the same name mapping as the weights (gradients are linear in layout).
    grads_t = torch_to_flax(grads_t, {"params": grads_f}, transposed=transposed_modules(twin))["params"]
    for (path, g_f), g_t in zip(
        jax.tree_util.tree_leaves_with_path(grads_f), jax.tree_util.tree_leaves(grads_t)
    ):
        scale = float(np.abs(g_t).max()) + 1e-300
        np.testing.assert_allclose(g_f, g_t, rtol=0, atol=RTOL * scale, err_msg=jax.tree_util.keystr(path))
    # Running means follow PyTorch's momentum 0.1. (Running variances differ by design: flax
    # accumulates the biased batch variance, PyTorch the unbiased one.)
    stats_t = port_module(twin, variables)["batch_stats"]
    for (path, m_f), m_t in zip(
        jax.tree_util.tree_leaves_with_path(updates["batch_stats"]), jax.tree_util.tree_leaves(stats_t)
    ):
        if jax.tree_util.keystr(path).endswith("['mean']"):
            np.testing.assert_allclose(m_f, m_t, rtol=0, atol=RTOL * np.abs(m_t).max(), err_msg=jax.tree_util.keystr(path))


def test_conv_transpose_port_flips_the_kernel():
    # A 2x2 stride-2 ConvTranspose2d (in, out, kh, kw) needs a spatially flipped (kh, kw, in, out)
    # flax kernel; porting without the flip (as an ordinary conv layout) must not match.
    from unet_jax.models.layers import UpSample as FlaxUpSample

    torch.manual_seed(1)
    up = UpSample(3, 5).double()
    x = np.random.default_rng(0).normal(size=(1, 4, 6, 3))
    template = _float64(jax.eval_shape(lambda x: FlaxUpSample(5).init(jax.random.key(0), x), x))
    v = port_module(up, template)
    with torch.no_grad():
        expected = _nhwc(up(_nchw(x)))
    np.testing.assert_allclose(FlaxUpSample(5).apply(v, x), expected, rtol=0, atol=RTOL * np.abs(expected).max())
    w = up.up.weight.detach().numpy()
    unflipped = {
        "params": {"up": {"kernel": jnp.asarray(w.transpose(2, 3, 0, 1)), "bias": v["params"]["up"]["bias"]}}
    }
    assert not np.allclose(FlaxUpSample(5).apply(unflipped, x), expected, atol=1e-3)


def test_default_transposed_rule_agrees_with_module_types(ported):
    twin, variables = ported("unetpp")
    implicit = torch_to_flax(twin.state_dict(), variables)  # the UpSample naming convention
    for a, b in zip(jax.tree_util.tree_leaves(implicit), jax.tree_util.tree_leaves(variables)):
        np.testing.assert_array_equal(a, b)
