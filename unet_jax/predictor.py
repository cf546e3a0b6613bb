"""A training run as a model: an image as read from disk in, probabilities out.

    from unet_jax.predictor import load_predictor
    predictor = load_predictor("runs/drive-unet-...", which="best")
    probs = predictor(image)                        # whole image, (H, W) or (H, W, classes)
    probs = predictor(image, tta=True, window=256)  # flip TTA, sliding window (Gaussian blending)
    probs = predictor.model_probs(x)                # a preprocessed (H, W, C) input, the model's grid
    ensemble = load_predictor(["runs/a", "runs/b"])   # the mean of several runs' probabilities

Architecture, preprocessing, normalisation, classes and threshold come from the run's
``config.json`` and ``dataset.json``; the weights from its checkpoints. Nothing else is
needed: not the training data, not the flags. Runs loaded together (an ensemble: other
seeds, folds or architectures) must take the same input and predict the same classes with
the same threshold (:func:`input_signature`).

Runs of datasets whose preprocessing needs the whole volume (LGG, NIfTI) load too, but
predict volumes, not single images: ``python -m unet_jax.predict`` builds the dataset's
volumes from the inputs (``Dataset.for_prediction``) and calls :meth:`Predictor.model_probs`.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import cv2
import jax
import jax.numpy as jnp
import numpy as np

from unet_jax import data
from unet_jax.config import RunConfig
from unet_jax.data.preprocess import preprocess_image, resize_probs
from unet_jax.inference import flip_tta, mean_ensemble, sliding_window_inference
from unet_jax.training.checkpoint import CheckpointError, load_state
from unet_jax.training.run import initial_state
from unet_jax.training.state import TrainState
from unet_jax.training.steps import eval_step

__all__ = ["AUTO_WINDOW_PIXELS", "PredictorError", "Predictor", "check_ensemble", "input_signature",
           "load_predictor", "load_run_config", "load_run_state"]

# Above this many pixels (after --scale), the whole image is predicted window by window.
AUTO_WINDOW_PIXELS = 2048 * 2048
AUTO_WINDOW = 512


class PredictorError(ValueError):
    """A run folder that cannot be loaded (names the file and what to do)."""


@dataclasses.dataclass(frozen=True, eq=False)  # hashed by identity: compiled functions are cached per predictor
class Predictor:
    """Raw image -> probabilities for one trained run, or the mean of several runs'
    probabilities (see :func:`load_predictor`).

    Attributes:
      cfg: the (first) run's configuration; an ensemble's runs agree on what it says
        about the input, classes and threshold.
      num_classes: classes including background (2: binary, probabilities (H, W)).
      states: the restored TrainState of each run.
      runs: the run folders, in the order of `states`.
    """

    cfg: RunConfig
    num_classes: int
    states: tuple[TrainState, ...]
    runs: tuple[str, ...]

    @property
    def steps(self) -> tuple[int, ...]:
        """The training step of each run's weights."""
        return tuple(int(s.step) for s in self.states)

    def describe(self) -> dict[str, Any]:
        """The run and its checkpoint's step for summaries; an ensemble's runs and steps."""
        if len(self.runs) == 1:
            return {"run": self.runs[0], "checkpoint_step": self.steps[0]}
        return {"runs": list(self.runs), "checkpoint_steps": list(self.steps), "ensemble": "mean"}

    @property
    def threshold(self) -> float:
        return self.cfg.train.threshold

    @property
    def volume_preprocessing(self) -> str | None:
        """None for runs that predict single images; else what they predict instead."""
        return data.dataset_class(self.cfg.data.dataset).volume_preprocessing

    def preprocess(self, image: np.ndarray) -> np.ndarray:
        """The model's float32 (H', W', C) input, exactly as in training."""
        return preprocess_image(image, **dataclasses.asdict(self.cfg.data.preprocess))

    def __call__(self, image: np.ndarray, *, tta: Literal[False, True, 8, "hflip"] = False, window: int | None = None,
                 overlap: float = 0.5, blend: Literal["gaussian", "constant"] = "gaussian",
                 scale: float = 1.0) -> np.ndarray:
        """Probabilities at the image's own size: (H, W) (binary) or (H, W, classes).

        Args:
          image: as read from disk (uint8/uint16, gray, RGB or RGBA).
          tta: average over the 4 flips (True), flips and transposes (8), or the image and
            its horizontal flip ("hflip": images with an up and a down, such as axial slices).
          window: predict in windows of this side (sliding window); None: the whole image,
            or windows of 512 when it has more than 2048 x 2048 pixels.
          overlap, blend: of the sliding window.
          scale: resample the image by this factor first (to bring structures to the
            training data's pixel scale); the probabilities are resampled back.
        """
        if self.volume_preprocessing is not None:
            raise PredictorError(f"this run was trained on {self.cfg.data.dataset!r}, whose preprocessing uses whole "
                                 f"volumes (crop box, intensity statistics of every slice), so single images cannot "
                                 f"be predicted faithfully; it predicts {self.volume_preprocessing}")
        h, w = image.shape[:2]
        if scale != 1.0:
            size = (max(int(round(w * scale)), 1), max(int(round(h * scale)), 1))
            image = cv2.resize(image, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
        x = self.preprocess(image)
        if window is None and x.shape[0] * x.shape[1] > AUTO_WINDOW_PIXELS:
            window = AUTO_WINDOW
        return resize_probs(self.model_probs(x, tta=tta, window=window, overlap=overlap, blend=blend), (h, w))

    def model_probs(self, x: np.ndarray, *, tta: Literal[False, True, 8, "hflip"] = False,
                    window: int | None = None,
                    overlap: float = 0.5, blend: Literal["gaussian", "constant"] = "gaussian") -> np.ndarray:
        """Probabilities of a preprocessed float32 (H, W, C) input on its own grid: (H, W)
        (binary) or (H, W, classes). Options as in :meth:`__call__`."""
        probs = np.asarray(self._compiled(tta, window, overlap, blend)(jnp.asarray(x, jnp.float32)))
        return probs[..., 0] if self.num_classes == 2 else probs

    @functools.cache  # one jitted function per option set; jit then caches per image size
    def _compiled(self, tta, window, overlap, blend):
        model = mean_ensemble([functools.partial(eval_step, s) for s in self.states])

        def probs(batch):  # (B, h, w, C) -> (B, h, w, K)
            p = model(batch)
            return p[..., None] if p.ndim == 3 else p

        if tta:
            probs = flip_tta(probs, transpose=tta == 8, vertical=tta != "hflip")
        if window is None:
            return jax.jit(lambda x: probs(x[None])[0])
        return jax.jit(lambda x: sliding_window_inference(probs, x, window, overlap=overlap, blend=blend))


def _read_json(path: Path, what: str) -> dict:
    if not path.is_file():
        raise PredictorError(f"{path} is missing: {path.parent} is not a finished or running unet-jax run "
                             f"({what}). Give the folder a training command wrote (its --workdir).")
    return json.loads(path.read_text())


def load_run_config(workdir: str | Path) -> RunConfig:
    """The configuration the run in `workdir` was trained with (its config.json); cheap, so
    an ensemble's runs are checked against each other before any weights are restored."""
    return RunConfig.from_dict(_read_json(Path(workdir) / "config.json", "the run's configuration"))


def load_run_state(workdir: str | Path, which: Literal["best", "final"] = "best") -> tuple[RunConfig, dict, TrainState]:
    """``(config, dataset facts, restored TrainState)`` of the run in `workdir`, for any
    dataset (volume datasets evaluate with it; :func:`load_predictor` wraps it for images).

    `which`: "best" (by validation Dice; falls back to "final" with a note when the run
    had no validation set) or "final" (the latest checkpoint: the final step of a finished
    run).
    """
    workdir = Path(workdir)
    if which not in ("best", "final"):
        raise PredictorError(f"which must be 'best' or 'final', got {which!r}")
    cfg = load_run_config(workdir)
    info = _read_json(workdir / "dataset.json", "its classes and channels; runs made before dataset.json "
                                               "existed cannot be loaded")
    # Restoring needs only shapes, dtypes and placement: abstract them instead of compiling
    # the model's initialisation (seconds instead of up to minutes on a busy 2-core CPU).
    # Placed on one device: left unplaced, the arrays would come back sharded like the
    # training mesh, which the predictor's single-device programs cannot mix.
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    template = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=device), jax.eval_shape(
        lambda: initial_state(cfg, int(info["channels"]), int(info["num_classes"]))))
    try:
        state = load_state(workdir, template, which="best" if which == "best" else "latest")
    except CheckpointError:
        if which != "best":
            raise PredictorError(f"{workdir / 'checkpoints'} holds no checkpoint yet") from None
        print(f"note: {workdir} has no best checkpoint (no validation set); using the final one", flush=True)
        state = load_state(workdir, template, which="latest")
    return cfg, info, state


def input_signature(cfg: RunConfig, **overrides: Any) -> dict[str, Any]:
    """What a run's model is fed and how its output becomes a mask: the dataset, its
    preprocessing and input options (``Dataset.input_options``; `overrides` replace options
    an evaluation imposes on every run, e.g. ``head_mask=True``), the threshold and the
    empty-case convention. Runs averaged together must agree on all of it."""
    defaults = data.dataset_class(cfg.data.dataset).input_options
    options = {k: cfg.data.options.get(k, v) for k, v in defaults.items()}
    options.update((k, v) for k, v in overrides.items() if k in defaults)
    return {"dataset": cfg.data.dataset, "preprocess": cfg.data.preprocess, **options,
            "threshold": cfg.train.threshold, "ignore_empty": cfg.train.ignore_empty}


def check_ensemble(runs: Sequence[str | Path], cfgs: Sequence[RunConfig], **overrides: Any) -> None:
    """Raises :class:`PredictorError` naming the first run whose :func:`input_signature`
    differs from the first run's, and what differs."""
    first = input_signature(cfgs[0], **overrides)
    for run, cfg in zip(runs[1:], cfgs[1:]):
        mine = input_signature(cfg, **overrides)
        differ = sorted(k for k in first.keys() | mine.keys() if first.get(k) != mine.get(k))
        if differ:
            raise PredictorError(f"{run} and {runs[0]} differ in {', '.join(differ)}: an ensemble averages runs "
                                 "trained on the same input (dataset, image size, channels, preprocessing) with "
                                 "the same threshold")


def load_predictor(workdirs: str | os.PathLike | Sequence[str | os.PathLike],
                   which: Literal["best", "final"] = "best") -> Predictor:
    """Rebuilds the run in `workdirs` (a folder), or each of several runs (an ensemble: the
    mean of their probabilities), and restores its weights (see :func:`load_run_state`)."""
    runs = [workdirs] if isinstance(workdirs, (str, os.PathLike)) else list(workdirs)
    if not runs:
        raise PredictorError("load_predictor needs at least one run folder")
    check_ensemble(runs, [load_run_config(r) for r in runs])
    loaded = [load_run_state(r, which) for r in runs]
    classes = {int(info["num_classes"]) for _, info, _ in loaded}
    channels = {int(info["channels"]) for _, info, _ in loaded}
    if len(classes) > 1 or len(channels) > 1:
        raise PredictorError(f"the runs {', '.join(map(str, runs))} predict {sorted(classes)} classes from "
                             f"{sorted(channels)} input channels: an ensemble's runs must agree")
    cfg, info, _ = loaded[0]
    return Predictor(cfg=cfg, num_classes=int(info["num_classes"]), states=tuple(s for _, _, s in loaded),
                     runs=tuple(str(r) for r in runs))
