"""Fixtures shared by several test modules."""

import pytest


@pytest.fixture
def compile_cache(tmp_path):
    """A persistent XLA cache for one test whose runs compile the same programs.

    Test speed only (a cached executable is the one compiled before, so results do not
    change); the process's cache settings are restored afterwards.
    """
    import jax
    from jax.experimental.compilation_cache import compilation_cache as cc

    keys = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs",
            "jax_persistent_cache_min_entry_size_bytes")
    old = {k: getattr(jax.config, k) for k in keys}
    for k, v in zip(keys, (str(tmp_path / "xla_cache"), 0, 0)):
        jax.config.update(k, v)
    cc.reset_cache()
    yield
    for k, v in old.items():
        jax.config.update(k, v)
    cc.reset_cache()
