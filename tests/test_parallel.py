"""Data parallelism: 4 forced CPU devices train like 1 device; one compile; batch split errors.

Everything runs in one subprocess (tests/_parallel_worker.py) with 4 forced CPU devices,
since JAX's device count is fixed when it initialises; the one-device references run
there on a mesh of the first device.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("four_devices")
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    proc = subprocess.run([sys.executable, str(ROOT / "tests" / "_parallel_worker.py"), str(out), "4"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads((out / "facts.json").read_text()), dict(np.load(out / "params.npz"))


def test_four_devices_with_synced_batch_norm_match_one_device(runs):
    facts, p = runs
    assert facts["devices"] == 4
    # Same global batch, same seed, 20 steps: only float summation order differs.
    np.testing.assert_allclose(p["sync"], p["one"], rtol=1e-3, atol=5e-4)
    assert np.max(np.abs(p["sync"] - p["one"])) < 1e-3


def test_device_resident_data_on_four_devices_matches_one_device(runs):
    """Each device samples its own slice of the global batch from the shared key: the same
    patches as on one device, so the same training up to summation order (as above)."""
    facts, p = runs
    np.testing.assert_allclose(p["device_sync"], p["device_one"], rtol=1e-3, atol=5e-4)
    assert np.max(np.abs(p["device_sync"] - p["device_one"])) < 1e-3
    assert np.max(np.abs(p["device_sync"] - p["sync"])) > 1e-2  # other data than the host batches
    assert (facts["traces_device"], facts["cache_size_device"]) == (1, 1)


def test_per_device_batch_norm_differs_by_design(runs):
    _, p = runs
    # Each device normalises its 2 examples with their own statistics: a different model.
    assert np.max(np.abs(p["local"] - p["one"])) > 1e-2


def test_one_device_step_is_the_single_device_train_step(runs):
    """On one device the data-parallel step reproduces steps.train_step bit for bit."""
    _, p = runs
    np.testing.assert_array_equal(p["one"], p["plain"])


def test_train_step_compiles_once(runs):
    facts, _ = runs
    assert (facts["traces"], facts["cache_size"]) == (1, 1)
    assert (facts["traces_one"], facts["cache_size_one"]) == (1, 1)


def test_global_batch_not_divisible_by_devices_is_a_clear_error(runs):
    facts, _ = runs
    for msg in (facts["fit_error"], facts["cli_err"]):
        assert "--batch-size 6" in msg and "4 devices" in msg
    assert facts["cli_rc"] == 2 and "Traceback" not in facts["cli_err"]
    assert not facts["cli_workdir_created"]
