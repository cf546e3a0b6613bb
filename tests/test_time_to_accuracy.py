"""benchmarks.time_to_accuracy at a tiny size: both frameworks train from the same weights,
are validated at the same steps, and report test F1/AUC."""

import pytest

pytest.importorskip("torch")

from benchmarks import time_to_accuracy  # noqa: E402
from unet_jax import data  # noqa: E402
from unet_jax.config import DataConfig, ModelConfig, RunConfig, TrainConfig  # noqa: E402


def test_tiny_race(tmp_path):
    cfg = RunConfig(model=ModelConfig(features=4, depth=2), data=DataConfig(patch_size=32),
                    train=TrainConfig(steps=4, batch_size=4, warmup_steps=1))
    dataset = data.SyntheticDrive(3, 1, size=(48, 48))
    r = time_to_accuracy.run(cfg, dataset, max_seconds=1e9, eval_every=2)
    assert r["params"]["jax"] == r["params"]["torch"] > 0
    assert r["steps"] == {"jax": 4, "torch": 4}
    for name in ("jax", "torch"):
        assert [c["step"] for c in r["curves"][name]] == [0, 2, 4]
        times = [c["train_s"] for c in r["curves"][name]]
        assert 0 == times[0] < times[1] <= times[2] == r["train_s"][name]
        assert all(0 <= c["val_f1"] <= 1 for c in r["curves"][name])
        assert 0 <= r["test"][name]["f1"] <= 1 and 0 <= r["test"][name]["auc"] <= 1
    time_to_accuracy.plot({**r, "arch": "unet", "dataset": "synthetic", "machine": {"device": "cpu"}},
                          tmp_path / "p.png")
    assert (tmp_path / "p.png").stat().st_size > 1000
