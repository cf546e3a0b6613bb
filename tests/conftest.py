"""Fixtures shared by several test modules."""

from __future__ import annotations

from pathlib import Path

import pytest

from experiments import drive

# A few steps on synthetic fundus images (no data needed): a real, finished run to load.
TINY = ["--synthetic", "--features", "4", "--depth", "2", "--patch-size", "32", "--batch-size", "8",
        "--warmup-steps", "2", "--steps", "8", "--eval-every", "4", "--log-every", "4", "--no-progress"]


@pytest.fixture(scope="session")
def run_dir(tmp_path_factory) -> Path:
    """A tiny finished training run, trained once per session (test_predict, test_app)."""
    wd = tmp_path_factory.mktemp("predict") / "run"
    assert drive.main(TINY + ["--workdir", str(wd)]) == 0
    return wd


@pytest.fixture(scope="session")
def predictor(run_dir):
    """``load_predictor(run_dir)`` (its best checkpoint), loaded once per session: each load
    compiles the model's initialisation again, which takes seconds on a 2-core CPU."""
    from unet_jax.predictor import load_predictor

    return load_predictor(run_dir)
