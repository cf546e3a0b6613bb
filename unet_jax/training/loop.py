"""The training loop: feeds batches to the jitted step, logs, evaluates, stops on NaN."""

from __future__ import annotations

import dataclasses
import functools
import queue
import threading
import time
from typing import Any, Callable, Iterator

import jax
import numpy as np
from tqdm.auto import tqdm

from unet_jax.config import TrainConfig
from unet_jax.evaluation import evaluate_binary
from unet_jax.inference import predict_probs
from unet_jax.training.recorder import Recorder
from unet_jax.training.state import TrainState, make_schedule
from unet_jax.training.steps import LossFn, eval_step, train_step
from unet_jax.visualize import overlay


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite; `step` is the first such step (1-based)."""

    def __init__(self, step: int, loss: float):
        super().__init__(
            f"training loss became {loss} at step {step}; stopping. Try a lower --lr, "
            "a different --loss, or check the input data."
        )
        self.step = step


@dataclasses.dataclass
class EvalSet:
    """Whole images for evaluation: images (N,H,W,C) float32; labels and fovs (N,H,W)."""

    ids: list[str]
    images: np.ndarray
    labels: np.ndarray
    fovs: np.ndarray


@dataclasses.dataclass
class FitStats:
    first_step_s: float  # the first step, jit compilation included
    images_per_s: float  # steady state: every step after the first, evaluation excluded
    train_wall_s: float  # the whole loop, evaluation included


def make_predict_fn(state: TrainState) -> Callable[[np.ndarray], jax.Array]:
    """A jitted (N,H,W,C) -> (N,H,W) probability function bound to `state`'s weights."""
    fn = jax.jit(eval_step)
    return functools.partial(fn, state)


def _prefetch(it: Iterator[Any], size: int = 2) -> Iterator[Any]:
    """Pulls from `it` in a background thread so host-side batching overlaps the step."""
    q: queue.Queue = queue.Queue(maxsize=size)
    sentinel = object()

    def worker():
        try:
            for item in it:
                q.put(jax.device_put(item))
        except BaseException as e:  # surfaced in the consumer thread
            q.put(e)
        q.put(sentinel)

    threading.Thread(target=worker, daemon=True).start()
    while True:
        item = q.get()
        if item is sentinel:
            return
        if isinstance(item, BaseException):
            raise item
        yield item


def validate(state: TrainState, val: EvalSet, threshold: float) -> dict[str, float]:
    probs = predict_probs(make_predict_fn(state), val.images)
    return evaluate_binary(probs, val.labels, val.fovs, ids=val.ids, threshold=threshold, with_auc=True).summary


def fit(
    state: TrainState,
    batches: Iterator[dict[str, np.ndarray]],
    *,
    cfg: TrainConfig,
    loss_fn: LossFn,
    recorder: Recorder | None = None,
    val: EvalSet | None = None,
    progress: bool = True,
) -> tuple[TrainState, FitStats]:
    """Runs `cfg.steps - state.step` optimizer steps; returns the final state and timings.

    Losses stay on the device between log points (no per-step host sync); at each log
    point they are fetched together and checked, so a NaN is reported at its exact step.
    """
    step_fn = jax.jit(functools.partial(train_step, loss_fn=loss_fn), donate_argnums=0)
    schedule = make_schedule(cfg)
    start_step = int(state.step)
    pending: list[tuple[int, dict]] = []
    first_step_s = float("nan")
    steady_time, steady_images, eval_time = 0.0, 0, 0.0
    t_loop = time.perf_counter()
    bar = tqdm(total=cfg.steps, initial=start_step, desc="train", unit="step", disable=not progress, dynamic_ncols=True)

    def flush(step: int) -> None:
        fetched = jax.device_get([m for _, m in pending])
        for (s, _), m in zip(pending, fetched):
            loss = float(m["loss"])
            if not np.isfinite(loss):
                raise NonFiniteLossError(s, loss)
        s, m = pending[-1][0], fetched[-1]
        losses = [float(f["loss"]) for f in fetched]
        ips = steady_images / steady_time if steady_time > 0 else float("nan")
        record = {
            "split": "train",
            "step": s,
            "loss": float(np.mean(losses)),
            "grad_norm": float(m["grad_norm"]),
            "lr": float(schedule(s - 1)),
            "images_per_s": ips,
        }
        if recorder:
            recorder.write(record)
        bar.set_postfix(loss=f"{record['loss']:.4f}", img_s=f"{ips:.1f}")
        pending.clear()

    try:
        it = _prefetch(batches)
        t_prev = time.perf_counter()
        for step in range(start_step + 1, cfg.steps + 1):
            batch = next(it)
            state, m = step_fn(state, batch)
            pending.append((step, m))
            n_images = len(batch["image"])
            if step == start_step + 1:
                jax.block_until_ready(m)
                first_step_s = time.perf_counter() - t_prev
                t_prev = time.perf_counter()
            is_log = step % cfg.log_every == 0 or step == cfg.steps
            is_eval = val is not None and (step % cfg.eval_every == 0 or step == cfg.steps)
            if is_log or is_eval:
                jax.block_until_ready(m)
            if step > start_step + 1:
                # Time since the previous synchronisation point, excluding evaluation.
                now = time.perf_counter()
                steady_images += n_images
                if is_log or is_eval:
                    steady_time += now - t_prev
                    t_prev = now
            if is_log or is_eval:
                flush(step)
            if is_eval:
                t_eval = time.perf_counter()
                summary = validate(state, val, cfg.threshold)
                if recorder:
                    recorder.write({"split": "val", "step": step, **summary})
                    probs = predict_probs(make_predict_fn(state), val.images[:1])
                    recorder.image("val/overlay", overlay(probs[0] >= cfg.threshold, val.labels[0], val.fovs[0]), step)
                bar.write(f"step {step}: val dice {summary['dice']:.4f} auc {summary.get('auc', float('nan')):.4f}")
                eval_time += time.perf_counter() - t_eval
                t_prev = time.perf_counter()
            bar.update(1)
    finally:
        bar.close()
    # Images counted since the last sync but not timed would inflate the rate; all steps end
    # on a log point (the last step always is), so counts and times cover the same steps.
    stats = FitStats(
        first_step_s=first_step_s,
        images_per_s=steady_images / steady_time if steady_time > 0 else float("nan"),
        train_wall_s=time.perf_counter() - t_loop,
    )
    return state, stats
