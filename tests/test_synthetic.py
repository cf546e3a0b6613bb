"""The built-in synthetic fundus generator."""

from __future__ import annotations

import time

import numpy as np
import pytest

from unet_jax.data import Example, make_synthetic_drive


@pytest.fixture(scope="module")
def small_set():
    return make_synthetic_drive(3, 2, seed=0)


def test_shapes_ids_and_dtypes(small_set):
    train, test = small_set
    assert [e.id for e in train] == ["syn_train_00", "syn_train_01", "syn_train_02"]
    assert [e.id for e in test] == ["syn_test_00", "syn_test_01"]
    for e in train + test:
        assert isinstance(e, Example)
        assert e.image.shape == (584, 565, 3) and e.image.dtype == np.uint8
        assert e.label.shape == e.valid.shape == (584, 565)
        assert e.label.dtype == e.valid.dtype == np.uint8


def test_labels_binary_inside_circular_fov(small_set):
    for e in small_set[0] + small_set[1]:
        assert set(np.unique(e.label)) == {0, 1}
        assert set(np.unique(e.valid)) == {0, 1}
        assert not (e.label & (1 - e.valid)).any()  # no vessel outside the FOV
        assert not e.image[e.valid == 0].any()  # black outside the FOV
        h, w = e.valid.shape
        assert e.valid[h // 2, w // 2] == 1 and e.valid[0, 0] == e.valid[-1, -1] == 0
        assert 0.6 < e.valid.mean() < 0.75  # a disc inscribed in the frame, like DRIVE


def test_vessels_plausible(small_set):
    fracs = []
    for e in small_set[0] + small_set[1]:
        inside = e.valid > 0
        vessel = inside & (e.label > 0)
        fracs.append(vessel.sum() / inside.sum())
        # Vessels are darker than the background, most of all in green.
        bg = e.image[inside & ~vessel].astype(float).mean(0)
        ves = e.image[vessel].astype(float).mean(0)
        assert (ves < bg).all()
        assert np.argmax(bg - ves) == 1
        # Reddish-orange fundus: R > G > B.
        assert bg[0] > bg[1] > bg[2]
    assert 0.05 < np.mean(fracs) < 0.2, fracs
    assert all(0.03 < f < 0.25 for f in fracs), fracs


def test_deterministic_and_seed_dependent():
    a, _ = make_synthetic_drive(2, 0, seed=5, size=(128, 120))
    b, _ = make_synthetic_drive(2, 0, seed=5, size=(128, 120))
    c, _ = make_synthetic_drive(2, 0, seed=6, size=(128, 120))
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x.image, y.image)
        np.testing.assert_array_equal(x.label, y.label)
    assert not np.array_equal(a[0].image, c[0].image)
    assert not np.array_equal(a[0].image, a[1].image)
    # Image i does not depend on how many images are generated.
    (first,), _ = make_synthetic_drive(1, 0, seed=5, size=(128, 120))
    np.testing.assert_array_equal(first.image, a[0].image)
    assert a[0].image.shape == (128, 120, 3)


def test_fast():
    t0 = time.perf_counter()
    make_synthetic_drive(4, 0, seed=1)
    # Target is < 0.1 s per image; allow slack for a loaded CI machine.
    assert (time.perf_counter() - t0) / 4 < 0.5
