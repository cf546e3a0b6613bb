"""End to end: `experiments.drive` on synthetic data, its outputs, and its bad-input errors."""

import json

import jax
import numpy as np
import pytest

from experiments import drive
from unet_jax import losses, models
from unet_jax.config import RunConfig, TrainConfig
from unet_jax.training.loop import NonFiniteLossError, fit
from unet_jax.training.state import create_train_state

TINY = [
    "--synthetic",
    "--features",
    "4",
    "--depth",
    "2",
    "--patch-size",
    "32",
    "--batch-size",
    "8",
    "--warmup-steps",
    "5",
    "--lr",
    "1e-2",
    "--no-progress",
]


@pytest.mark.slow
def test_tiny_synthetic_run_learns_and_writes_everything(tmp_path, use_synthetic):
    # The default 20 training images, 4 of the 20 test images: every output is written and
    # checked, at a fifth of the test set's cost.
    use_synthetic(20, 4)
    wd = tmp_path / "run"
    flags = ["--steps", "40", "--log-every", "5", "--eval-every", "20", "--pool", "reshape"]
    rc = drive.main(TINY + flags + ["--workdir", str(wd)])
    assert rc == 0
    records = [json.loads(l) for l in (wd / "metrics.jsonl").read_text().splitlines()]
    train_losses = [r["loss"] for r in records if r["split"] == "train"]
    assert len(train_losses) == 8
    assert np.mean(train_losses[-2:]) < np.mean(train_losses[:2])  # it learns
    assert [r["step"] for r in records if r["split"] == "val"] == [20, 40]

    results = json.loads((wd / "results.json").read_text())
    assert results["synthetic"] is True and results["dataset"] == "synthetic"
    for key in ("dice", "auc", "sensitivity", "specificity", "accuracy", "iou"):
        assert 0.0 <= results["test"][key] <= 1.0
    config = json.loads((wd / "config.json").read_text())
    assert config["data"]["dataset"] == "synthetic" and config["train"]["steps"] == 40
    assert config["model"]["pool"] == "reshape" and config["model"]["upsample"] == "auto"
    assert results["upsample"] == ("depth_to_space" if jax.default_backend() == "cpu" else "transpose")
    assert RunConfig.from_dict(config) == drive.build(drive.build_parser().parse_args(TINY + flags))[0]  # config.json rebuilds the run's configuration

    rows = (wd / "per_image.csv").read_text().splitlines()
    assert len(rows) == 1 + 4 and rows[0].startswith("id,")
    for suffix in ("prob", "pred", "overlay"):
        assert len(list((wd / "predictions").glob(f"*_{suffix}.png"))) == 4
    assert (wd / "curves.png").stat().st_size > 0
    assert any((wd / "tb").glob("events.out.tfevents.*"))


def test_missing_drive_names_paths_and_writes_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("UNET_JAX_DRIVE_DIR", raising=False)
    monkeypatch.chdir(tmp_path)
    wd = tmp_path / "run"
    rc = drive.main(["--data-dir", str(tmp_path / "nowhere"), "--workdir", str(wd), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2
    assert str(tmp_path / "nowhere") in err and "training" in err
    assert "Traceback" not in err
    assert not wd.exists()


@pytest.mark.parametrize("flag,value", [("--arch", "vnet"), ("--loss", "hinge"), ("--pool", "avg")])
def test_unknown_choice_is_rejected_by_name(flag, value, capsys):
    with pytest.raises(SystemExit) as e:
        drive.main([flag, value])
    assert e.value.code == 2
    assert flag in capsys.readouterr().err


def test_invalid_number_names_the_flag(tmp_path, capsys):
    assert drive.main(TINY + ["--patch-size", "30", "--workdir", str(tmp_path / "x")]) == 2
    assert "--patch-size" in capsys.readouterr().err


def test_per_image_loss_without_the_option_is_refused_before_writing(tmp_path, capsys):
    wd = tmp_path / "x"
    assert drive.main(TINY + ["--loss", "bce", "--loss-per-image", "--workdir", str(wd)]) == 2
    assert "'bce' has no per-image form" in capsys.readouterr().err
    assert not wd.exists()


def test_existing_run_is_not_overwritten(tmp_path, capsys):
    wd = tmp_path / "run"
    wd.mkdir()
    (wd / "results.json").write_text("{}")
    assert drive.main(TINY + ["--steps", "1", "--workdir", str(wd)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert (wd / "results.json").read_text() == "{}"


def test_nan_loss_stops_at_its_step():
    model = models.create("unet", features=2, depth=1, in_channels=1)
    cfg = TrainConfig(steps=6, batch_size=2, log_every=3, warmup_steps=1)
    state = create_train_state(model, cfg, (1, 8, 8, 1), jax.random.key(0))
    ok = {
        "image": np.ones((2, 8, 8, 1), np.float32),
        "label": np.ones((2, 8, 8, 1), np.float32),
        "mask": np.ones((2, 8, 8, 1), np.float32),
    }
    bad = {**ok, "image": np.full((2, 8, 8, 1), np.nan, np.float32)}
    batches = iter([ok, ok, ok, ok, bad, ok])
    with pytest.raises(NonFiniteLossError, match="step 5") as e:
        fit(state, batches, cfg=cfg, loss_fn=losses.bce_loss, progress=False)
    assert e.value.step == 5


@pytest.mark.parametrize("select, best", [("dice", 1), ("dice_per_case_mean", 2)])
def test_the_selected_validation_figure_chooses_the_best_checkpoint(tmp_path, select, best):
    from unet_jax.training.checkpoint import Checkpointer

    model = models.create("unet", features=2, depth=1, in_channels=1)
    cfg = TrainConfig(steps=4, batch_size=2, log_every=1, eval_every=1, warmup_steps=1, select=select)
    state = create_train_state(model, cfg, (1, 8, 8, 1), jax.random.key(0))
    ones = np.ones((2, 8, 8, 1), np.float32)
    batch = {"image": ones, "label": ones, "mask": ones}
    figures = iter([(0.9, 0.1), (0.5, 0.8), (0.6, 0.3), (0.7, 0.2)])  # (pooled, per-case mean) at steps 1..4

    def validate(_):
        pooled, per_case = next(figures)
        return {"dice": pooled, "dice_per_case_mean": per_case}, None

    ckpt = Checkpointer(tmp_path / "checkpoints", every=4, keep=1)
    fit(state, iter([batch] * 4), cfg=cfg, loss_fn=losses.bce_loss, progress=False, validate=validate,
        checkpointer=ckpt)
    assert ckpt.best_step == best
    ckpt.close()
    with pytest.raises(ValueError, match="select"):
        TrainConfig(select="auc")
