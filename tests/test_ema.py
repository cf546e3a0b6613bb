"""The exponential moving average of the weights (``--ema-decay``): the update rule, what
evaluation uses, checkpoints and the flag."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from experiments import drive
from unet_jax import models
from unet_jax.config import ConfigError, TrainConfig
from unet_jax.training.checkpoint import CheckpointError, Checkpointer
from unet_jax.training.state import TrainState, create_train_state
from unet_jax.training.steps import eval_step

from test_checkpoint import TINY  # 12 steps, checkpoints every 4


def _toy_state(ema_decay: float) -> TrainState:
    params = {"w": jnp.asarray([0.5, -1.0, 2.0]), "b": jnp.asarray(0.25)}
    stats = {"mean": jnp.asarray([1.0, 0.0])}
    return TrainState.create(apply_fn=None, params=params, tx=optax.sgd(0.1), batch_stats=stats, ema_decay=ema_decay)


@pytest.mark.parametrize("decay", [0.5, 0.9, 0.999])
def test_the_average_follows_its_recursion(decay):
    """float64 numpy recursion of params (SGD), batch statistics and their average, with the
    warm-up decay min(d, (1 + t) / (10 + t)); float32 state within a bound on its rounding."""
    rng = np.random.default_rng(0)
    state = _toy_state(decay)
    step = jax.jit(lambda s, g, m: s.apply_gradients(grads=g, batch_stats=m))
    live = {"w": np.array([0.5, -1.0, 2.0]), "b": np.array(0.25), "mean": np.array([1.0, 0.0])}
    avg = {k: v.copy() for k, v in live.items()}
    n = 40
    for t in range(1, n + 1):
        g = {"w": rng.normal(size=3), "b": rng.normal()}
        mean = rng.normal(size=2)
        state = step(state, jax.tree.map(jnp.float32, g), {"mean": jnp.float32(mean)})
        live = {"w": live["w"] - 0.1 * g["w"], "b": live["b"] - 0.1 * g["b"], "mean": mean}
        d = min(decay, (1 + t) / (10 + t))
        avg = {k: d * avg[k] + (1 - d) * live[k] for k in avg}
    got = {"w": state.ema["params"]["w"], "b": state.ema["params"]["b"], "mean": state.ema["batch_stats"]["mean"]}
    # Each step rounds a handful of float32 operations on values of this size.
    scale = max(np.abs(v).max() for v in live.values()) + max(np.abs(v).max() for v in avg.values())
    tol = n * 8 * np.finfo(np.float32).eps * scale
    for k in avg:
        np.testing.assert_allclose(np.asarray(got[k], np.float64), avg[k], rtol=0, atol=tol, err_msg=k)
    assert int(state.step) == n
    # The average lags the live weights (a test of the direction of the blend).
    assert not np.allclose(np.asarray(state.ema["params"]["w"]), np.asarray(state.params["w"]))


def test_without_decay_there_is_no_average_and_the_update_is_flax_s():
    state = _toy_state(0.0)
    grads = {"w": jnp.ones(3), "b": jnp.asarray(1.0)}
    new = state.apply_gradients(grads=grads)
    assert new.ema is None
    np.testing.assert_array_equal(new.params["w"], np.float32([0.5, -1.0, 2.0]) - np.float32(0.1))
    assert new.eval_variables() == {"params": new.params, "batch_stats": new.batch_stats}


def test_evaluation_applies_the_average():
    model = models.create("unet", in_channels=1, out_channels=1, features=4, depth=2)
    state = create_train_state(model, TrainConfig(ema_decay=0.99), (1, 16, 16, 1), jax.random.key(0))
    assert jax.tree.all(jax.tree.map(lambda a, b: bool(jnp.array_equal(a, b)), state.ema["params"], state.params))
    # A different average than the live weights: evaluation must use it.
    ema = {"params": jax.tree.map(lambda p: 0.5 * p, state.params), "batch_stats": state.batch_stats}
    state = state.replace(ema=ema)
    x = jax.random.normal(jax.random.key(1), (2, 16, 16, 1))
    want = jax.nn.sigmoid(model.apply(ema, x, train=False)[..., 0])
    live_vars = {"params": state.params, "batch_stats": state.batch_stats}
    live = jax.nn.sigmoid(model.apply(live_vars, x, train=False)[..., 0])
    got = eval_step(state, x)
    np.testing.assert_array_equal(got, want)
    assert not np.allclose(got, live)


def test_checkpoints_without_the_optional_fields_restore(tmp_path):
    """A checkpoint written before TrainState had ``ema`` and ``data_rng`` restores into a
    state that uses neither; a state that needs the average is refused."""
    state = _toy_state(0.0)
    older = {"step": state.step, "params": state.params, "opt_state": state.opt_state,
             "batch_stats": state.batch_stats}
    ckpt = Checkpointer(tmp_path / "ck", every=1, keep=1)
    ckpt.save_latest(3, older)
    restored, _, meta = ckpt.restore(_toy_state(0.0))
    assert meta["step"] == 3 and restored.ema is None and restored.data_rng is None
    np.testing.assert_array_equal(restored.params["w"], state.params["w"])
    with pytest.raises(CheckpointError, match=r"ck/latest/3 holds no TrainState\.ema .* --ema-decay"):
        ckpt.restore(_toy_state(0.9))
    ckpt.close()


def test_a_run_with_ema_saves_and_predicts_with_the_average(tmp_path, use_synthetic):
    from unet_jax.predictor import load_run_state

    use_synthetic(4, 2, size=(96, 96))
    wd = tmp_path / "run"
    assert drive.main(TINY + ["--ema-decay", "0.9", "--workdir", str(wd)]) == 0
    assert json.loads((wd / "config.json").read_text())["train"]["ema_decay"] == 0.9
    assert "moving average of the weights (decay 0.9)" in json.loads((wd / "results.json").read_text())["test_params"]
    _, _, state = load_run_state(wd, which="final")
    assert state.ema_decay == 0.9 and int(state.step) == 12
    # After 12 steps at a 1e-2 learning rate the average and the live weights differ.
    diffs = jax.tree.leaves(jax.tree.map(lambda a, b: float(jnp.abs(a - b).max()), state.ema["params"], state.params))
    assert max(diffs) > 0


def test_a_bad_decay_is_refused(capsys):
    with pytest.raises(ConfigError, match="ema_decay"):
        TrainConfig(ema_decay=1.0)
    assert drive.main(TINY + ["--ema-decay", "-0.1"]) == 2
    assert "--ema-decay" in capsys.readouterr().err
