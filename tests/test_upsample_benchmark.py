"""benchmarks.upsample at a tiny size: one row per point, every (upsample, pool) variant timed against the first."""

import pytest

from benchmarks import upsample


def test_tiny_grid_times_every_variant_against_the_first(tmp_path):
    r = upsample.main(["--points", "2x32", "--features", "4", "--depth", "2", "--steps", "2", "--rounds", "1",
                       "--upsample", "depth_to_space", "--pool", "window", "reshape",
                       "--out", str(tmp_path / "u.json")])
    (row,) = r["rows"]
    assert row["baseline"] == "depth_to_space+window"
    assert set(row["variants"]) == {"depth_to_space+window", "depth_to_space+reshape"}
    base = row["variants"]["depth_to_space+window"]["median_step_s"]
    for v in row["variants"].values():
        assert v["images_per_s"] == pytest.approx(2 / v["median_step_s"])
        assert v["speedup"] == pytest.approx(base / v["median_step_s"])
