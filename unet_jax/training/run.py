"""One training run from a config and a dataset: split, train, validate, checkpoint, test.

    from unet_jax import data
    from unet_jax.config import RunConfig
    from unet_jax.training import train_and_evaluate

    cfg = RunConfig()                                   # the DRIVE CPU recipe
    dataset = data.get(cfg.data.dataset, preprocess=cfg.data.preprocess, **cfg.data.options)
    results = train_and_evaluate(cfg, dataset, "runs/a")

The work directory receives config.json (the whole configuration: ``RunConfig.from_dict``
of it rebuilds the run), dataset.json (classes and input channels, so that
``unet_jax.predictor.load_predictor`` needs no data), metrics.jsonl, TensorBoard events (tb/), checkpoints/ (latest/
and best/ by validation Dice), curves.png, predictions/ (probability maps, masks,
overlays of the test images), per_image.csv, per_case.csv when cases hold several images,
and, last of all, results.json: its presence marks a finished run.

Validation images are carved (seeded) from the training split and choose the best
checkpoint; the test split is used once, and its headline figures use the *final*
parameters. Training is data-parallel over every device of every process.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from unet_jax import losses, models
from unet_jax.config import ConfigError, RunConfig
from unet_jax.data.base import Dataset, InMemorySource, MappedSource, Source, Subset, source_cases
from unet_jax.data.device_sampler import (DeviceSampler, data_nbytes, prepare_device_data, resolve_on_device,
                                          sampler_key)
from unet_jax.data.pipeline import make_train_iterator
from unet_jax.evaluation import EvalResult, evaluate
from unet_jax.models.layers import resolve_upsample
from unet_jax.training import parallel
from unet_jax.training.checkpoint import CheckpointError, Checkpointer, config_differences, truncate_metrics
from unet_jax.training.loop import FitStats, fit, make_predict_fn
from unet_jax.training.recorder import Recorder
from unet_jax.training.state import TrainState, create_train_state
from unet_jax.visualize import overlay, plot_curves, save_prediction
from unet_jax.workdir import WorkdirError, atomic_write_csv, atomic_write_json, prepare_workdir, read_jsonl


def check_resumable(workdir: Path, cfg: RunConfig) -> None:
    """A clear error unless `workdir` holds an unfinished run of the same configuration."""
    path = Path(workdir) / "config.json"
    if not path.exists():
        raise WorkdirError(f"--resume: --workdir {workdir} holds no run to resume (no config.json)")
    if (Path(workdir) / "results.json").exists():
        raise WorkdirError(f"--workdir {workdir} holds a finished run (results.json); there is nothing to resume")
    saved = RunConfig.from_dict(json.loads(path.read_text())).to_dict()
    diffs = config_differences(saved, cfg.to_dict())
    if diffs:
        raise CheckpointError(
            f"--resume: the run in {workdir} was started with other settings; repeat its flags "
            f"(differences, saved -> now: {'; '.join(diffs)})"
            + (" (--workers too: the saved data-iterator state depends on it)"
               if any(x.startswith("data.workers") for x in diffs) else "")
        )


def split_train_val(cfg: RunConfig, train: Source) -> tuple[Source, Source | None]:
    """(fit, validation) sources: `cfg.data.val_size` training examples held out, seeded.

    When the source knows its examples' cases (slices of a patient, see
    :func:`unet_jax.data.base.source_cases`) and some case holds several examples, whole
    cases are held out and `val_size` counts cases; otherwise (DRIVE, folders: each image
    its own case) examples are held out exactly as before.
    """
    cases = source_cases(train)
    if cases is None or len(set(cases)) == len(cases):
        cases = list(range(len(train)))  # each example its own case: the same draw as ever
    unique = list(dict.fromkeys(cases))
    n_val = cfg.data.num_val(len(unique))
    order = np.random.default_rng(cfg.train.seed).permutation(len(unique))
    val_cases = {unique[i] for i in order[:n_val].tolist()}
    val_idx = {i for i, c in enumerate(cases) if c in val_cases}
    fit_src = Subset(train, [i for i in range(len(train)) if i not in val_idx])
    val_src = Subset(train, [i for i in range(len(train)) if i in val_idx]) if n_val else None
    return fit_src, val_src


def training_source(cfg: RunConfig, dataset: Dataset, fit_src: Source, progress: bool) -> Source:
    """Preprocessed training examples: held in memory when they fit in ``cfg.data.cache_mb``,
    else preprocessed on every access (memory stays flat however large the dataset)."""
    source = MappedSource(fit_src, dataset.preprocess)
    first = source[0]
    per_example = first.image.nbytes + first.label.nbytes + (0 if first.valid is None else first.valid.nbytes)
    if per_example * len(source) > cfg.data.cache_mb * 2**20:
        return source
    examples = [first] + [source[i] for i in tqdm(range(1, len(source)), desc="preparing images", unit="image",
                                                   disable=not progress or len(source) < 50, leave=False)]
    return InMemorySource(examples)


def training_data(cfg: RunConfig, source: Source, local_batch: int,
                  weights: np.ndarray | None = None) -> tuple[Any, DeviceSampler | None]:
    """(batches, sampler) for :func:`unet_jax.training.loop.fit`: the grain iterator and
    None, or the whole set as DeviceData and its in-step sampler (``cfg.data.on_device``).

    `weights`: per-example sampling probabilities (None: uniform). The in-step sampler
    draws images uniformly and knows flips in both axes, rot90 and per-patch contrast and
    brightness jitter only; a run needing more keeps the host pipeline ("auto") or is
    refused ("yes").
    """
    d = cfg.data
    clip = d.preprocess.normalize == "unit"
    unsupported = [what for what, used in (
        ("per-example sampling weights", weights is not None),
        ("zoom or rotation augmentation", d.augment.scale > 0 or d.augment.rotate > 0),
        ("horizontal-only flips", d.augment.flips and not d.augment.vertical_flip),
        ("channel substitution", d.augment.substitute > 0),
        ("gamma or per-channel intensity jitter", d.augment.gamma > 0 or d.augment.per_channel)) if used]
    if unsupported and d.on_device == "yes":
        raise ConfigError("data.on_device", d.on_device, f"the device-resident sampler has no "
                          f"{', '.join(unsupported)}; use auto (host pipeline for this run) or no")
    if not unsupported and resolve_on_device(d.on_device, data_nbytes(source, d.patch_size), d.device_share):
        sampler = DeviceSampler(patch_size=d.patch_size, foreground_bias=d.foreground_bias, augment=d.augment,
                                clip=clip)
        return prepare_device_data(source, d.patch_size), sampler
    return iter(make_train_iterator(
        source, patch_size=d.patch_size, batch_size=local_batch, seed=cfg.train.seed,
        foreground_bias=d.foreground_bias, augment=d.augment, clip=clip,
        weights=weights, shard=(jax.process_index(), jax.process_count()), worker_count=d.workers)), None


def initial_state(cfg: RunConfig, channels: int, num_classes: int, bn_axis_name: str | None = None) -> TrainState:
    """The run's model and its freshly initialised TrainState (on the default device).

    A binary task (``num_classes == 2``) has one sigmoid output, otherwise one softmax
    output per class.
    """
    m = cfg.model
    # Fixed-width networks (resunet34) have no features/depth/norm/upsample/pool options;
    # ModelConfig refuses aux_heads > 0 for a network without them.
    shape_cfg = {k: v for k, v in dict(features=m.features, depth=m.depth, norm=m.norm, upsample=m.upsample,
                                       pool=m.pool, aux_heads=m.aux_heads).items()
                 if k in models.options(m.arch)}
    model = models.create(m.arch, in_channels=channels, out_channels=1 if num_classes == 2 else num_classes,
                          bn_axis_name=bn_axis_name, dtype=jnp.bfloat16 if cfg.train.precision == "bf16" else None,
                          **shape_cfg)
    p = cfg.data.patch_size
    return create_train_state(model, cfg.train, (1, p, p, channels), jax.random.key(cfg.train.seed))


def build_state(cfg: RunConfig, dataset: Dataset, mesh: jax.sharding.Mesh) -> tuple[TrainState, int]:
    """The model's initial TrainState, replicated over `mesh`, and its parameter count."""
    # Batch-norm sync is a no-op on one device; leaving the axis out there keeps the step
    # bit-identical to the single-device train_step.
    bn_axis = parallel.DATA if cfg.train.bn_sync and mesh.devices.size > 1 else None
    state = initial_state(cfg, dataset.channels, dataset.num_classes, bn_axis)
    return parallel.replicate(state, mesh), models.count_params(state.params)


def _evaluate(state: TrainState, source: Source, dataset: Dataset, cfg: RunConfig, **kw: Any) -> EvalResult:
    return evaluate(make_predict_fn(state), source, dataset.preprocess, num_classes=dataset.num_classes,
                    threshold=cfg.train.threshold, ignore_empty=cfg.train.ignore_empty,
                    restore=dataset.restore_probs, **kw)


def make_validator(cfg: RunConfig, dataset: Dataset, val_src: Source):
    """The `validate` callable of :func:`unet_jax.training.loop.fit`: figures on the
    validation examples and an overlay of the first one."""

    def validate(state: TrainState) -> tuple[dict[str, Any], np.ndarray]:
        first: list[np.ndarray] = []

        def keep_first(ex, probs, pred):
            if not first:
                first.append(overlay(pred, ex.label, ex.valid, binary=dataset.num_classes == 2))

        return _evaluate(state, val_src, dataset, cfg, on_image=keep_first).summary, first[0]

    return validate


def _restore(ckpt: Checkpointer, state: TrainState, batches, workdir: Path, n_dev: int) -> tuple[TrainState, int]:
    """Continues from the latest checkpoint (if any); returns the state and its step."""
    start_step = 0
    if ckpt.latest_step() is not None:
        state, data_state, meta = ckpt.restore(state)
        if data_state is not None:
            batches.set_state(data_state)
        start_step = int(meta["step"])
        if meta.get("devices") != n_dev and jax.process_index() == 0:
            print(f"note: resuming a run checkpointed on {meta.get('devices')} devices on {n_dev}; "
                  "the result is not bit-identical to an uninterrupted run", flush=True)
    ckpt.discard_after(start_step)
    if jax.process_index() == 0:
        truncate_metrics(workdir / "metrics.jsonl", start_step)
    return state, start_step


def _test(final: TrainState, ckpt: Checkpointer, cfg: RunConfig, dataset: Dataset, test_src: Source,
          workdir: Path, recorder: Recorder | None, progress: bool) -> tuple[EvalResult, dict | None, float, dict]:
    """Test figures of the final parameters (writing predictions/, and the dataset's
    test report if it has one), and of the best checkpoint."""
    t_test = time.perf_counter()
    is_main = jax.process_index() == 0
    shown: list[str] = []
    reporter = dataset.test_reporter(workdir, ignore_empty=cfg.train.ignore_empty) if is_main else None

    def save(ex, probs, pred):
        if not is_main:
            return
        if reporter is not None:
            reporter.add(ex, probs, pred)
        save_prediction(workdir / "predictions", ex.id, probs, pred, ex.label, ex.valid)
        if recorder and len(shown) < 3:
            shown.append(ex.id)
            picture = overlay(pred, ex.label, ex.valid, binary=dataset.num_classes == 2)
            recorder.image(f"test/overlay_{ex.id}", picture, cfg.train.steps)

    ev = _evaluate(final, test_src, dataset, cfg, on_image=save, progress=progress, desc="test")
    extra = {"volumes": reporter.finish()} if reporter is not None else {}
    test_eval_s = time.perf_counter() - t_test
    if recorder:
        recorder.write({"split": "test", "step": cfg.train.steps, **ev.summary})
    best_block = None
    if ckpt.best_step is not None:
        if ckpt.best_step == cfg.train.steps:
            best_summary = ev.summary
        else:
            best = ckpt.restore(final, which="best")[0]
            best_summary = _evaluate(best, test_src, dataset, cfg, progress=progress, desc="test (best)").summary
        best_block = {"step": ckpt.best_step, "val_dice": ckpt.best_dice, "selected_by": f"val {cfg.train.select}",
                      **best_summary,
                      "note": "for information: the headline 'test' block uses the final parameters"}
    return ev, best_block, test_eval_s, extra


def train_and_evaluate(cfg: RunConfig, dataset: Dataset, workdir: str | Path, *, resume: bool = False,
                       overwrite: bool = False, progress: bool = True) -> dict[str, Any]:
    """Trains and evaluates one configuration; returns the contents of results.json.

    `resume` continues the unfinished run in `workdir` from its latest checkpoint (from
    scratch if it has none yet); it must have been started with the same configuration.
    Bad data and a bad configuration raise before anything is written.
    """
    t_start = time.perf_counter()
    workdir = Path(workdir)
    mesh = parallel.make_data_mesh()
    local_batch = parallel.check_batch_size(cfg.train.batch_size, mesh)  # errors before any work
    n_dev, is_main = int(mesh.devices.size), jax.process_index() == 0
    if resume:
        check_resumable(workdir, cfg)
    train_all, test_src = dataset.train(), dataset.test()  # before touching workdir: bad data writes nothing
    fixed_val = dataset.validation()
    fit_src, val_src = (train_all, fixed_val or None) if fixed_val is not None else split_train_val(cfg, train_all)
    if len(test_src) == 0:
        raise ValueError(f"the {dataset.name} test split is empty: nothing to report figures on")
    loss_fn = losses.get_loss(cfg.train.loss, **cfg.train.loss_options)
    if is_main:
        prepare_workdir(workdir, overwrite=overwrite, resume=resume)
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices("workdir prepared")
    if is_main and not resume:
        atomic_write_json(workdir / "config.json", cfg.to_dict())
        # What a predictor needs besides the config, so a run loads without its data.
        atomic_write_json(workdir / "dataset.json", {**dataset.describe(), "channels": dataset.channels,
                                                     "valid_region": dataset.valid_region})

    d = cfg.data
    batches, sampler = training_data(cfg, training_source(cfg, dataset, fit_src, progress), local_batch,
                                     weights=dataset.sampling_weights(fit_src))
    state, n_params = build_state(cfg, dataset, mesh)
    if sampler is not None:  # the sampler's key lives in the state (checkpointed, so resumes are exact)
        state = parallel.replicate(state.replace(data_rng=sampler_key(cfg.train.seed)), mesh)
    ckpt = Checkpointer(workdir / "checkpoints", every=cfg.train.checkpoint_every, keep=cfg.train.keep, run_meta={
        "config": cfg.to_dict(), "seed": cfg.train.seed, "workers": d.workers, "devices": n_dev,
        "processes": jax.process_count()})
    start_step = 0
    if resume:
        state, start_step = _restore(ckpt, state, batches, workdir, n_dev)
    if is_main:
        print(f"{cfg.model.arch}: {n_params:,} parameters; {dataset.name}: {len(fit_src)} train, "
              f"{0 if val_src is None else len(val_src)} val, {len(test_src)} test images; {n_dev} device(s), "
              f"{jax.process_count()} process(es), {cfg.train.precision}, "
              f"{'device-resident' if sampler else 'host-pipeline'} data; workdir {workdir}"
              + (f"; resuming at step {start_step}" if resume else ""), flush=True)

    recorder = Recorder(workdir, append=resume, purge_step=start_step + 1 if resume else None) if is_main else None
    try:
        state, stats = fit(state, batches, cfg=cfg.train, loss_fn=loss_fn, recorder=recorder,
                           validate=make_validator(cfg, dataset, val_src) if val_src is not None else None,
                           progress=progress, mesh=mesh, checkpointer=ckpt, sampler=sampler)
        ev, best_block, test_eval_s, extra = _test(parallel.local_copy(state), ckpt, cfg, dataset, test_src,
                                                   workdir, recorder, progress)
    finally:
        if recorder:
            recorder.close()
        ckpt.close()
    if not is_main:
        return {}
    facts = {"params": n_params, "data_on_device": sampler is not None,
             "test_eval_s": test_eval_s, "total_wall_s": time.perf_counter() - t_start,
             "devices": n_dev, "resumed_from_step": start_step if resume else None,
             "checkpoints": {"final": ckpt.path("latest", cfg.train.steps), "best": ckpt.path("best", ckpt.best_step)},
             **extra}
    if "upsample" in models.options(cfg.model.arch):  # the U-Net family: which form "auto" became here
        facts["upsample"] = resolve_upsample(cfg.model.upsample)
    return write_results(workdir, cfg, dataset, ev, best_block, stats, facts)


def write_results(workdir: Path, cfg: RunConfig, dataset: Dataset, ev: EvalResult, best_block: dict | None,
                  stats: FitStats, facts: dict[str, Any]) -> dict[str, Any]:
    """per_image.csv, per_case.csv, curves.png and, last, results.json; prints the figures."""
    atomic_write_csv(workdir / "per_image.csv", ev.per_image)
    if len(ev.per_case) < len(ev.per_image):
        atomic_write_csv(workdir / "per_case.csv", ev.per_case)
    plot_curves(read_jsonl(workdir / "metrics.jsonl"), workdir / "curves.png",
                title=f"{cfg.model.arch} on {dataset.name}" + (" (SYNTHETIC DATA)" if dataset.synthetic else ""))
    region = f"all {dataset.valid_region} pixels" if dataset.valid_region else "all pixels"
    rule = f"threshold {cfg.train.threshold:.2f}" if dataset.num_classes == 2 else "argmax over classes"
    results = {
        "dataset": dataset.name,
        "data": dataset.describe(),
        "synthetic": dataset.synthetic,
        "arch": cfg.model.arch,
        "test": ev.summary,
        "test_params": f"final (step {cfg.train.steps})" + (
            f", moving average of the weights (decay {cfg.train.ema_decay})" if cfg.train.ema_decay else ""),
        "test_best_val": best_block,
        "first_step_s": stats.first_step_s,
        "train_images_per_s": stats.images_per_s,
        "train_wall_s": stats.train_wall_s,
        "checkpoint_s": stats.checkpoint_s,
        "train_step_compiles": stats.step_traces,
        "device": str(jax.devices()[0].device_kind),
        "processes": jax.process_count(),
        "precision": cfg.train.precision,
        "bn_sync": cfg.train.bn_sync,
        "workers": cfg.data.workers,
        "jax_version": jax.__version__,
        "note": "synthetic data: these figures say nothing about DRIVE" if dataset.synthetic else
                f"{dataset.name} test set, {region} pooled, {rule}; per-case figures "
                f"{'leave out' if cfg.train.ignore_empty else 'keep'} cases with an empty label (ignore_empty)",
        **facts,
    }
    atomic_write_json(workdir / "results.json", results)  # last: marks the run complete
    s = ev.summary
    where = f" (within {dataset.valid_region})" if dataset.valid_region else ""
    auc = f"  AUC {s['auc']:.4f}" if "auc" in s else ""
    print(f"{'SYNTHETIC ' if dataset.synthetic else ''}test{where}: dice/F1 {s['dice']:.4f}{auc}  "
          f"sens {s['sensitivity']:.4f}  spec {s['specificity']:.4f}  acc {s['accuracy']:.4f}  IoU {s['iou']:.4f}; "
          f"per-case dice mean {s['dice_per_case_mean']:.4f} median {s['dice_per_case_median']:.4f}")
    print(f"first step {stats.first_step_s:.1f}s, {stats.images_per_s:.1f} images/s, "
          f"total {results['total_wall_s']:.0f}s; results in {workdir}/results.json", flush=True)
    return results
