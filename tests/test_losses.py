"""Losses vs independent float64 numpy references, plus jit/vmap/grad and clDice properties."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from unet_jax import losses

SETTINGS = settings(max_examples=25, deadline=None)

# --------------------------------------------------------------------------- numpy references


def np_log_sigmoid(x):
    return -np.logaddexp(0.0, -x)


def np_log_softmax(x):
    z = x - x.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def np_probs(x):
    return np.exp(np_log_sigmoid(x)) if x.shape[-1] == 1 else np.exp(np_log_softmax(x))


def masked_mean(per_pixel, w):
    sw = w.sum()
    return 0.0 if sw == 0 else float((per_pixel * w).sum() / sw)


def ref_bce(x, y, w, pos_weight=1.0):
    if x.shape[-1] == 1:
        x, y = x[..., 0], y[..., 0]
        per = -(pos_weight * y * np_log_sigmoid(x) + (1 - y) * np_log_sigmoid(-x))
    else:
        per = -(y * np_log_softmax(x)).sum(-1)
    return masked_mean(per, w)


def ref_focal(x, y, w, gamma=2.0, alpha=0.25):
    if x.shape[-1] == 1:
        x, y = x[..., 0], y[..., 0]
        p, q = np.exp(np_log_sigmoid(x)), np.exp(np_log_sigmoid(-x))  # p and 1 - p
        one_minus_pt = y * q + (1 - y) * p
        ce = -(y * np_log_sigmoid(x) + (1 - y) * np_log_sigmoid(-x))
        a = 1.0 if alpha is None else alpha * y + (1 - alpha) * (1 - y)
        per = a * one_minus_pt**gamma * ce
    else:
        logp = np_log_softmax(x)
        a = np.ones(x.shape[-1]) if alpha is None else np.r_[1 - alpha, [alpha] * (x.shape[-1] - 1)]
        per = -(a * (1 - np.exp(logp)) ** gamma * y * logp).sum(-1)
    return masked_mean(per, w)


def ref_mse(x, y, w):
    return masked_mean(((np_probs(x) - y) ** 2).mean(-1), w)


def _sums(x, y, w, per_image):
    p = np_probs(x) * w[..., None]
    y = y * w[..., None]
    axes = tuple(range(1 if per_image else 0, x.ndim - 1))
    return (p * y).sum(axes), p.sum(axes), y.sum(axes)


def _class_mean(score, include_background):
    if not include_background and score.shape[-1] > 1:
        score = score[..., 1:]
    return float(score.mean())


def ref_dice(x, y, w, smooth=1.0, per_image=False, include_background=True):
    i, ps, ys = _sums(x, y, w, per_image)
    return 1 - _class_mean((2 * i + smooth) / (ps + ys + smooth), include_background)


def ref_iou(x, y, w, smooth=1.0, per_image=False, include_background=True):
    i, ps, ys = _sums(x, y, w, per_image)
    return 1 - _class_mean((i + smooth) / (ps + ys - i + smooth), include_background)


def ref_tversky(x, y, w, alpha=0.5, beta=0.5, smooth=1.0, per_image=False, include_background=True):
    i, ps, ys = _sums(x, y, w, per_image)
    fp, fn = ps - i, ys - i
    t = (2 * i + smooth) / (2 * i + 2 * alpha * fp + 2 * beta * fn + smooth)
    return 1 - _class_mean(t, include_background)


def np_maxpool(x, kh, kw):
    """Stride-1 max pool over axes (1, 2) of (B, H, W, C), out-of-image pixels ignored."""
    ph, pw = kh // 2, kw // 2
    xp = np.pad(x, ((0, 0), (ph, ph), (pw, pw), (0, 0)), constant_values=-np.inf)
    h, w = x.shape[1:3]
    return np.max([xp[:, a : a + h, b : b + w] for a in range(kh) for b in range(kw)], axis=0)


def np_soft_skel(x, iters):
    def erode(v):
        return np.minimum(-np_maxpool(-v, 3, 1), -np_maxpool(-v, 1, 3))

    def opening(v):
        return np_maxpool(erode(v), 3, 3)

    skel = np.maximum(x - opening(x), 0)
    for _ in range(iters):
        x = erode(x)
        delta = np.maximum(x - opening(x), 0)
        skel = skel + np.maximum(delta - skel * delta, 0)
    return skel


def ref_cldice(x, y, w, iterations=10, smooth=1.0):
    p = np_probs(x) * w[..., None]
    y = y * w[..., None]
    sp, sy = np_soft_skel(p, iterations), np_soft_skel(y, iterations)
    tprec = ((sp * y).sum() + smooth) / (sp.sum() + smooth)
    tsens = ((sy * p).sum() + smooth) / (sy.sum() + smooth)
    return 1 - 2 * tprec * tsens / (tprec + tsens)


REFS = {
    "bce": ref_bce,
    "dice": ref_dice,
    "soft_iou": ref_iou,
    "focal": ref_focal,
    "tversky": ref_tversky,
    "mse": ref_mse,
    "bce_dice": lambda x, y, w: ref_bce(x, y, w) + ref_dice(x, y, w),
    "cldice": ref_cldice,
}

# --------------------------------------------------------------------------- random cases


@st.composite
def cases(draw, binary_only=False):
    """(logits, labels, mask) for the code under test plus (x, y, w) float64 for references."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    b, h, w_ = draw(st.sampled_from([(1, 5, 6), (2, 4, 4), (2, 8, 7)]))
    c = 1 if binary_only else draw(st.sampled_from([1, 3]))
    scale = draw(st.sampled_from([0.5, 3.0, 20.0]))
    x = (rng.normal(size=(b, h, w_, c)) * scale).astype(np.float32)

    label_kind = draw(st.sampled_from(["random", "zeros", "soft"]))
    if c == 1:
        y = (rng.random((b, h, w_)) < 0.4).astype(np.float64)
        if label_kind == "zeros":
            y[:] = 0
        elif label_kind == "soft":
            y = rng.random((b, h, w_))
        y_ref = y[..., None]
        labels = y.astype(np.float32) if draw(st.booleans()) else y_ref.astype(np.float32)
        if label_kind != "soft" and draw(st.booleans()):
            labels = labels.astype(np.int32)
    else:
        ids = rng.integers(0, c, (b, h, w_))
        if label_kind == "zeros":
            ids[:] = 0
        y_ref = np.eye(c)[ids]
        if label_kind == "soft":
            y_ref = rng.dirichlet(np.ones(c), (b, h, w_))
            labels = y_ref.astype(np.float32)
        else:
            labels = ids.astype(np.int32) if draw(st.booleans()) else y_ref.astype(np.float32)

    mask_kind = draw(st.sampled_from(["none", "random", "trailing", "zeros", "weights", "hw"]))
    if mask_kind == "none":
        mask, w_ref = None, np.ones((b, h, w_))
    elif mask_kind == "hw":
        m = (rng.random((h, w_)) < 0.7).astype(np.float32)
        mask, w_ref = m, np.broadcast_to(m, (b, h, w_)).astype(np.float64)
    else:
        m = (rng.random((b, h, w_)) < 0.7).astype(np.float32)
        if mask_kind == "zeros":
            m[:] = 0
        elif mask_kind == "weights":
            m = rng.random((b, h, w_)).astype(np.float32)
        w_ref = m.astype(np.float64)
        mask = m[..., None] if mask_kind == "trailing" else m
    return x, labels, mask, x.astype(np.float64), y_ref, w_ref


def assert_close(actual, expected, rtol=2e-4, atol=2e-5):
    np.testing.assert_allclose(float(actual), expected, rtol=rtol, atol=atol)


# --------------------------------------------------------------------------- value tests


@SETTINGS
@given(case=cases())
def test_losses_match_numpy_reference(case):
    x, labels, mask, xr, yr, wr = case
    for name in ["bce", "dice", "soft_iou", "focal", "tversky", "mse", "bce_dice"]:
        got = losses.get_loss(name)(x, labels, mask=mask)
        assert got.shape == () and got.dtype == jnp.float32
        assert_close(got, REFS[name](xr, yr, wr))


@SETTINGS
@given(
    case=cases(),
    per_image=st.booleans(),
    include_background=st.booleans(),
    smooth=st.sampled_from([1e-3, 1.0]),
)
def test_overlap_losses_options(case, per_image, include_background, smooth):
    x, labels, mask, xr, yr, wr = case
    kw = {"smooth": smooth, "per_image": per_image, "include_background": include_background}
    for fn, ref in [(losses.dice_loss, ref_dice), (losses.soft_iou_loss, ref_iou)]:
        assert_close(fn(x, labels, mask=mask, **kw), ref(xr, yr, wr, **kw), rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("name", ["dice", "soft_iou", "tversky"])
def test_overlap_losses_unsmoothed_empty_is_perfect(name):
    """smooth=0 over an all-masked batch is 0/0: scored as perfect overlap, finite gradient."""
    x = np.random.default_rng(0).normal(size=(2, 4, 4, 1)).astype(np.float32)
    y = np.ones((2, 4, 4), np.float32)
    fn = losses.get_loss(name)
    val, grad = jax.value_and_grad(fn)(x, y, mask=np.zeros((2, 4, 4), np.float32), smooth=0.0)
    assert float(val) == 0.0 and np.all(np.isfinite(grad))
    # Unmasked, smooth=0 is the plain ratio.
    p = 1 / (1 + np.exp(-x[..., 0].astype(np.float64)))
    plain = {"dice": 1 - 2 * p.sum() / (p.sum() + y.sum()), "soft_iou": 1 - p.sum() / y.sum()}
    plain["tversky"] = plain["dice"]
    assert_close(fn(x, y, smooth=0.0), plain[name])


@SETTINGS
@given(
    case=cases(),
    alpha=st.floats(0.0, 1.0),
    beta=st.floats(0.0, 1.0),
    smooth=st.sampled_from([1e-3, 1.0]),
)
def test_tversky_reference_and_equals_dice_at_half(case, alpha, beta, smooth):
    x, labels, mask, xr, yr, wr = case
    got = losses.tversky_loss(x, labels, mask=mask, alpha=alpha, beta=beta, smooth=smooth)
    assert_close(got, ref_tversky(xr, yr, wr, alpha, beta, smooth), rtol=1e-3, atol=1e-4)
    half = losses.tversky_loss(x, labels, mask=mask, alpha=0.5, beta=0.5, smooth=smooth)
    dice = losses.dice_loss(x, labels, mask=mask, smooth=smooth)
    assert_close(half, float(dice), rtol=1e-6, atol=1e-6)


@SETTINGS
@given(case=cases(), gamma=st.sampled_from([0.0, 0.5, 2.0]), alpha=st.sampled_from([None, 0.25, 0.8]))
def test_focal_options(case, gamma, alpha):
    x, labels, mask, xr, yr, wr = case
    got = losses.focal_loss(x, labels, mask=mask, gamma=gamma, alpha=alpha)
    assert_close(got, ref_focal(xr, yr, wr, gamma, alpha), rtol=1e-3, atol=1e-5)
    if gamma == 0.0 and alpha is None:  # focal reduces to cross-entropy
        assert_close(got, float(losses.bce_loss(x, labels, mask=mask)), rtol=1e-5, atol=1e-6)


@settings(max_examples=20, deadline=None)
@given(case=cases(binary_only=True), pos_weight=st.floats(0.1, 10.0))
def test_bce_pos_weight(case, pos_weight):
    x, labels, mask, xr, yr, wr = case
    got = losses.bce_loss(x, labels, mask=mask, pos_weight=pos_weight)
    assert_close(got, ref_bce(xr, yr, wr, pos_weight))


@pytest.mark.parametrize("scale", [100.0, 1000.0])
def test_bce_stable_for_large_logits(scale):
    # Finiteness of the gradients at this scale is covered by test_finite_gradients_*.
    rng = np.random.default_rng(0)
    x = (np.sign(rng.normal(size=(2, 4, 4, 1))) * scale).astype(np.float32)
    y = (rng.random((2, 4, 4)) < 0.5).astype(np.float32)
    for fn, ref in [(losses.bce_loss, ref_bce), (losses.focal_loss, ref_focal)]:
        val = fn(x, y)
        assert np.isfinite(float(val))
        assert_close(val, ref(x.astype(np.float64), y[..., None].astype(np.float64), np.ones(y.shape)))
    xm = (rng.normal(size=(2, 4, 4, 3)) * scale).astype(np.float32)
    ym = rng.integers(0, 3, (2, 4, 4)).astype(np.int32)
    assert_close(losses.bce_loss(xm, ym), ref_bce(xm.astype(np.float64), np.eye(3)[ym], np.ones(ym.shape)))


@settings(max_examples=15, deadline=None)
@given(case=cases())
def test_label_formats_agree(case):
    """Binary (H, W) vs (H, W, 1) labels and multi-class ids vs one-hot give the same loss."""
    x, _, mask, _, yr, _ = case
    if x.shape[-1] == 1:
        a, b = yr[..., 0].astype(np.float32), yr.astype(np.float32)
    else:
        if not np.all((yr == 0) | (yr == 1)):
            return  # soft targets have no id form
        a, b = yr.argmax(-1).astype(np.int32), yr.astype(np.float32)
    for name in ["bce", "dice", "focal", "mse"]:
        fn = losses.get_loss(name)
        expected = float(fn(x, b, mask=mask))
        assert_close(fn(x, a, mask=mask), expected, rtol=1e-6, atol=1e-6)
        if x.shape[-1] > 1:  # class ids with a trailing channel axis
            assert_close(fn(x, a[..., None], mask=mask), expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", sorted(losses.LOSSES))
@settings(max_examples=10, deadline=None)
@given(case=cases(binary_only=True), seed=st.integers(0, 2**32 - 1))
def test_masked_pixels_are_ignored(name, case, seed):
    x, labels, mask, *_ = case
    rng = np.random.default_rng(seed)
    if mask is None:
        mask = (rng.random(x.shape[:-1]) < 0.5).astype(np.float32)
    m = np.asarray(mask)
    m = np.broadcast_to(m[..., 0] if m.ndim == 4 else m, x.shape[:-1])
    off = (m == 0)[..., None]
    x2 = np.where(off, rng.normal(size=x.shape) * 10, x).astype(np.float32)
    lab = np.asarray(labels)
    flip = off if lab.ndim == x.ndim else off[..., 0]
    labels2 = np.where(flip, 1 - lab, lab).astype(lab.dtype)
    fn = losses.get_loss(name)
    assert_close(fn(x2, labels2, mask=mask), float(fn(x, labels, mask=mask)), rtol=1e-5, atol=1e-6)


def test_masked_pixels_are_ignored_multiclass():
    rng = np.random.default_rng(1)
    # Shapes and dtypes as in `cases()`, so the op-by-op compile cache is reused.
    x = rng.normal(size=(2, 8, 7, 3)).astype(np.float32) * 3
    y = rng.integers(0, 3, (2, 8, 7)).astype(np.int32)
    m = (rng.random((2, 8, 7)) < 0.5).astype(np.float32)
    x2 = np.where(m[..., None] == 0, rng.normal(size=x.shape) * 10, x).astype(np.float32)
    y2 = np.where(m == 0, rng.integers(0, 3, y.shape), y).astype(np.int32)
    for name in ["bce", "dice", "soft_iou", "focal", "tversky", "mse", "bce_dice"]:
        fn = losses.get_loss(name)
        assert_close(fn(x2, y2, mask=m), float(fn(x, y, mask=m)), rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------- transforms


@pytest.mark.parametrize("name", sorted(losses.LOSSES))
@pytest.mark.parametrize("c", [1, 3])
def test_finite_gradients_including_empty_mask_and_labels(name, c):
    if name == "cldice" and c != 1:
        return
    rng = np.random.default_rng(2)
    fn = losses.get_loss(name)
    if name == "cldice":  # fewer skeleton iterations keep the trace small
        fn = functools.partial(fn, iterations=1)
    value_and_grad = jax.jit(jax.value_and_grad(fn))
    for scale in [1.0, 100.0]:
        x = (rng.normal(size=(2, 8, 8, c)) * scale).astype(np.float32)
        y = rng.integers(0, max(c, 2), (2, 8, 8)).astype(np.int32)
        ones, zeros = np.ones((2, 8, 8), np.float32), np.zeros((2, 8, 8), np.float32)
        # Always pass a mask (all ones = no mask) so that each loss compiles once.
        for labels, mask in [(y, ones), (y, zeros), (np.zeros_like(y), ones), (np.zeros_like(y), zeros)]:
            val, grad = value_and_grad(x, labels, mask=mask)
            assert np.isfinite(float(val)), (name, scale)
            assert np.all(np.isfinite(np.asarray(grad))), (name, scale)
            if not mask.any():
                assert abs(float(val)) < 1e-6  # all-zero mask: nothing to penalise
                assert np.all(np.asarray(grad) == 0)


@given(logit=st.floats(-4.0, 4.0), smooth=st.sampled_from([0.1, 1.0]))
@settings(max_examples=20, deadline=None)
def test_per_image_dice_on_an_empty_image_has_the_documented_fading_gradient(logit, smooth):
    """The docstring's formula: on an empty target, loss S / (S + smooth) with S the sum of
    the probabilities, d loss / d z = sigmoid'(z) smooth / (S + smooth)^2 (float64 numpy).
    Tolerances: a few float32 roundings; 1 - p at |z| <= 4 cancels at most 55x (1e-4)."""
    x = np.full((1, 4, 4, 1), logit, np.float32)
    val, grad = jax.value_and_grad(losses.dice_loss)(x, np.zeros((1, 4, 4), np.int32), smooth=smooth,
                                                     per_image=True)
    p = 1.0 / (1.0 + np.exp(-np.float64(np.float32(logit))))
    total = 16 * p
    np.testing.assert_allclose(float(val), total / (total + smooth), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(grad, np.float64), p * (1 - p) * smooth / (total + smooth) ** 2, rtol=1e-4)


@pytest.mark.parametrize("name", sorted(losses.LOSSES))
def test_jit_and_vmap(name):
    rng = np.random.default_rng(3)
    fn, ref = losses.get_loss(name), REFS[name]
    if name == "cldice":  # fewer skeleton iterations keep the trace small
        fn, ref = functools.partial(fn, iterations=2), functools.partial(ref, iterations=2)
    x = rng.normal(size=(3, 2, 8, 8, 1)).astype(np.float32) * 2
    y = (rng.random((3, 2, 8, 8)) < 0.3).astype(np.float32)
    m = (rng.random((3, 2, 8, 8)) < 0.8).astype(np.float32)
    expected = [ref(x[i].astype(np.float64), y[i][..., None].astype(np.float64), m[i]) for i in range(3)]
    vm = jax.jit(jax.vmap(lambda a, b, c: fn(a, b, mask=c)))(x, y, m)
    np.testing.assert_allclose(vm, expected, rtol=2e-4, atol=2e-5)
    g = jax.jit(jax.grad(lambda a: fn(a, y[0], mask=m[0])))(x[0])
    assert g.shape == x[0].shape and np.all(np.isfinite(g))


# --------------------------------------------------------------------------- clDice


@settings(max_examples=12, deadline=None)
@given(case=cases(binary_only=True), iterations=st.sampled_from([1, 3, 10]))
def test_cldice_matches_numpy_reference(case, iterations):
    x, labels, mask, xr, yr, wr = case
    got = losses.cldice_loss(x, labels, mask=mask, iterations=iterations)
    assert_close(got, ref_cldice(xr, yr, wr, iterations), rtol=1e-4, atol=1e-5)


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), density=st.floats(0.1, 0.9))
def test_soft_skeleton_of_binary_is_binary_subset(seed, density):
    rng = np.random.default_rng(seed)
    x = (rng.random((2, 12, 10, 1)) < density).astype(np.float32)
    s = np.asarray(losses.soft_skeleton(x, 5))
    np.testing.assert_allclose(s, np_soft_skel(x.astype(np.float64), 5), atol=1e-6)
    assert np.all((s == 0) | (s == 1))
    assert np.all(s <= x)


def _line_and_blob():
    y = np.zeros((1, 64, 64, 1), np.float32)
    y[0, 10:12, 4:60] = 1  # thin (2 px) horizontal vessel
    y[0, 30:50, 20:40] = 1  # thick 20x20 blob
    return y


def test_cldice_zero_for_identical_masks():
    y = _line_and_blob()
    loss = losses.cldice_loss(np.where(y > 0, 20.0, -20.0), y)
    assert abs(float(loss)) < 1e-5


def test_cldice_penalises_broken_line_more_than_blob_erosion():
    y = _line_and_blob()
    broken = y.copy()
    broken[0, 10:12, 30:33] = 0  # 6-pixel gap across the line
    eroded = y.copy()
    eroded[0, 30, 27:33] = 0  # the same 6 pixels off the blob's edge
    assert (y - broken).sum() == (y - eroded).sum() == 6

    def cl(pred):
        return float(losses.cldice_loss(np.where(pred > 0, 10.0, -10.0), y))

    assert cl(broken) > cl(eroded) + 1e-3

    # Dice barely sees either error and cannot tell them apart; clDice is there for this.
    def dl(pred):
        return float(losses.dice_loss(np.where(pred > 0, 10.0, -10.0), y))

    assert abs(dl(broken) - dl(eroded)) < 1e-4


def test_cldice_rejects_multiclass():
    with pytest.raises(ValueError):
        losses.cldice_loss(np.zeros((1, 8, 8, 2), np.float32), np.zeros((1, 8, 8), np.int32))


# --------------------------------------------------------------------------- registry / heads


@SETTINGS
@given(case=cases())
def test_get_loss_per_image_binds_the_option(case):
    """The per-image form averages each image's Dice (numpy reference), BCE unchanged."""
    x, labels, mask, xr, yr, wr = case
    assert_close(losses.get_loss("dice", per_image=True)(x, labels, mask=mask), ref_dice(xr, yr, wr, per_image=True),
                 rtol=1e-3, atol=1e-4)
    assert_close(losses.get_loss("bce_dice", per_image=True)(x, labels, mask=mask),
                 ref_bce(xr, yr, wr) + ref_dice(xr, yr, wr, per_image=True), rtol=1e-3, atol=1e-4)


@SETTINGS
@given(case=cases(), per_image=st.booleans())
def test_get_loss_binds_tversky_weights(case, per_image):
    """get_loss("tversky", alpha=, beta=) is the Tversky loss with those weights (numpy
    reference), per image too; an option the loss does not take is refused by name."""
    x, labels, mask, xr, yr, wr = case
    fn = losses.get_loss("tversky", per_image=per_image, alpha=0.3, beta=0.7)
    assert_close(fn(x, labels, mask=mask), ref_tversky(xr, yr, wr, 0.3, 0.7, per_image=per_image),
                 rtol=1e-3, atol=1e-4)
    with pytest.raises(ValueError, match="'dice' takes no option alpha, beta"):
        losses.get_loss("dice", alpha=0.3, beta=0.7)


def test_tversky_weights_need_the_tversky_loss():
    from unet_jax.config import ConfigError, TrainConfig

    assert (TrainConfig(loss="tversky", tversky_alpha=0.3, tversky_beta=0.7).tversky_beta) == 0.7
    for kw in ({"tversky_beta": 0.7}, {"loss": "tversky", "tversky_alpha": -0.1}):
        with pytest.raises(ConfigError, match="tversky_"):
            TrainConfig(**kw)


def test_get_loss_per_image_refuses_losses_without_the_option():
    for name in ["bce", "focal", "mse", "cldice"]:
        with pytest.raises(ValueError, match=f"{name!r} has no per-image form") as err:
            losses.get_loss(name, per_image=True)
        assert "bce_dice, dice, soft_iou, tversky" in str(err.value)


def test_registry_and_get_loss():
    assert set(losses.LOSSES) == {"bce", "dice", "bce_dice", "soft_iou", "focal", "tversky", "mse", "cldice"}
    for name, fn in losses.LOSSES.items():
        assert losses.get_loss(name) is fn
    with pytest.raises(ValueError, match="nope") as err:
        losses.get_loss("nope")
    assert "bce_dice" in str(err.value) and "cldice" in str(err.value)


@settings(max_examples=10, deadline=None)
@given(case=cases(), n_heads=st.integers(1, 3), seed=st.integers(0, 2**32 - 1), weighted=st.booleans())
def test_deep_supervision_weighted_average(case, n_heads, seed, weighted):
    x, labels, mask, xr, yr, wr = case
    rng = np.random.default_rng(seed)
    heads = [x] + [(x + rng.normal(size=x.shape)).astype(np.float32) for _ in range(n_heads - 1)]
    weights = list(rng.random(n_heads) + 0.1) if weighted else None
    got = losses.deep_supervision_loss("bce", heads, labels, mask=mask, weights=weights)
    refs = [ref_bce(h.astype(np.float64), yr, wr) for h in heads]
    expected = float(np.average(refs, weights=weights))
    assert_close(got, expected)
    same = losses.deep_supervision_loss(losses.dice_loss, [x] * n_heads, labels, mask=mask, smooth=0.5)
    assert_close(same, ref_dice(xr, yr, wr, smooth=0.5))


def test_bfloat16_logits_are_upcast():
    rng = np.random.default_rng(4)
    x = jnp.asarray(rng.normal(size=(2, 4, 4, 3)) * 3, jnp.bfloat16)
    y = rng.integers(0, 3, (2, 4, 4)).astype(np.int32)
    xr = np.asarray(x.astype(jnp.float32), np.float64)  # the exact bf16 values
    for name in ["bce", "dice", "focal"]:
        got = losses.get_loss(name)(x, y)
        assert got.dtype == jnp.float32
        assert_close(got, REFS[name](xr, np.eye(3)[y], np.ones(y.shape)))
