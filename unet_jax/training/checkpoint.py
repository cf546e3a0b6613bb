"""Checkpoints with orbax: the latest every N steps, the best by validation Dice, resume.

Layout under ``<workdir>/checkpoints``::

    latest/<step>/state/   the TrainState (params, optimizer state, batch-norm stats, step, and
                           the moving average of the weights with --ema-decay)
    latest/<step>/data/    the grain iterator state, one JSON file per process
    latest/<step>/meta/    JSON: step, run facts (config, seed, workers, devices), best so far
    best/<step>/...        the same three items, for the best validation Dice so far

``latest`` keeps the newest `keep` checkpoints and always receives the final step (the
trained model); ``best`` keeps one. Writes are synchronous and atomic: orbax writes a
step into ``<step>.orbax-checkpoint-tmp-*`` and renames it into place only once every
item is complete, so a save that is interrupted (crash, kill, full disk) leaves at most a
temporary folder that is never listed as a checkpoint (and is deleted the next time the
folder is opened); the previous checkpoint stays the latest.

The data state saved with step ``s`` is the grain iterator's state right after it
produced the batch that step ``s`` consumed (captured by the training loop's
prefetcher, which reads ahead), so a resumed run continues with batch ``s + 1``. The
train step itself draws no random numbers (all randomness is grain's, derived from
``(seed, element index)``), so state + data state + step is everything a bit-exact
resume needs.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from pathlib import Path
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp

from unet_jax.workdir import atomic_write_bytes, read_jsonl

ITEMS = ("state", "data", "meta")

# TrainState fields added after checkpoints were first written; None when unused.
OPTIONAL_FIELDS = frozenset({"data_rng", "ema"})

# Config fields that do not change the training math and may differ on --resume (the
# data's location may move with the run, e.g. to another machine).
RESUME_FREE = {
    "train.checkpoint_every",
    "train.keep",
    "train.log_every",
    "train.eval_every",
    "data.options.data_dir",
    "data.options.tfds_dir",
    "data.options.root",
    "data.options.images",
    "data.options.masks",
}


class CheckpointError(ValueError):
    """A checkpoint cannot be used (missing, or written by an incompatible run)."""


class _FrozenIteratorState:
    """Stands in for a grain iterator in grain's orbax handler, holding a captured state.

    grain's handler calls ``get_state()`` at save time, but the training loop's prefetcher
    has read ahead by then; this object hands over the state captured with the batch
    the saved step actually consumed. Restoring fills ``state``.
    """

    def __init__(self, state: Any = None):
        self.state = state

    def get_state(self) -> bytes:
        return json.dumps(self.state, indent=2).encode()

    def set_state(self, state: bytes) -> None:
        self.state = json.loads(state.decode())

    def start_prefetch(self) -> None:
        pass


def _manager(directory: Path, keep: int) -> ocp.CheckpointManager:
    return ocp.CheckpointManager(
        directory,
        item_names=ITEMS,
        options=ocp.CheckpointManagerOptions(
            max_to_keep=keep,
            enable_async_checkpointing=False,  # simple, and the small state saves in well under a second
            cleanup_tmp_directories=True,  # remove leftovers of interrupted saves
            create=True,
        ),
    )


def _abstract(state: Any) -> Any:
    return jax.tree.map(ocp.utils.to_shape_dtype_struct, state)


class Checkpointer:
    """Latest-K and best-by-validation checkpoints of one run.

    Args:
      directory: ``<workdir>/checkpoints``.
      every: save the latest every `every` steps (and always at the final step).
      keep: latest checkpoints to retain.
      run_meta: facts stored with every checkpoint (the config, worker count, devices).
    """

    def __init__(self, directory: Path, *, every: int, keep: int, run_meta: dict[str, Any] | None = None):
        if every < 1 or keep < 1:
            raise ValueError(f"--checkpoint-every ({every}) and --keep ({keep}) must be >= 1")
        self.directory = Path(directory).absolute()  # orbax refuses relative paths (a --workdir runs/x)
        self.every = every
        self.run_meta = dict(run_meta or {})
        self.latest = _manager(self.directory / "latest", keep)
        self.best = _manager(self.directory / "best", 1)
        self.best_dice, self.best_step = -math.inf, None
        step = self.best.latest_step()
        if step is not None:
            meta = self.best.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
            self.best_dice, self.best_step = float(meta["val_dice"]), step

    # ------------------------------------------------------------------ saving

    def _save(self, manager: ocp.CheckpointManager, step: int, state: Any, data_state: Any, extra: dict) -> None:
        if step in manager.all_steps():
            manager.delete(step)
        meta = {"step": step, **self.run_meta, "best_val_dice": self.best_dice if self.best_step else None,
                "best_step": self.best_step, **extra}
        items = {"state": ocp.args.StandardSave(state), "meta": ocp.args.JsonSave(meta)}
        if data_state is not None:
            items["data"] = grain.checkpoint.CheckpointSave(_FrozenIteratorState(data_state))
        manager.save(step, args=ocp.args.Composite(**items), force=True)
        manager.wait_until_finished()

    def due(self, step: int, final_step: int) -> bool:
        return step % self.every == 0 or step == final_step

    def save_latest(self, step: int, state: Any, data_state: Any = None) -> None:
        self._save(self.latest, step, state, data_state, {})

    def offer_best(self, step: int, state: Any, data_state: Any, val_dice: float) -> bool:
        """Saves `state` as the best if `val_dice` beats the best so far; returns whether it did."""
        if not val_dice > self.best_dice:  # also False for NaN
            return False
        self.best_dice, self.best_step = float(val_dice), step
        self._save(self.best, step, state, data_state, {"val_dice": float(val_dice)})
        for old in self.best.all_steps():
            if old != step:
                self.best.delete(old)
        return True

    # ------------------------------------------------------------------ restoring

    def latest_step(self) -> int | None:
        return self.latest.latest_step()

    def restore(self, template: Any, *, which: str = "latest", step: int | None = None) -> tuple[Any, Any, dict]:
        """``(state, data_state, meta)`` of a checkpoint; `template` gives structure and shardings.

        `template` is a state like the one saved (e.g. the freshly initialised one, placed
        on the mesh); restored arrays get its shardings. `data_state` is None when the
        checkpoint holds none.
        """
        manager = self.latest if which == "latest" else self.best
        step = manager.latest_step() if step is None else step
        if step is None:
            raise CheckpointError(f"no {which} checkpoint under {manager.directory}")
        step_dir = Path(manager.directory) / str(step)
        items = {"state": ocp.args.StandardRestore(_abstract(template)), "meta": ocp.args.JsonRestore()}
        frozen = _FrozenIteratorState()
        if (step_dir / "data").exists():
            items["data"] = grain.checkpoint.CheckpointRestore(frozen)
        left_out: set[str] = set()
        while True:
            try:
                restored = manager.restore(step, args=ocp.args.Composite(**items))
                break
            except ValueError as e:
                # Checkpoints written before an optional TrainState field existed (data_rng,
                # ema) lack it; a template where that field is None (no sampler key, no
                # moving average) restores from the fields they have.
                named = {name for name in OPTIONAL_FIELDS - left_out if re.search(rf"\b{name}\b", str(e))}
                missing = {name for name in named if getattr(template, name, 0) is None}
                if not missing:
                    if named:  # the template wants a field this checkpoint was written without
                        raise CheckpointError(
                            f"{step_dir} holds no TrainState.{'/'.join(sorted(named))} that this run's configuration "
                            "needs (ema: --ema-decay; data_rng: device-resident data); restore it with the "
                            "configuration it was trained with") from e
                    raise
                left_out |= missing
                fields = {f.name: getattr(template, f.name) for f in dataclasses.fields(template)
                          if f.metadata.get("pytree_node", True) and f.name not in left_out}
                items["state"] = ocp.args.StandardRestore(_abstract(fields))
        state = template.replace(**restored["state"]) if left_out else restored["state"]
        return state, frozen.state if "data" in items else None, dict(restored["meta"])

    def discard_after(self, step: int) -> None:
        """Deletes checkpoints newer than `step` (a resumed run recomputes those steps)."""
        for manager in (self.latest, self.best):
            for s in manager.all_steps():
                if s > step:
                    manager.delete(s)
        if self.best_step is not None and self.best_step > step:
            self.best_dice, self.best_step = -math.inf, None
            if self.best.latest_step() is not None:  # an older best survived (not normally kept)
                s = self.best.latest_step()
                meta = self.best.restore(s, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
                self.best_dice, self.best_step = float(meta["val_dice"]), s

    def path(self, which: str, step: int | None) -> str | None:
        return None if step is None else str(self.directory / which / str(step))

    def close(self) -> None:
        self.latest.close()
        self.best.close()


def load_state(workdir: Path, template: Any, *, which: str = "latest", step: int | None = None) -> Any:
    """The TrainState saved under ``<workdir>/checkpoints`` (`which` = "latest" or "best").

    `template` is a TrainState of the same model (e.g. from ``create_train_state``, or its
    ``jax.eval_shape``); it supplies the structure, dtypes and placement (a state on one
    device restores there; an abstract one on the default device).
    """
    ckpt = Checkpointer(Path(workdir) / "checkpoints", every=1, keep=1 << 30)
    try:
        return ckpt.restore(template, which=which, step=step)[0]
    finally:
        ckpt.close()


def config_differences(saved: dict[str, Any], current: dict[str, Any], prefix: str = "") -> list[str]:
    """``section.field: saved -> current`` for every (nested) field that forbids resuming."""
    out = []
    for key in sorted(set(saved) | set(current)):
        name = f"{prefix}{key}"
        if name in RESUME_FREE:
            continue
        a, b = saved.get(key, "<missing>"), current.get(key, "<missing>")
        if isinstance(a, dict) and isinstance(b, dict):
            out.extend(config_differences(a, b, prefix=f"{name}."))
        elif a != b:
            out.append(f"{name}: {a!r} -> {b!r}")
    return out


def truncate_metrics(path: Path, step: int) -> int:
    """Keeps the train/val records of steps <= `step` in a metrics.jsonl; returns how many.

    A killed run may have logged steps after its last checkpoint; the resumed run logs
    them again, so the older lines go. Rewritten atomically.
    """
    path = Path(path)
    if not path.exists():
        return 0
    keep = [r for r in read_jsonl(path) if r.get("split") in ("train", "val") and int(r["step"]) <= step]
    atomic_write_bytes(path, "".join(json.dumps(r) + "\n" for r in keep).encode())
    return len(keep)


__all__ = [
    "CheckpointError",
    "Checkpointer",
    "RESUME_FREE",
    "config_differences",
    "load_state",
    "truncate_metrics",
]
