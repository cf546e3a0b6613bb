"""Fixtures shared by several test modules."""

from __future__ import annotations

import os

# XLA's CPU backend at optimisation level 1 instead of its default 3: most of the suite's
# time is compiling tiny programs, and level 1 cut the tests' summed time by about a tenth
# (README, Development); the tests' subprocesses inherit it. Every test compares programs
# compiled alike, or against a reference with a tolerance that does not rest on kernel
# rounding; the test of `init_variables` compiles its default-level reference explicitly.
# Set before JAX starts its backend (the imports below only load modules); a level already
# in XLA_FLAGS is kept.
if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = ("--xla_backend_optimization_level=1 " + os.environ.get("XLA_FLAGS", "")).strip()

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
from filelock import FileLock  # noqa: E402

from experiments import drive  # noqa: E402
from unet_jax import data  # noqa: E402

# pytest-xdist's workers (the default addopts) share one accelerator: without this, JAX on a
# GPU would preallocate 75% of its memory in every worker and the second one would run out.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

# A few steps on synthetic fundus images (no data needed): a real, finished run to load.
TINY = ["--synthetic", "--features", "4", "--depth", "2", "--patch-size", "32", "--batch-size", "8",
        "--warmup-steps", "2", "--steps", "8", "--eval-every", "4", "--log-every", "4", "--no-progress"]


@pytest.fixture(scope="session", autouse=True)
def compile_cache(tmp_path_factory):
    """One persistent XLA cache for the whole session: many tests build the same tiny
    models and steps, and a cached executable is the one compiled before (results do not
    change; only compile time is saved). The process's settings are restored afterwards."""
    import jax
    from jax.experimental.compilation_cache import compilation_cache as cc

    keys = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs",
            "jax_persistent_cache_min_entry_size_bytes")
    old = {k: getattr(jax.config, k) for k in keys}
    for k, v in zip(keys, (str(tmp_path_factory.mktemp("xla_cache")), 0, 0)):
        jax.config.update(k, v)
    cc.reset_cache()
    yield
    for k, v in old.items():
        jax.config.update(k, v)
    cc.reset_cache()


def synthetic_subset(num_train: int, num_test: int, **kw):
    """A stand-in for `data.get` giving the first images of the synthetic set (image i does not
    depend on how many there are, so a test reading image 0 sees the default set's image 0)."""
    return lambda name, **options: data.SyntheticDrive(num_train, num_test, **kw, **options)


@pytest.fixture
def use_synthetic(monkeypatch):
    """``use_synthetic(num_train, num_test, size=...)``: `--synthetic` runs in this test use
    that subset (:func:`synthetic_subset`)."""
    return lambda *args, **kw: monkeypatch.setattr(data, "get", synthetic_subset(*args, **kw))


@pytest.fixture(scope="session")
def run_dir(tmp_path_factory, worker_id) -> Path:
    """A tiny finished training run, trained once per session (test_predict, test_app).

    pytest-xdist's workers (the default addopts: whole modules per worker) share it through
    their common base folder; a lock makes the first one train it and the others wait."""
    base = tmp_path_factory.getbasetemp()
    wd = (base if worker_id == "master" else base.parent) / "tiny_run"
    with FileLock(f"{wd}.lock"):
        if not (wd / "results.json").is_file():
            # The tests read test image 0; 18 more test images would only cost evaluation
            # time while another worker may be waiting here.
            with pytest.MonkeyPatch.context() as mp:
                mp.setattr(data, "get", synthetic_subset(6, 2))
                assert drive.main(TINY + ["--workdir", str(wd)]) == 0
    return wd


@pytest.fixture(scope="session")
def predictor(run_dir):
    """``load_predictor(run_dir)`` (its best checkpoint), loaded once per session."""
    from unet_jax.predictor import load_predictor

    return load_predictor(run_dir)
