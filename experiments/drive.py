"""Train and evaluate a U-Net-family network on DRIVE retinal vessel segmentation.

    python -m experiments.drive --arch unet                 # real DRIVE (see --data-dir)
    python -m experiments.drive --arch unet --synthetic     # built-in fundus-like images

    python -m experiments.drive --workdir runs/a --resume   # continue an interrupted run

The defaults are the recommended CPU recipe: 16 base features, 64x64 green-channel CLAHE
patches, flips/rot90 and intensity jitter, BCE + Dice, batch 32, AdamW 2e-3 with warmup
and cosine decay, 1500 steps. The work directory receives config.json, metrics.jsonl,
TensorBoard events (tb/), checkpoints/ (latest/ every --checkpoint-every steps and at the
end, i.e. the trained model; best/ by validation Dice), curves.png, predictions/
(probability maps, binary masks, overlays), per_image.csv and, last of all, results.json.

Training is data-parallel over every visible device (and every process of a
multi-process run, see --distributed): --batch-size is the global batch, split evenly.
The test set is evaluated with the *final* parameters; results.json also reports the
test figures of the best-by-validation checkpoint, separately (`test_best_val`), for
information only (choosing a model by its test score would be cheating).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from unet_jax import losses, models
from unet_jax.config import DataConfig, ModelConfig, RunConfig, TrainConfig


def build_parser() -> argparse.ArgumentParser:
    d, m, t = DataConfig(), ModelConfig(), TrainConfig()
    p = argparse.ArgumentParser(
        prog="python -m experiments.drive",
        description="Train a U-Net-family network on DRIVE and evaluate it on the 20 test images within the FOV.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    g = p.add_argument_group("data")
    g.add_argument("--data-dir", default=None, help="DRIVE folder (original layout); else $UNET_JAX_DRIVE_DIR, else ./data/DRIVE")
    g.add_argument("--tfds-dir", default=None, help="where the prepared ArrayRecord dataset is cached; else $UNET_JAX_TFDS_DIR, else ~/.cache/unet_jax/tensorflow_datasets")
    g.add_argument("--synthetic", action="store_true", help="train on built-in synthetic fundus-like images (no download needed)")
    g.add_argument("--channels", choices=["green", "gray", "rgb"], default=d.channels)
    g.add_argument("--no-clahe", dest="clahe", action="store_false", help="disable CLAHE contrast equalisation")
    g.add_argument("--gamma", type=float, default=d.gamma, help="gamma correction applied after CLAHE")
    g.add_argument("--patch-size", type=int, default=d.patch_size)
    g.add_argument("--vessel-bias", type=float, default=d.vessel_bias, help="probability that a patch is centred on a vessel pixel")
    g.add_argument("--val-images", type=int, default=d.val_images, help="training images held out for validation (seeded)")
    g.add_argument("--no-augment", dest="augment", action="store_false", help="disable flips, rotations and intensity jitter")
    g = p.add_argument_group("model")
    g.add_argument("--arch", choices=models.available(), default=m.arch)
    g.add_argument("--features", type=int, default=m.features, help="base width (channels of the first level)")
    g.add_argument("--depth", type=int, default=m.depth, help="number of poolings")
    g.add_argument("--norm", choices=["batch", "group", "none"], default=m.norm)
    g.add_argument("--upsample", choices=["transpose", "bilinear"], default=m.upsample)
    g = p.add_argument_group("training")
    g.add_argument("--steps", type=int, default=t.steps)
    g.add_argument("--batch-size", type=int, default=t.batch_size)
    g.add_argument("--lr", type=float, default=t.lr, help="peak learning rate")
    g.add_argument("--warmup-steps", type=int, default=t.warmup_steps)
    g.add_argument("--optimizer", choices=["adam", "adamw"], default=t.optimizer)
    g.add_argument("--weight-decay", type=float, default=t.weight_decay)
    g.add_argument("--loss", choices=sorted(losses.LOSSES), default=t.loss)
    g.add_argument("--seed", type=int, default=t.seed)
    g.add_argument("--eval-every", type=int, default=t.eval_every)
    g.add_argument("--log-every", type=int, default=t.log_every)
    g.add_argument("--threshold", type=float, default=t.threshold, help="probability threshold for binary masks")
    g = p.add_argument_group("throughput")
    g.add_argument("--precision", choices=["fp32", "bf16"], default=t.precision,
                   help="bf16: activations and convolutions in bfloat16; parameters, optimizer state and the "
                        "loss stay float32 (pays off on GPUs/TPUs, not on most CPUs)")
    g.add_argument("--bn-sync", action=argparse.BooleanOptionalAction, default=t.bn_sync,
                   help="batch-norm statistics over the whole global batch across devices (same math as one "
                        "device); --no-bn-sync keeps them per device")
    g.add_argument("--workers", type=int, default=d.workers,
                   help="grain worker processes producing patches (0: a background thread of this process)")
    g.add_argument("--distributed", action="store_true",
                   help="multi-process run: call jax.distributed.initialize (coordinator from "
                        "$JAX_COORDINATOR_ADDRESS, $JAX_NUM_PROCESSES, $JAX_PROCESS_ID, else cluster "
                        "auto-detection: SLURM, Open MPI, ...); implied when $JAX_COORDINATOR_ADDRESS is set")
    g = p.add_argument_group("checkpoints")
    g.add_argument("--checkpoint-every", type=int, default=t.checkpoint_every,
                   help="save the latest checkpoint every N steps (and always at the last step)")
    g.add_argument("--keep", type=int, default=t.keep,
                   help="latest checkpoints to keep (the best-by-validation one is kept separately)")
    g.add_argument("--resume", action="store_true",
                   help="continue the interrupted run in --workdir from its latest checkpoint (same flags "
                        "required, except --checkpoint-every/--keep/--log-every/--eval-every)")
    g = p.add_argument_group("output")
    g.add_argument("--workdir", default=None, help="run folder (default: runs/drive-<arch>-<time>)")
    g.add_argument("--overwrite", action="store_true", help="reuse a --workdir that already holds a run")
    g.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    return p


def config_from_args(a: argparse.Namespace) -> RunConfig:
    checks = [
        ("--steps", a.steps >= 1), ("--batch-size", a.batch_size >= 1), ("--lr", a.lr > 0),
        ("--patch-size", a.patch_size >= 2**a.depth and a.patch_size % 2**a.depth == 0),
        ("--vessel-bias", 0.0 <= a.vessel_bias <= 1.0), ("--val-images", 0 <= a.val_images < 20),
        ("--features", a.features >= 1), ("--depth", 1 <= a.depth <= 6), ("--gamma", a.gamma > 0),
        ("--eval-every", a.eval_every >= 1), ("--log-every", a.log_every >= 1), ("--threshold", 0 < a.threshold < 1),
        ("--workers", a.workers >= 0), ("--checkpoint-every", a.checkpoint_every >= 1), ("--keep", a.keep >= 1),
    ]
    for flag, ok in checks:
        if not ok:
            hint = " (must be a multiple of 2**depth)" if flag == "--patch-size" else ""
            raise ValueError(f"invalid value for {flag}: {getattr(a, flag[2:].replace('-', '_'))}{hint}")
    aug = a.augment
    return RunConfig(
        model=ModelConfig(arch=a.arch, features=a.features, depth=a.depth, norm=a.norm, upsample=a.upsample),
        data=DataConfig(
            channels=a.channels, clahe=a.clahe, gamma=a.gamma, patch_size=a.patch_size, vessel_bias=a.vessel_bias,
            val_images=a.val_images, flips=aug, rot90=aug, brightness=0.1 if aug else 0.0,
            contrast=0.1 if aug else 0.0, synthetic=a.synthetic, workers=a.workers,
        ),
        train=TrainConfig(
            steps=a.steps, batch_size=a.batch_size, lr=a.lr, warmup_steps=a.warmup_steps, optimizer=a.optimizer,
            weight_decay=a.weight_decay, loss=a.loss, seed=a.seed, eval_every=a.eval_every,
            log_every=a.log_every, threshold=a.threshold, precision=a.precision, bn_sync=a.bn_sync,
            checkpoint_every=a.checkpoint_every, keep=a.keep,
        ),
    )


def _load_data(cfg: RunConfig, data_dir: str | None, tfds_dir: str | None):
    """(train, test) lists of DriveExample: the user's DRIVE, or the synthetic generator."""
    from unet_jax.data import load_drive, make_synthetic_drive, resolve_drive_dir

    if cfg.data.synthetic:
        return make_synthetic_drive(seed=cfg.train.seed)
    root = resolve_drive_dir(data_dir)
    tfds_path = Path(tfds_dir) if tfds_dir else None
    return load_drive(root, "train", tfds_dir=tfds_path), load_drive(root, "test", tfds_dir=tfds_path)


def _eval_set(examples, pre) -> "EvalSet":
    import numpy as np

    from unet_jax.data import preprocess_image
    from unet_jax.training.loop import EvalSet

    return EvalSet(
        ids=[e.id for e in examples],
        images=np.stack([preprocess_image(e.image, **pre) for e in examples]),
        labels=np.stack([e.label for e in examples]).astype(np.float32),
        fovs=np.stack([e.fov for e in examples]).astype(np.float32),
    )


def _train_batches(train_set, cfg: RunConfig, local_batch: int):
    """This process's training batches: its shard of the patch stream, batched, read ahead.

    As :func:`unet_jax.data.make_train_iterator`, except that the per-patch dataset is
    split over processes (elements ``process_index::process_count``) before batching; with
    one process the batches are exactly make_train_iterator's.
    """
    import grain
    import numpy as np
    from absl import flags

    from unet_jax.data import AugmentConfig, make_train_dataset
    from unet_jax.training import parallel

    d = cfg.data
    ds = make_train_dataset(
        list(train_set.images), list(train_set.labels.astype(np.uint8)), list(train_set.fovs.astype(np.uint8)),
        patch_size=d.patch_size, batch_size=None, seed=cfg.train.seed, vessel_bias=d.vessel_bias,
        augment=AugmentConfig(flips=d.flips, rot90=d.rot90, brightness=d.brightness, contrast=d.contrast),
    )
    ds = parallel.shard_for_process(ds).batch(local_batch, drop_remainder=True)
    it = ds.to_iter_dataset(grain.ReadOptions(num_threads=1, prefetch_buffer_size=8))
    if d.workers > 0:
        if not flags.FLAGS.is_parsed():  # grain's multiprocessing reads absl flags
            flags.FLAGS.mark_as_parsed()
        it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=d.workers))
    return it


def _check_resumable(workdir: Path, cfg: RunConfig) -> None:
    """A clear error unless `workdir` holds an unfinished run of the same configuration."""
    from unet_jax.training.checkpoint import CheckpointError, config_differences
    from unet_jax.workdir import WorkdirError

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


def run(cfg: RunConfig, workdir: Path, *, data_dir=None, tfds_dir=None, overwrite=False, progress=True,
        resume=False) -> dict:
    """Trains and evaluates one configuration; returns the contents of results.json.

    `resume` continues the unfinished run in `workdir` from its latest checkpoint (from
    scratch if it has none yet); it must have been started with the same configuration.
    """
    import jax
    import jax.numpy as jnp
    import numpy as np

    from unet_jax.evaluation import evaluate_binary
    from unet_jax.inference import predict_probs
    from unet_jax.training import parallel
    from unet_jax.training.checkpoint import Checkpointer, truncate_metrics
    from unet_jax.training.loop import fit, make_predict_fn
    from unet_jax.training.recorder import Recorder
    from unet_jax.training.state import create_train_state
    from unet_jax.visualize import overlay, plot_curves, save_predictions
    from unet_jax.workdir import atomic_write_csv, atomic_write_json, prepare_workdir, read_jsonl

    t_start = time.perf_counter()
    mesh = parallel.make_data_mesh()
    local_batch = parallel.check_batch_size(cfg.train.batch_size, mesh)  # errors before any work
    n_dev = int(mesh.devices.size)
    is_main = jax.process_index() == 0
    if resume:
        _check_resumable(workdir, cfg)
    train_ex, test_ex = _load_data(cfg, data_dir, tfds_dir)  # before touching workdir: bad data writes nothing
    workdir = Path(workdir)
    if is_main:
        prepare_workdir(workdir, overwrite=overwrite, resume=resume)
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices("workdir prepared")
    dataset = "synthetic" if cfg.data.synthetic else "DRIVE"
    if is_main and not resume:
        atomic_write_json(workdir / "config.json", {**cfg.to_dict(), "dataset": dataset})

    rng = np.random.default_rng(cfg.train.seed)
    order = rng.permutation(len(train_ex))
    val_idx = set(order[: cfg.data.val_images].tolist())
    fit_ex = [e for i, e in enumerate(train_ex) if i not in val_idx]
    val_ex = [e for i, e in enumerate(train_ex) if i in val_idx]

    pre = dict(channels=cfg.data.channels, clahe=cfg.data.clahe, gamma=cfg.data.gamma)
    train_set = _eval_set(fit_ex, pre)
    val_set = _eval_set(val_ex, pre) if val_ex else None
    test_set = _eval_set(test_ex, pre)
    d = cfg.data
    batches = iter(_train_batches(train_set, cfg, local_batch))

    m = cfg.model
    # Batch-norm sync is a no-op on one device; leaving the axis out there keeps the step
    # bit-identical to the single-device train_step.
    bn_axis = parallel.DATA if cfg.train.bn_sync and n_dev > 1 else None
    # Fixed-width networks (resunet34) have no features/depth/norm/upsample options.
    arch_options = models.options(m.arch)
    shape_cfg = {k: v for k, v in dict(features=m.features, depth=m.depth, norm=m.norm, upsample=m.upsample).items()
                 if k in arch_options}
    model = models.create(m.arch, in_channels=train_set.images.shape[-1], out_channels=1, bn_axis_name=bn_axis,
                          dtype=jnp.bfloat16 if cfg.train.precision == "bf16" else None, **shape_cfg)
    state = create_train_state(model, cfg.train, (1, d.patch_size, d.patch_size, train_set.images.shape[-1]),
                               jax.random.key(cfg.train.seed))
    state = parallel.replicate(state, mesh)
    n_params = models.count_params(state.params)

    ckpt = Checkpointer(workdir / "checkpoints", every=cfg.train.checkpoint_every, keep=cfg.train.keep, run_meta={
        "config": cfg.to_dict(), "seed": cfg.train.seed, "workers": d.workers, "devices": n_dev,
        "processes": jax.process_count()})
    start_step = 0
    if resume:
        if ckpt.latest_step() is not None:
            state, data_state, meta = ckpt.restore(state)
            if data_state is not None:
                batches.set_state(data_state)
            start_step = int(meta["step"])
            if meta.get("devices") != n_dev and is_main:
                print(f"note: resuming a run checkpointed on {meta.get('devices')} devices on {n_dev}; "
                      "the result is not bit-identical to an uninterrupted run", flush=True)
        ckpt.discard_after(start_step)
        if is_main:
            truncate_metrics(workdir / "metrics.jsonl", start_step)
    if is_main:
        print(f"{m.arch}: {n_params:,} parameters; {dataset}: {len(fit_ex)} train, {len(val_ex)} val, "
              f"{len(test_ex)} test images; {n_dev} device(s), {jax.process_count()} process(es), "
              f"{cfg.train.precision}; workdir {workdir}"
              + (f"; resuming at step {start_step}" if resume else ""), flush=True)

    recorder = Recorder(workdir, append=resume, purge_step=start_step + 1 if resume else None) if is_main else None
    try:
        state, stats = fit(state, batches, cfg=cfg.train, loss_fn=losses.get_loss(cfg.train.loss),
                           recorder=recorder, val=val_set, progress=progress, mesh=mesh, checkpointer=ckpt)
        # The test set is evaluated with the final parameters (not the best-by-validation ones).
        final = parallel.local_copy(state)
        t_test = time.perf_counter()
        probs = predict_probs(make_predict_fn(final), test_set.images)
        ev = evaluate_binary(probs, test_set.labels, test_set.fovs, ids=test_set.ids, threshold=cfg.train.threshold)
        test_eval_s = time.perf_counter() - t_test
        if recorder:
            recorder.write({"split": "test", "step": cfg.train.steps, **ev.summary})
            for i in range(min(3, len(probs))):
                recorder.image(f"test/overlay_{test_set.ids[i]}",
                               overlay(probs[i] >= cfg.train.threshold, test_set.labels[i], test_set.fovs[i]),
                               cfg.train.steps)
        best_block = None
        if ckpt.best_step is not None:
            if ckpt.best_step == cfg.train.steps:
                best_summary = ev.summary
            else:
                best = ckpt.restore(final, which="best")[0]
                best_probs = predict_probs(make_predict_fn(best), test_set.images)
                best_summary = evaluate_binary(best_probs, test_set.labels, test_set.fovs, ids=test_set.ids,
                                               threshold=cfg.train.threshold).summary
            best_block = {"step": ckpt.best_step, "val_dice": ckpt.best_dice, **best_summary,
                          "note": "for information: the headline 'test' block uses the final parameters"}
    finally:
        if recorder:
            recorder.close()
        ckpt.close()
    if not is_main:
        return {}
    save_predictions(workdir / "predictions", test_set.ids, probs, test_set.labels, test_set.fovs,
                     threshold=cfg.train.threshold)
    atomic_write_csv(workdir / "per_image.csv", ev.per_image)
    plot_curves(read_jsonl(workdir / "metrics.jsonl"), workdir / "curves.png",
                title=f"{m.arch} on {dataset}" + (" (SYNTHETIC DATA)" if cfg.data.synthetic else ""))
    results = {
        "dataset": dataset,
        "synthetic": cfg.data.synthetic,
        "arch": m.arch,
        "params": n_params,
        "test": ev.summary,
        "test_params": f"final (step {cfg.train.steps})",
        "test_best_val": best_block,
        "test_eval_s": test_eval_s,
        "first_step_s": stats.first_step_s,
        "train_images_per_s": stats.images_per_s,
        "train_wall_s": stats.train_wall_s,
        "checkpoint_s": stats.checkpoint_s,
        "train_step_compiles": stats.step_traces,
        "total_wall_s": time.perf_counter() - t_start,
        "device": str(jax.devices()[0].device_kind),
        "devices": n_dev,
        "processes": jax.process_count(),
        "precision": cfg.train.precision,
        "bn_sync": cfg.train.bn_sync,
        "workers": d.workers,
        "resumed_from_step": start_step if resume else None,
        "checkpoints": {
            "final": ckpt.path("latest", cfg.train.steps),
            "best": ckpt.path("best", ckpt.best_step),
        },
        "jax_version": jax.__version__,
        "note": "synthetic data: these figures say nothing about DRIVE" if cfg.data.synthetic else
                "DRIVE test set, all FOV pixels pooled, threshold %.2f" % cfg.train.threshold,
    }
    atomic_write_json(workdir / "results.json", results)  # last: marks the run complete
    s = ev.summary
    label = "SYNTHETIC " if cfg.data.synthetic else ""
    print(f"{label}test (within FOV): dice/F1 {s['dice']:.4f}  AUC {s['auc']:.4f}  sens {s['sensitivity']:.4f}  "
          f"spec {s['specificity']:.4f}  acc {s['accuracy']:.4f}  IoU {s['iou']:.4f}")
    print(f"first step {stats.first_step_s:.1f}s, {stats.images_per_s:.1f} images/s, "
          f"total {results['total_wall_s']:.0f}s; results in {workdir}/results.json", flush=True)
    return results


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from unet_jax.data import DriveDataError
    from unet_jax.training.loop import NonFiniteLossError
    from unet_jax.training.parallel import initialize_distributed
    from unet_jax.workdir import WorkdirError

    workdir = None
    try:
        initialize_distributed(args.distributed)  # first: before anything else touches JAX
        cfg = config_from_args(args)
        if args.resume and not args.workdir:
            raise ValueError("--resume needs the --workdir of the run to continue")
        workdir = Path(args.workdir or f"runs/drive-{cfg.model.arch}{'-synthetic' if cfg.data.synthetic else ''}-{time.strftime('%Y%m%d-%H%M%S')}")
        run(cfg, workdir, data_dir=args.data_dir, tfds_dir=args.tfds_dir, overwrite=args.overwrite,
            progress=args.progress, resume=args.resume)
    except (DriveDataError, WorkdirError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except NonFiniteLossError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted: results.json was not written; metrics.jsonl holds what was logged"
              + (f"; continue with the same flags plus --resume --workdir {workdir}" if workdir else ""),
              file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
