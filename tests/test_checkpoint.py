"""Checkpoints: retention, best-by-validation, atomic saves, and bit-exact --resume."""

import json
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from experiments import drive
from unet_jax.training import checkpoint
from unet_jax.training.checkpoint import Checkpointer

TINY = [
    "--synthetic", "--features", "4", "--depth", "2", "--patch-size", "32", "--batch-size", "8",
    "--warmup-steps", "3", "--lr", "1e-2", "--no-progress",
    "--steps", "12", "--checkpoint-every", "4", "--eval-every", "6", "--log-every", "2",
]


class SimulatedCrash(Exception):
    pass


@pytest.fixture
def tiny_data(use_synthetic):
    """Four 96x96 synthetic training images (2 train, 2 val) and two test images."""
    use_synthetic(4, 2, size=(96, 96))


def _state(path: Path) -> list[np.ndarray]:
    tree = ocp.StandardCheckpointer().restore(path.resolve())
    return [np.asarray(x) for x in __import__("jax").tree.leaves(tree)]


def _records(wd: Path) -> list[tuple]:
    out = []
    for line in (wd / "metrics.jsonl").read_text().splitlines():
        r = json.loads(line)
        out.append((r["split"], r["step"], r.get("loss"), r.get("dice")))
    return out


def test_retention_best_and_data_state(tmp_path):
    ckpt = Checkpointer(tmp_path / "ck", every=1, keep=2, run_meta={"seed": 3})
    dice = {1: 0.3, 2: 0.5, 3: 0.4, 4: float("nan")}
    for step in range(1, 6):
        if step in dice:
            ckpt.offer_best(step, {"w": jnp.full((3,), float(step))}, {"next_index": step}, dice[step])
        ckpt.save_latest(step, {"w": jnp.full((3,), float(step))}, {"next_index": step})
    assert ckpt.latest.all_steps() == [4, 5] and ckpt.best.all_steps() == [2]
    state, data, meta = ckpt.restore({"w": jnp.zeros(3)})
    assert np.array_equal(state["w"], [5, 5, 5]) and data == {"next_index": 5}
    assert meta["step"] == 5 and meta["seed"] == 3 and meta["best_step"] == 2
    state, data, meta = ckpt.restore({"w": jnp.zeros(3)}, which="best")
    assert np.array_equal(state["w"], [2, 2, 2]) and data == {"next_index": 2} and meta["val_dice"] == 0.5
    ckpt.close()
    reopened = Checkpointer(tmp_path / "ck", every=1, keep=2)  # the best so far survives a restart
    assert (reopened.best_step, reopened.best_dice) == (2, 0.5)
    reopened.close()


def test_a_relative_directory_saves_and_restores(tmp_path, monkeypatch):
    """A relative checkpoint directory (a --workdir runs/x, or the default runs/<name>) once
    crashed at the first save: orbax wants absolute paths."""
    monkeypatch.chdir(tmp_path)
    ckpt = Checkpointer(Path("runs/x/checkpoints"), every=1, keep=1)
    ckpt.offer_best(1, {"w": jnp.ones(2)}, None, 0.5)
    ckpt.save_latest(1, {"w": jnp.ones(2)}, None)
    ckpt.close()
    state, _, meta = Checkpointer(Path("runs/x/checkpoints"), every=1, keep=1).restore({"w": jnp.zeros(2)})
    assert np.array_equal(state["w"], [1, 1]) and meta["step"] == 1
    assert (tmp_path / "runs/x/checkpoints/best/1").is_dir()


@pytest.mark.slow
def test_the_front_door_with_a_relative_workdir_trains_and_predicts(tmp_path, tiny_data, monkeypatch):
    from unet_jax.predictor import load_predictor

    monkeypatch.chdir(tmp_path)
    assert drive.main(TINY + ["--steps", "4", "--eval-every", "4", "--workdir", "runs/rel"]) == 0
    assert json.loads(Path("runs/rel/results.json").read_text())["test"]["dice"] >= 0
    probs = load_predictor("runs/rel", which="final")(np.zeros((40, 40, 3), np.uint8))
    assert probs.shape[:2] == (40, 40)


def test_config_differences_ignore_bookkeeping_fields():
    from unet_jax.config import RunConfig, TrainConfig

    a = RunConfig().to_dict()
    b = RunConfig(train=TrainConfig(checkpoint_every=10, keep=5, log_every=1, eval_every=7)).to_dict()
    assert checkpoint.config_differences(a, b) == []
    c = RunConfig(train=TrainConfig(lr=1e-3, precision="bf16")).to_dict()
    assert checkpoint.config_differences(a, c) == ["train.lr: 0.002 -> 0.001", "train.precision: 'fp32' -> 'bf16'"]


@pytest.mark.slow
def test_killed_mid_save_then_resumed_equals_uninterrupted(tmp_path, tiny_data, monkeypatch, capsys):
    # A: 12 uninterrupted steps.
    a = tmp_path / "a"
    assert drive.main(TINY + ["--workdir", str(a)]) == 0

    # B: the same run, crashing in the middle of writing the step-8 checkpoint (after its
    # model state may have been written, before the checkpoint is committed).
    b = tmp_path / "b"
    real_get_state = checkpoint._FrozenIteratorState.get_state

    def crash_at_8(self):
        if self.state == {"next_index": 8}:
            raise SimulatedCrash("killed while saving step 8")
        return real_get_state(self)

    monkeypatch.setattr(checkpoint._FrozenIteratorState, "get_state", crash_at_8)
    with pytest.raises(SimulatedCrash):
        drive.main(TINY + ["--workdir", str(b)])
    monkeypatch.setattr(checkpoint._FrozenIteratorState, "get_state", real_get_state)

    latest = b / "checkpoints" / "latest"
    assert not (b / "results.json").exists()
    assert [p.name for p in latest.iterdir() if "tmp" in p.name], "expected the interrupted save's temporary folder"
    ckpt = Checkpointer(b / "checkpoints", every=4, keep=2)
    assert ckpt.latest_step() == 4  # the partial step 8 is not a checkpoint...
    ckpt.close()
    assert _state(latest / "4" / "state")  # ...and step 4 loads
    assert max(s for _, s, _, _ in _records(b)) == 8  # logged past the checkpoint before dying

    # Resuming with other settings is refused, naming the difference.
    capsys.readouterr()
    assert drive.main(TINY + ["--lr", "5e-3", "--workdir", str(b), "--resume"]) == 2
    assert "train.lr: 0.01 -> 0.005" in capsys.readouterr().err

    # Resume: continues from step 4 and ends bit-identical to A.
    assert drive.main(TINY + ["--workdir", str(b), "--resume"]) == 0
    ra, rb = (json.loads((w / "results.json").read_text()) for w in (a, b))
    assert rb["resumed_from_step"] == 4 and rb["train_step_compiles"] == 1 and ra["train_step_compiles"] == 1
    for x, y in zip(_state(a / "checkpoints/latest/12/state"), _state(b / "checkpoints/latest/12/state")):
        np.testing.assert_array_equal(x, y)
    assert ra["test"] == rb["test"] and ra["test_best_val"] == rb["test_best_val"]
    assert _records(a) == _records(b)  # same losses and val scores at the same steps, no duplicates
    assert not [p for p in latest.iterdir() if "tmp" in p.name]
    assert sorted(int(p.name) for p in latest.iterdir()) == [8, 12]

    # A finished run is not resumed again.
    assert drive.main(TINY + ["--workdir", str(b), "--resume"]) == 2
    assert "finished" in capsys.readouterr().err



@pytest.mark.slow
def test_device_resident_data_resumes_bit_exact(tmp_path, tiny_data, monkeypatch):
    """The same with patches sampled in the step (the key is in the train state), 2 steps per call."""
    flags = TINY + ["--data-on-device", "yes", "--steps-per-call", "2"]
    a, b = tmp_path / "a", tmp_path / "b"
    assert drive.main(flags + ["--workdir", str(a)]) == 0
    real_save = Checkpointer.save_latest

    def crash_at_8(self, step, state, data_state=None):
        if step == 8:
            raise SimulatedCrash("killed while saving step 8")
        return real_save(self, step, state, data_state)

    monkeypatch.setattr(Checkpointer, "save_latest", crash_at_8)
    with pytest.raises(SimulatedCrash):
        drive.main(flags + ["--workdir", str(b)])
    monkeypatch.setattr(Checkpointer, "save_latest", real_save)
    assert drive.main(flags + ["--workdir", str(b), "--resume"]) == 0
    ra, rb = (json.loads((w / "results.json").read_text()) for w in (a, b))
    assert ra["data_on_device"] and rb["resumed_from_step"] == 4 and rb["train_step_compiles"] == 1
    for x, y in zip(_state(a / "checkpoints/latest/12/state"), _state(b / "checkpoints/latest/12/state")):
        np.testing.assert_array_equal(x, y)
    assert ra["test"] == rb["test"] and _records(a) == _records(b)
