"""The training loop: feeds batches to the jitted step, logs, evaluates, checkpoints, stops on NaN.

The step is data-parallel over every device (see :mod:`unet_jax.training.parallel`); on one
device it computes exactly what :func:`unet_jax.training.steps.train_step` computes.
"""

from __future__ import annotations

import copy
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
from unet_jax.data.device_sampler import DeviceData, DeviceSampler
from unet_jax.training import parallel
from unet_jax.training.checkpoint import Checkpointer
from unet_jax.training.recorder import Recorder
from unet_jax.training.state import TrainState, make_schedule
from unet_jax.training.steps import LossFn, eval_step

# Validation: state -> (figures, whose ``TrainConfig.select`` entry chooses the best
# checkpoint; an RGB picture for TensorBoard, or None).
Validate = Callable[[TrainState], tuple[dict[str, Any], np.ndarray | None]]


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite; `step` is the first such step (1-based)."""

    def __init__(self, step: int, loss: float):
        super().__init__(
            f"training loss became {loss} at step {step}; stopping. Try a lower --lr, "
            "a different --loss, or check the input data."
        )
        self.step = step


@dataclasses.dataclass
class FitStats:
    first_step_s: float  # the first step, jit compilation included
    images_per_s: float  # steady state: every step after the first, evaluation excluded
    train_wall_s: float  # the whole loop, evaluation and checkpointing included
    step_traces: int = 0  # times the train step was traced (compiled): 1 in a healthy run
    step_cache_size: int = 0  # compiled variants in the step's jit cache: 1 in a healthy run
    devices: int = 1
    checkpoint_s: float = 0.0  # time spent writing checkpoints


# One jit object for the whole process, so every validation reuses its compiled program.
_jitted_eval_step = jax.jit(eval_step)


def make_predict_fn(state: TrainState) -> Callable[[np.ndarray], jax.Array]:
    """A jitted (N,H,W,C) -> probabilities function bound to `state`'s weights (see eval_step)."""
    return functools.partial(_jitted_eval_step, state)


def _prefetch(it: Iterator[Any], sharding=None, size: int = 2) -> Iterator[tuple[Any, Any]]:
    """Pulls from `it` in a background thread so host-side batching overlaps the step.

    Yields ``(batch, data_state)``: the batch already placed on the devices (split over the
    mesh's ``data`` axis when `sharding` is given) and `it`'s ``get_state()`` taken right
    after producing it (None for iterators without state). The thread reads ahead, so the
    iterator's own state is not the state of the batch being trained on; this one is.
    Closing the generator stops the thread.
    """
    q: queue.Queue = queue.Queue(maxsize=size)
    sentinel = object()
    stop = threading.Event()
    get_state = getattr(it, "get_state", None)

    def put(item) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                pass
        return False

    def worker():
        try:
            for item in it:
                # A copy: the iterator may reuse and mutate the objects of its state.
                state = copy.deepcopy(get_state()) if get_state is not None else None
                batch = parallel.put_batch(item, sharding) if sharding is not None else jax.device_put(item)
                if not put((batch, state)):
                    return
        except BaseException as e:  # surfaced in the consumer thread
            put(e)
        put(sentinel)

    threading.Thread(target=worker, daemon=True, name="batch-prefetch").start()
    try:
        while True:
            item = q.get()
            if item is sentinel:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()


class _TrainLog:
    """Pending per-step metrics (kept on the device until a log point), the steady-state
    clock, and the train records and progress bar they feed."""

    def __init__(self, cfg: TrainConfig, recorder: Recorder | None, bar: tqdm):
        self.schedule, self.recorder, self.bar = make_schedule(cfg), recorder, bar
        self.pending: list[tuple[int, dict]] = []
        self.first_step_s = float("nan")
        self.steady_time, self.steady_images = 0.0, 0
        self.t_prev = time.perf_counter()

    def first_step_done(self) -> None:
        self.first_step_s = time.perf_counter() - self.t_prev
        self.t_prev = time.perf_counter()

    def count(self, n_images: int, sync: bool) -> None:
        """Counts a steady-state step; at a sync point, adds the time since the previous one."""
        self.steady_images += n_images
        if sync:
            now = time.perf_counter()
            self.steady_time += now - self.t_prev
            self.t_prev = now

    def restart_clock(self) -> None:
        """After evaluation or checkpointing: that time is not training time."""
        self.t_prev = time.perf_counter()

    def images_per_s(self) -> float:
        return self.steady_images / self.steady_time if self.steady_time > 0 else float("nan")

    def check_finite(self) -> tuple[list[dict], list[np.ndarray]]:
        """The pending metrics, fetched, and per call its losses (one per step; a call of
        K steps ends at its recorded step)."""
        fetched = jax.device_get([m for _, m in self.pending])
        losses = [np.atleast_1d(np.asarray(m["loss"], np.float64)) for m in fetched]
        for (s, _), ls in zip(self.pending, losses):
            for i, loss in enumerate(ls):
                if not np.isfinite(loss):
                    raise NonFiniteLossError(s - len(ls) + 1 + i, float(loss))
        return fetched, losses

    def flush(self) -> None:
        fetched, losses = self.check_finite()
        s, m = self.pending[-1][0], fetched[-1]
        ips = self.images_per_s()
        record = {
            "split": "train",
            "step": s,
            "loss": float(np.mean(np.concatenate(losses))),
            "grad_norm": float(np.atleast_1d(m["grad_norm"])[-1]),
            "lr": float(self.schedule(s - 1)),
            "images_per_s": ips,
        }
        if self.recorder:
            self.recorder.write(record)
        self.bar.set_postfix(loss=f"{record['loss']:.4f}", img_s=f"{ips:.1f}")
        self.pending.clear()


def _timed(fn: Callable[..., Any], *args: Any) -> float:
    """Seconds `fn(*args)` took."""
    t = time.perf_counter()
    fn(*args)
    return time.perf_counter() - t


def _validate(validate: Validate, state: TrainState, step: int, recorder: Recorder | None, bar: tqdm,
              select: str) -> float:
    """Runs and records one validation; returns its figure `select` (a Dice)."""
    summary, picture = validate(parallel.local_copy(state))
    if recorder:
        recorder.write({"split": "val", "step": step, **summary})
        if picture is not None:
            recorder.image("val/overlay", picture, step)
    if jax.process_index() == 0:
        auc = f" auc {summary['auc']:.4f}" if "auc" in summary else ""
        per_case = f" per-case mean {summary['dice_per_case_mean']:.4f}" if select != "dice" else ""
        bar.write(f"step {step}: val dice {summary['dice']:.4f}{per_case}{auc}")
    return summary[select]


def _repeat(item: Any) -> Iterator[Any]:
    while True:
        yield item


def fit(state: TrainState, batches: Iterator[dict[str, np.ndarray]] | DeviceData, *, cfg: TrainConfig,
        loss_fn: LossFn, recorder: Recorder | None = None, validate: Validate | None = None, progress: bool = True,
        mesh: jax.sharding.Mesh | None = None, checkpointer: Checkpointer | None = None,
        sampler: DeviceSampler | None = None) -> tuple[TrainState, FitStats]:
    """Runs `cfg.steps - state.step` optimizer steps; returns the final state and timings.

    `batches` yields this process's share of each global batch (all of it in a
    single-process run); the step splits the global batch over `mesh` (default: every
    device). The returned state is replicated over the mesh.

    With a `sampler`, `batches` is instead the whole training set (:class:`DeviceData`),
    uploaded once and sampled inside the step from ``state.data_rng``,
    ``cfg.resolved_steps_per_call(True)`` steps per dispatch.

    Losses stay on the device between log points (no per-step host sync); at each log
    point they are fetched together and checked, so a NaN is reported at its exact step
    (and never checkpointed: pending losses are checked before every save).

    `validate` runs every ``cfg.eval_every`` steps and at the last step, on a
    single-device copy of the state; its figures are logged under "val" and its
    ``cfg.select`` figure chooses the best checkpoint. A `checkpointer` saves the latest state every
    ``checkpointer.every`` steps and at the final step, and the best by validation Dice.
    Evaluation and checkpointing are excluded from the steady-state images/s.
    """
    mesh = mesh if mesh is not None else parallel.make_data_mesh()
    parallel.check_batch_size(cfg.batch_size, mesh)
    k = cfg.resolved_steps_per_call(device_data=sampler is not None)
    if sampler is None and k > 1:
        raise ValueError("train.steps_per_call > 1 needs device-resident data (data.on_device)")
    step_fn = parallel.TrainStep(loss_fn, mesh, sampler=sampler, batch_size=cfg.batch_size, steps_per_call=k)
    state = parallel.replicate(state, mesh)
    start_step = int(state.step)
    ckpt_time, t_loop = 0.0, time.perf_counter()
    show = progress and jax.process_index() == 0
    bar = tqdm(total=cfg.steps, initial=start_step, desc="train", unit="step", disable=not show, dynamic_ncols=True)
    log = _TrainLog(cfg, recorder, bar)
    if sampler is None:
        it = _prefetch(batches, parallel.data_sharding(mesh))
    else:
        it = _repeat((parallel.replicate(batches, mesh), None))
    try:
        log.restart_clock()
        for step in range(start_step + k, cfg.steps + 1, k):  # `step`: the last step of this call
            batch, data_state = next(it)
            state, m = step_fn(state, batch)
            log.pending.append((step, m))
            if step == start_step + k:
                jax.block_until_ready(m)
                log.first_step_done()
            is_log = step % cfg.log_every == 0 or step == cfg.steps
            is_eval = validate is not None and (step % cfg.eval_every == 0 or step == cfg.steps)
            is_ckpt = checkpointer is not None and checkpointer.due(step, cfg.steps)
            sync = is_log or is_eval or is_ckpt
            if sync:
                jax.block_until_ready(m)
            if step > start_step + k:
                log.count(k * cfg.batch_size, sync)  # the global batch, k times
            if is_log or is_eval:
                log.flush()
            elif is_ckpt:
                log.check_finite()  # never save a NaN state; the losses stay pending for the next log
            if is_eval:
                dice = _validate(validate, state, step, recorder, bar, cfg.select)
                if checkpointer is not None:
                    ckpt_time += _timed(checkpointer.offer_best, step, state, data_state, dice)
                log.restart_clock()
            if is_ckpt:
                # Last: everything of this step (logs, validation, best) is done when it lands.
                ckpt_time += _timed(checkpointer.save_latest, step, state, data_state)
                log.restart_clock()
            bar.update(k)
    finally:
        it.close()
        bar.close()
    # Images counted since the last sync but not timed would inflate the rate; all steps end
    # on a log point (the last step always is), so counts and times cover the same steps.
    return state, FitStats(
        first_step_s=log.first_step_s,
        images_per_s=log.images_per_s(),
        train_wall_s=time.perf_counter() - t_loop,
        step_traces=step_fn.traces,
        step_cache_size=step_fn.cache_size(),
        devices=int(mesh.devices.size),
        checkpoint_s=ckpt_time,
    )
