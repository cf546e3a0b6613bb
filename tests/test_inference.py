"""Sliding-window inference, flip TTA and ensembles against whole-image prediction and numpy references.

Tolerances: the blended result is a weighted mean of float32 window predictions divided by
the float32 sum of the weights; with at most a few windows per pixel that is a handful of
roundings of values in [0, 1], so 1e-6 absolute holds on any CPU.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from unet_jax import models
from unet_jax.inference import flip_tta, gaussian_importance, mean_ensemble, sliding_window_inference, window_starts
from unet_jax.training.state import init_variables

ATOL = 1e-6
W = np.random.default_rng(0).normal(size=(3, 2)).astype(np.float32)


def pointwise(x):
    """A per-pixel model (a 1x1 convolution and a softmax): its prediction of a pixel does
    not depend on which window the pixel is in, so any blending must reproduce it."""
    return jax.nn.softmax(x @ jnp.asarray(W), axis=-1)


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 70), st.integers(1, 70), st.sampled_from([8, 16, 24]), st.sampled_from([0.0, 0.25, 0.5, 0.8]))
def test_windows_cover_every_pixel(h, w, window, overlap):
    size_h, size_w = max(h, window), max(w, window)
    covered = np.zeros((size_h, size_w), int)
    for y in window_starts(size_h, window, overlap):
        for x in window_starts(size_w, window, overlap):
            assert 0 <= y <= size_h - window and 0 <= x <= size_w - window
            covered[y : y + window, x : x + window] += 1
    assert covered.min() >= 1


@pytest.mark.parametrize("blend", ["constant", "gaussian"])
@pytest.mark.parametrize("hw", [(37, 53), (16, 16), (10, 40)])  # odd, exactly one window, smaller than it
def test_pointwise_model_equals_whole_image(blend, hw):
    image = np.random.default_rng(1).normal(size=(*hw, 3)).astype(np.float32)
    got = sliding_window_inference(pointwise, jnp.asarray(image), 16, overlap=0.5, blend=blend, batch_size=3)
    np.testing.assert_allclose(got, pointwise(image[None])[0], rtol=0, atol=ATOL)


def test_gaussian_blending_matches_numpy_reference():
    rng = np.random.default_rng(2)
    image = rng.normal(size=(21, 26, 3)).astype(np.float32)

    def position_dependent(x):  # different windows predict a pixel differently
        return jax.nn.sigmoid(x[..., :1] + jnp.linspace(-1.0, 1.0, x.shape[1])[None, :, None, None])

    got = sliding_window_inference(position_dependent, jnp.asarray(image), (12, 10), overlap=0.4, batch_size=4)
    wgt = gaussian_importance((12, 10))
    num, den = np.zeros((21, 26, 1)), np.zeros((21, 26, 1))
    for y in window_starts(21, 12, 0.4):
        for x in window_starts(26, 10, 0.4):
            p = np.asarray(position_dependent(image[None, y : y + 12, x : x + 10]))[0]
            num[y : y + 12, x : x + 10] += p * wgt[..., None]
            den[y : y + 12, x : x + 10] += wgt[..., None]
    np.testing.assert_allclose(got, num / den, rtol=0, atol=ATOL)
    sigma = 0.125 * 12
    np.testing.assert_allclose(wgt[:, 4] / wgt[5, 4], np.exp(-0.5 * ((np.arange(12) - 5.5) ** 2 - 0.25) / sigma**2),
                               rtol=1e-6)


def test_one_compile_per_image_size():
    traces = []

    def counted(x):
        traces.append(x.shape)
        return pointwise(x)

    run = jax.jit(lambda im: sliding_window_inference(counted, im, 16, batch_size=4))
    for hw in [(40, 40), (40, 40), (33, 50), (40, 40)]:
        run(jnp.zeros((*hw, 3))).block_until_ready()
    assert len(traces) == 2  # (40, 40) and (33, 50): one trace each, windows batched inside it


def test_flip_tta_of_a_unet_is_flip_invariant():
    model = models.create("unet", features=2, depth=1, in_channels=3)
    x = jnp.asarray(np.random.default_rng(3).normal(size=(1, 8, 8, 3)), jnp.float32)
    variables = init_variables(model, x.shape, jax.random.key(0))

    def predict(batch):
        return jax.nn.sigmoid(model.apply(variables, batch))

    tta = flip_tta(predict)
    plain, flipped = np.asarray(predict(x)), np.asarray(predict(x[:, ::-1]))[:, ::-1]
    assert np.abs(plain - flipped).max() > 1e-4  # the network alone is not flip-invariant
    np.testing.assert_allclose(tta(x[:, ::-1])[:, ::-1], tta(x), rtol=0, atol=ATOL)
    expected = np.mean([np.asarray(predict(x[:, ::fy, ::fx]))[:, ::fy, ::fx]  # flipped input, flipped back
                        for fy in (1, -1) for fx in (1, -1)], axis=0)
    np.testing.assert_allclose(tta(x), expected, rtol=0, atol=ATOL)
    tta8 = flip_tta(predict, transpose=True)
    np.testing.assert_allclose(tta8(jnp.swapaxes(x, 1, 2)), jnp.swapaxes(tta8(x), 1, 2), rtol=0, atol=ATOL)
    # Horizontal flips alone: the mean of the input's and its W-flip's predictions.
    hflip = flip_tta(predict, vertical=False)
    expected = (plain + np.asarray(predict(x[:, :, ::-1]))[:, :, ::-1]) / 2
    np.testing.assert_allclose(hflip(x), expected, rtol=0, atol=ATOL)
    np.testing.assert_allclose(hflip(x[:, :, ::-1])[:, :, ::-1], hflip(x), rtol=0, atol=ATOL)
    with pytest.raises(ValueError, match="vertical=True with transpose=True"):
        flip_tta(predict, transpose=True, vertical=False)


def test_mean_ensemble_is_the_mean_of_the_models_probabilities():
    x = jnp.asarray(np.random.default_rng(4).normal(size=(2, 5, 6, 3)), jnp.float32)
    weights = [np.random.default_rng(k).normal(size=(3, 2)).astype(np.float32) for k in range(3)]
    fns = [lambda b, w=w: jax.nn.softmax(b @ jnp.asarray(w), axis=-1) for w in weights]
    outs = [np.asarray(f(x), np.float64) for f in fns]
    assert np.abs(outs[0] - outs[1]).max() > 1e-2  # the models disagree, so the mean is not any one of them
    # Stack and mean of 3 float32 values in [0, 1]: a few roundings, under ATOL.
    np.testing.assert_allclose(mean_ensemble(fns)(x), np.mean(outs, axis=0), rtol=0, atol=ATOL)
    np.testing.assert_allclose(mean_ensemble(fns[:2])(x), (outs[0] + outs[1]) / 2, rtol=0, atol=ATOL)
    assert mean_ensemble(fns[:1]) is fns[0]
    with pytest.raises(ValueError, match="at least one"):
        mean_ensemble([])
    # Under jit, and composed with TTA: the mean of each model's flip-averaged prediction.
    both = jax.jit(mean_ensemble([flip_tta(f, vertical=False) for f in fns[:2]]))
    expected = np.mean([(o + np.asarray(f(x[:, :, ::-1]), np.float64)[:, :, ::-1]) / 2
                        for o, f in zip(outs[:2], fns[:2])], axis=0)
    np.testing.assert_allclose(both(x), expected, rtol=0, atol=ATOL)
