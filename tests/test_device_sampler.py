"""Device-resident data (unet_jax.data.device_sampler): the host sampler's rules, in the step.

The host sampler (unet_jax.data.pipeline.PatchSampler) is the reference: centre pools,
clamping and padding must give the same distribution of crop windows, and every
geometric augmentation must move image, label and mask together.
"""

import jax
import numpy as np
import pytest

from unet_jax import losses, models
from unet_jax.config import AugmentConfig, TrainConfig
from unet_jax.data.base import Example, InMemorySource
from unet_jax.data.device_sampler import DeviceSampler, prepare_device_data, resolve_on_device
from unet_jax.data.pipeline import PatchSampler
from unet_jax.training.checkpoint import Checkpointer
from unet_jax.training.loop import fit
from unet_jax.training.state import create_train_state

GEOMETRIC = AugmentConfig(flips=True, rot90=True, brightness=0.0, contrast=0.0)


def _coded_example(k: int, h: int, w: int, disc: bool = True, foreground: bool = True) -> Example:
    """Image channels encode (row + 1, column + 1, k) exactly (multiples of 2**-10), so a
    patch tells where each of its pixels came from; label and valid are functions of them."""
    r, c = np.mgrid[:h, :w]
    image = np.stack([(r + 1) / 1024, (c + 1) / 1024, np.full((h, w), k / 1024)], -1).astype(np.float32)
    label = _label_of(r, c, k) if foreground else np.zeros((h, w), np.uint8)
    valid = _valid_of(r, c, h, w) if disc else None
    return Example(f"ex{k}", image, label, valid)


def _label_of(r, c, k):
    return (((r // 3) + 2 * (c // 5) + k) % 7 == 0).astype(np.uint8)


def _valid_of(r, c, h, w):
    return ((r - h / 2) ** 2 + (c - w / 2) ** 2 <= (0.45 * np.minimum(h, w)) ** 2).astype(np.uint8)


SIZES = [(64, 64), (48, 80), (20, 24)]  # the last is smaller than the 32-px patch: padded


@pytest.fixture(scope="module")
def source():
    exs = [_coded_example(k, h, w) for k, (h, w) in enumerate(SIZES)]
    exs.append(_coded_example(3, 40, 40, disc=False, foreground=False))  # no valid mask, no foreground
    return InMemorySource(exs)


def _decode(image):
    r = np.rint(image[..., 0] * 1024).astype(int) - 1
    c = np.rint(image[..., 1] * 1024).astype(int) - 1
    k = np.rint(image[..., 2] * 1024).astype(int)
    return r, c, k


def test_images_stay_float32_unless_uint8_is_lossless(source):
    assert prepare_device_data(source, 32).images.dtype == np.float32  # coded values are not k / 255
    codes = np.arange(256, dtype=np.float32).reshape(16, 16) / 255
    unit = InMemorySource([Example("u", codes[..., None], np.zeros((16, 16), np.uint8))])
    data = prepare_device_data(unit, 16)
    assert data.images.dtype == np.uint8
    np.testing.assert_array_equal(data.lut[data.images][0, ..., 0].view(np.uint32), codes.view(np.uint32))


def test_centres_lie_in_the_valid_region_and_bias_picks_foreground(source):
    data = jax.device_put(prepare_device_data(source, 32))
    keys = jax.random.split(jax.random.key(0), 3000)
    v = np.asarray(data.valid)
    lab = np.asarray(data.labels)
    for bias in (0.0, 1.0):
        k, r, c = map(np.asarray, jax.jit(jax.vmap(DeviceSampler(patch_size=32, foreground_bias=bias).centre,
                                                   in_axes=(None, 0)))(data, keys))
        assert v[k, r, c].all()
        assert set(np.unique(k)) == {0, 1, 2, 3}
        fg = lab[k, r, c] > 0
        if bias == 1.0:  # foreground always, except on the image without any (falls back to valid)
            assert fg[k != 3].all() and not fg[k == 3].any()
        else:
            assert 0.05 < fg.mean() < 0.3  # about the foreground share of the valid pixels


def test_augmentations_keep_image_label_and_mask_aligned(source):
    data = jax.device_put(prepare_device_data(source, 32))
    sampler = DeviceSampler(patch_size=32, foreground_bias=0.3, augment=GEOMETRIC)
    batch = jax.jit(sampler.sample_batch)(data, jax.random.split(jax.random.key(1), 400))
    image, label, mask = (np.asarray(batch[n]) for n in ("image", "label", "mask"))
    r, c, k = _decode(image)
    real = r >= 0  # padding of the small image decodes to row -1
    sizes = dict(enumerate(SIZES + [(40, 40)]))
    h = np.vectorize(lambda i: sizes[i][0])(k)
    w = np.vectorize(lambda i: sizes[i][1])(k)
    np.testing.assert_array_equal(label[..., 0][real], _label_of(r, c, k)[real] * (k[real] != 3))
    expect_mask = np.where(k == 3, 1, _valid_of(r, c, h, w))
    np.testing.assert_array_equal(mask[..., 0][real], expect_mask[real])
    assert (label[..., 0][~real] == 0).all() and (mask[..., 0][~real] == 0).all()
    # Each patch is one window of one image under one of the 8 symmetries: adjacent pixels
    # differ by exactly one step in one coordinate.
    for i in np.flatnonzero(real.all(axis=(1, 2)))[:50]:
        steps = {(int(r[i, 0, 1] - r[i, 0, 0]), int(c[i, 0, 1] - c[i, 0, 0])),
                 (int(r[i, 1, 0] - r[i, 0, 0]), int(c[i, 1, 0] - c[i, 0, 0]))}
        assert all(abs(a) + abs(b) == 1 for a, b in steps) and len(steps) == 2
    # All 8 symmetries occur.
    orient = {(int(r[i, 0, 1] - r[i, 0, 0]), int(c[i, 0, 1] - c[i, 0, 0]),
               int(r[i, 1, 0] - r[i, 0, 0]), int(c[i, 1, 0] - c[i, 0, 0])) for i in range(len(r)) if real[i].all()}
    assert len(orient) == 8


def test_soft_labels_stay_float_fractions(source):
    """Soft binary labels (float, in [0, 1]) go to the device as float32 and come back in
    each patch as they were at its pixels' sources, through every symmetry."""
    def soft_of(r, c, k):
        return (0.75 * _label_of(r, c, k) + 0.125 * ((r + c) % 2)).astype(np.float32)

    exs = []
    for i in range(len(source)):
        ex = source[i]
        r, c = np.mgrid[:ex.label.shape[0], :ex.label.shape[1]]
        exs.append(Example(ex.id, ex.image, soft_of(r, c, i), ex.valid))
    data = prepare_device_data(InMemorySource(exs), 32)
    assert data.labels.dtype == np.float32
    batch = jax.jit(DeviceSampler(patch_size=32, augment=GEOMETRIC).sample_batch)(
        jax.device_put(data), jax.random.split(jax.random.key(2), 200))
    r, c, k = _decode(np.asarray(batch["image"]))
    real = r >= 0
    np.testing.assert_array_equal(np.asarray(batch["label"])[..., 0][real], soft_of(r, c, k)[real])


def _window_cells(image, cell):
    """(image index, top // cell, left // cell) of unaugmented patches (pixel (0, 0) decoded)."""
    r, c, k = _decode(image[:, :1, :1])
    return list(zip(k[:, 0, 0], r[:, 0, 0] // cell, c[:, 0, 0] // cell))


def test_window_distribution_matches_the_host_sampler(source):
    """Two-sample chi-square test of homogeneity on (image, coarse top, coarse left) of the
    crop windows, at significance 0.001 with fixed seeds (so the outcome is deterministic);
    the same statistic must reject a sampler with a different foreground bias."""
    scipy_stats = pytest.importorskip("scipy.stats")
    n, bias, cell = 6000, 0.5, 8
    host = PatchSampler(source, patch_size=32, foreground_bias=bias, augment=AugmentConfig.none(), clip=False)
    rng = np.random.default_rng(0)
    host_cells = _window_cells(np.stack([host(None, rng)["image"] for _ in range(n)]), cell)
    data = jax.device_put(prepare_device_data(source, 32))

    def device_cells(b, seed):
        s = DeviceSampler(patch_size=32, foreground_bias=b, augment=AugmentConfig.none(), clip=False)
        return _window_cells(np.asarray(jax.jit(s.sample_batch)(data, jax.random.split(jax.random.key(seed), n))
                                        ["image"]), cell)

    def p_value(a, b):
        cells = sorted(set(a) | set(b))
        table = np.array([[a.count(x) for x in cells], [b.count(x) for x in cells]])
        table = table[:, table.sum(0) >= 10]  # drop near-empty cells (expected counts >= 5 per sampler)
        return scipy_stats.chi2_contingency(table)[1]

    assert p_value(host_cells, device_cells(bias, 1)) > 1e-3
    assert p_value(host_cells, device_cells(0.0, 1)) < 1e-3  # the test has power against a wrong rule


def test_sampling_is_deterministic_per_key(source):
    data = jax.device_put(prepare_device_data(source, 32))
    s = jax.jit(DeviceSampler(patch_size=32, foreground_bias=0.2).sample_batch)
    a, b = s(data, jax.random.split(jax.random.key(5), 8)), s(data, jax.random.split(jax.random.key(5), 8))
    c = s(data, jax.random.split(jax.random.key(6), 8))
    for name in ("image", "label", "mask"):
        np.testing.assert_array_equal(np.asarray(a[name]), np.asarray(b[name]))
    assert not np.array_equal(np.asarray(a["image"]), np.asarray(c["image"]))


class _FakeDevice:
    def __init__(self, platform, limit):
        self.platform, self.limit = platform, limit

    def memory_stats(self):
        return {"bytes_limit": self.limit}


@pytest.mark.parametrize("augment", [AugmentConfig(gamma=0.3), AugmentConfig(contrast=0.1, per_channel=True)])
def test_host_only_augmentation_refuses_device_data(augment):
    """The in-step sampler has no gamma and no per-channel jitter: --data-on-device yes is
    refused naming them instead of training without them."""
    from unet_jax.config import ConfigError, DataConfig, RunConfig
    from unet_jax.training.run import training_data

    source = InMemorySource([_coded_example(k, 32, 32) for k in range(2)])
    cfg = RunConfig(data=DataConfig(patch_size=16, augment=augment, on_device="yes"))
    with pytest.raises(ConfigError, match="gamma or per-channel intensity jitter"):
        training_data(cfg, source, local_batch=2)


def test_resolve_on_device():
    assert resolve_on_device("yes", 1 << 60, 0.25) and not resolve_on_device("no", 1, 0.25)
    gpu = _FakeDevice("gpu", 1000)
    assert resolve_on_device("auto", 250, 0.25, gpu) and not resolve_on_device("auto", 251, 0.25, gpu)
    assert not resolve_on_device("auto", 1, 0.25, _FakeDevice("cpu", 1000))


def test_automatic_steps_per_call_divides_every_step_count():
    t = TrainConfig()  # 1500 steps; log 25, validate and checkpoint every 250
    assert (t.steps_per_call, t.resolved_steps_per_call(False), t.resolved_steps_per_call(True)) == (0, 1, 25)
    assert TrainConfig(steps=1000, log_every=10).resolved_steps_per_call(True) == 10
    assert TrainConfig(steps=1200, log_every=40, eval_every=400, checkpoint_every=400).resolved_steps_per_call(True) == 20
    assert TrainConfig(steps=7, log_every=7, eval_every=7, checkpoint_every=7).resolved_steps_per_call(True) == 7
    assert TrainConfig(steps=101, log_every=1).resolved_steps_per_call(True) == 1
    assert TrainConfig(steps_per_call=5).resolved_steps_per_call(True) == 5  # as set, also on the host:
    assert TrainConfig(steps_per_call=5).resolved_steps_per_call(False) == 5  # fit() refuses that one


@pytest.fixture
def tiny_run(source):
    cfg = TrainConfig(steps=8, batch_size=4, warmup_steps=2, log_every=2, eval_every=4, checkpoint_every=4,
                      steps_per_call=2)
    model = models.create("unet", in_channels=3, out_channels=1, features=2, depth=1)
    state = create_train_state(model, cfg, (1, 32, 32, 3), jax.random.key(0))
    state = state.replace(data_rng=np.asarray(jax.random.key_data(jax.random.key(7))))
    return cfg, state, prepare_device_data(source, 32), DeviceSampler(patch_size=32, foreground_bias=0.3)


def test_one_compile_with_steps_per_call_and_bit_exact_resume(tiny_run, tmp_path):
    cfg, state0, data, sampler = tiny_run
    kw = dict(cfg=cfg, loss_fn=losses.get_loss("bce_dice"), progress=False, sampler=sampler)
    ckpt = Checkpointer(tmp_path / "ck", every=4, keep=5)
    final, stats = fit(state0, data, checkpointer=ckpt, **kw)
    assert int(final.step) == 8 and stats.step_traces == 1 and stats.step_cache_size == 1
    # Resume from the step-4 checkpoint (it holds the sampler's key): the same final state.
    mid, data_state, meta = ckpt.restore(state0, step=4)
    ckpt.close()
    assert meta["step"] == 4 and data_state is None and not np.array_equal(mid.data_rng, state0.data_rng)
    resumed, _ = fit(mid, data, **kw)
    for x, y in zip(jax.tree.leaves(final), jax.tree.leaves(resumed)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
