"""Train and evaluate a U-Net-family network on the Kaggle LGG brain MRI set (per-patient Dice).

    python -m experiments.brain_mri --arch unet                                  # seeded patient split
    python -m experiments.brain_mri --split experiments/splits/lgg_50.json       # the committed split
    python -m experiments.brain_mri --folds 5 --fold 0 --workdir runs/cv/f0      # cross-validation by patient
    python -m unet_jax.crossval runs/cv/f0 runs/cv/f1 ...                        # its figure over all folds
    python -m experiments.brain_mri --evaluate runs/lgg-unet-... --data-dir OTHER --workdir runs/eval

The data folder (``kaggle_3m``: one folder per patient) comes from --data-dir, else
``$UNET_JAX_LGG_DIR``, else ``./data/kaggle_3m``. Slices are preprocessed per volume (crop to
the brain, pad to a square, resize to --image-size, 10th-99th percentile rescale,
per-channel standardisation), drawn for training with probability weighted towards slices
with abnormality (--uniform-share), patients alike or small lesions more often
(--patient-weight-power), augmented by zoom, rotation, horizontal flips and FLAIR
in place of the other sequences at random (--flair-substitute). --sequences chooses which
of the three MRI sequences (pre-contrast, FLAIR, post-contrast) the model sees;
--soft-labels trains on the masks' area fractions at the model's resolution.
Validation patients choose the best checkpoint; test patients give the reported figures,
computed on the stored 256x256 masks: per-patient Dice (every voxel of a patient pooled)
with mean and median, with and without largest-connected-component post-processing
(results.json "volumes", per_volume.csv, dsc.png, overlays/, gifs/).

Published reference (Buda et al. 2019, 110 patients, cross-validation): per-patient Dice
mean 83.6%, median 87.3%.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from unet_jax import cli, data
from unet_jax.config import AugmentConfig, ConfigError, DataConfig, PreprocessConfig, RunConfig
from unet_jax.data.lgg import SEQUENCES

DEFAULT_SPLIT = Path(__file__).parent / "splits" / "lgg_50.json"


def _sequences(text: str) -> tuple[str, ...]:
    """"flair,post" -> ("flair", "post"); the dataset checks the names."""
    return tuple(t.strip() for t in text.split(",") if t.strip())


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m experiments.brain_mri",
        description="Train a U-Net-family network on Kaggle LGG brain MRI slices; report per-patient Dice.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    g = p.add_argument_group("data")
    g.add_argument("--data-dir", default=None, help="the kaggle_3m folder; else $UNET_JAX_LGG_DIR, else ./data/kaggle_3m")
    g.add_argument("--split", default=None, help="split file (JSON lists 'train', 'val', 'test' of patient folders); "
                                                 "default: a seeded split of every patient (--split-seed, "
                                                 "--val-fraction, --test-fraction)")
    g.add_argument("--split-seed", type=int, default=0)
    g.add_argument("--val-fraction", type=float, default=0.1, help="share of the patients for validation")
    g.add_argument("--test-fraction", type=float, default=0.2, help="share of the patients for testing")
    g.add_argument("--folds", type=int, default=None, help="K-fold cross-validation by patient (with --fold)")
    g.add_argument("--fold", type=int, default=None, help="which fold (0-based) is the test set")
    g.add_argument("--val-size", type=float, default=0.1,
                   help="with --folds: training patients held out for validation (a fraction, or a count if >= 1; "
                        "0: none)")
    g.add_argument("--image-size", type=int, default=256, help="side of the model's input after crop and pad")
    cli.add_patch_args(g)
    g.add_argument("--no-crop", dest="crop", action="store_false", help="do not crop to the brain's bounding box")
    g.add_argument("--no-rescale", dest="rescale", action="store_false",
                   help="no per-volume 10th-99th percentile rescale")
    g.add_argument("--no-standardize", dest="standardize", action="store_false",
                   help="no per-volume, per-channel standardisation")
    g.add_argument("--head-mask", action=argparse.BooleanOptionalAction, default=None,
                   help="clear the background of a channel whose background is not dark (a few Kaggle volumes' "
                        "pre-contrast lies on a grey field) before cropping; training default: on; --evaluate "
                        "default: as the run was trained")
    g.add_argument("--uniform-share", type=float, default=0.1,
                   help="slices are drawn in proportion to their abnormal area plus this share spread uniformly "
                        "over each patient's slices; negative: uniform sampling")
    g.add_argument("--patient-weight-power", type=float, default=0.0, metavar="POWER",
                   help="training patients drawn with probability proportional to their abnormal volume to the "
                        "power -POWER, so small lesions are seen more often (1: in inverse proportion; patients "
                        "without abnormality count as a median one); 0: every patient equally likely, as the "
                        "reference")
    g.add_argument("--context", type=int, default=0,
                   help="2.5D: the neighbouring slices on each side as extra channels (those of --sequences)")
    g.add_argument("--sequences", type=_sequences, default=SEQUENCES, metavar="NAMES",
                   help="the MRI sequences the model sees, comma-separated, of pre, flair, post (e.g. flair); "
                        "the volume preprocessing uses all three")
    g.add_argument("--soft-labels", action="store_true",
                   help="train on the masks' area fractions on the model's grid (each pixel: the share the mask "
                        "covers) instead of nearest-neighbour labels; figures are on the stored masks either way")
    g.add_argument("--aug-scale", type=float, default=0.05, help="random zoom by up to this fraction")
    g.add_argument("--aug-rotate", type=float, default=15.0, help="random rotation by up to this many degrees")
    g.add_argument("--aug-contrast", type=float, default=0.0, metavar="C",
                   help="each channel scaled about its mean by a factor from U(1-C, 1+C); 0: off")
    g.add_argument("--aug-brightness", type=float, default=0.0, metavar="B",
                   help="each channel shifted by U(-B, B) (standardised units); 0: off")
    g.add_argument("--aug-gamma", type=float, default=0.0, metavar="G",
                   help="each channel's values raised to a gamma from exp(-G) to exp(G) on its range, its mean and "
                        "spread kept (nnU-Net's gamma augmentation); 0: off")
    g.add_argument("--no-aug-flip", dest="aug_flip", action="store_false", help="no random horizontal flips")
    g.add_argument("--flair-substitute", type=float, default=0.3,
                   help="training: each of pre- and post-contrast (those of --sequences) replaced by FLAIR with "
                        "this probability, as the Kaggle set fills a missing sequence (a few patients have FLAIR in "
                        "two or all channels); 0: off")
    g.add_argument("--cache-mb", type=int, default=DataConfig().cache_mb,
                   help="keep the preprocessed training slices in memory if they fit, else read them per step")
    cli.add_augment_args(g)
    g = p.add_argument_group("evaluation of a trained run")
    g.add_argument("--evaluate", metavar="RUN_DIR", nargs="+", default=None,
                   help="evaluate this finished run on every patient of --data-dir (no training); results go "
                        "to --workdir. Several runs: their ensemble (the mean of their probabilities)")
    g.add_argument("--which", choices=["best", "final"], default="best", help="with --evaluate: which checkpoint")
    g.add_argument("--tta", choices=["none", "hflip"], default="none",
                   help="with --evaluate: test-time augmentation, the mean of each slice's and its horizontal "
                        "flip's probabilities (training flips horizontally only)")
    g.add_argument("--live-weights", action="store_true",
                   help="with --evaluate of runs trained with --ema-decay: their live weights instead of the moving "
                        "average their own figures use (to see what the average changes)")
    cli.add_training_args(p)
    # The CPU recipe's training defaults (the reference trains 100 epochs at batch 16).
    # Best checkpoint by the validation patients' mean Dice: the figure reported on test patients.
    p.set_defaults(batch_size=16, steps=2000, eval_every=250, lr=1e-3, select="dice_per_case_mean")
    return p


def augment_config(a: argparse.Namespace) -> AugmentConfig:
    if not a.augment:
        return AugmentConfig.none()
    # Per channel: the three sequences' intensities vary independently between scanners.
    jitter = bool(a.aug_contrast or a.aug_brightness or a.aug_gamma)
    # The model's channels: --sequences of the slice, then of each neighbour. FLAIR fills in
    # for the others; nothing to fill in without FLAIR or without another sequence.
    seq = tuple(a.sequences)
    others = tuple(i for i, s in enumerate(seq) if s != "flair")
    substitute = (dict(substitute=a.flair_substitute, substitute_channels=others, substitute_source=seq.index("flair"))
                  if a.flair_substitute and "flair" in seq and others else {})
    return AugmentConfig(flips=a.aug_flip, vertical_flip=False, rot90=False, contrast=a.aug_contrast,
                         brightness=a.aug_brightness, gamma=a.aug_gamma, scale=a.aug_scale, rotate=a.aug_rotate,
                         per_channel=jitter, channel_group=len(seq) if jitter or substitute else 0, **substitute)


def build(a: argparse.Namespace) -> tuple[RunConfig, data.Dataset]:
    """The run's configuration and its dataset (every slice checked before training)."""
    from unet_jax.data.lgg import resolve_lgg_dir

    if a.patch_size is not None and not 0 < a.patch_size <= a.image_size:
        raise ConfigError("data.patch_size", a.patch_size, f"crops come from the --image-size {a.image_size} "
                                                           f"slices: use a side from 16 up to {a.image_size}")
    options: dict[str, Any] = {
        "root": str(resolve_lgg_dir(a.data_dir)), "split": a.split, "split_seed": a.split_seed,
        "val_fraction": a.val_fraction, "test_fraction": a.test_fraction, "folds": a.folds, "fold": a.fold,
        "crop": a.crop, "rescale": a.rescale, "standardize": a.standardize, "head_mask": a.head_mask is not False,
        "uniform_share": a.uniform_share if a.uniform_share >= 0 else None,
        "patient_weight_power": a.patient_weight_power, "context": a.context,
        "sequences": list(a.sequences),
        **({"soft_labels": True} if a.soft_labels else {})}  # absent when off: older runs still --resume
    pre = PreprocessConfig(channels="rgb", clahe=False, normalize="zscore", image_size=a.image_size)
    dataset = data.get("lgg", preprocess=pre, progress=a.progress, **options)
    cfg = RunConfig(
        model=cli.model_config(a),
        data=DataConfig(dataset="lgg", options=options, preprocess=pre, augment=augment_config(a),
                        patch_size=cli.patch_size(a), foreground_bias=a.foreground_bias,
                        val_size=a.val_size, workers=a.workers, cache_mb=a.cache_mb),
        train=cli.train_config(a),
    )
    return cfg, dataset


def evaluate_run(run_dirs: Sequence[str | Path], data_dir: str | None, workdir: str | Path | None, *,
                 which: str = "best", overwrite: bool = False, progress: bool = True, head_mask: bool | None = None,
                 tta: bool = False, live_weights: bool = False) -> dict[str, Any]:
    """Trained LGG run(s) evaluated on every patient of `data_dir`; results in a new `workdir`.

    Several runs are an ensemble: each slice's probabilities are the mean of the runs'
    (they must share the input preprocessing, threshold and empty-case convention).
    `head_mask`: None keeps the runs' setting (runs from before the option had it off);
    `tta`: each slice's probabilities averaged with those of its horizontal flip;
    `live_weights`: runs trained with a moving average of the weights are evaluated with
    their live weights instead (every run must have the average)."""
    from unet_jax.data.lgg import resolve_lgg_dir
    from unet_jax.evaluation import evaluate
    from unet_jax.predictor import Predictor, PredictorError, check_ensemble, load_run_config, load_run_state
    from unet_jax.workdir import atomic_write_csv, atomic_write_json, prepare_workdir

    t0 = time.perf_counter()
    run_dirs = [Path(r) for r in run_dirs]
    if not run_dirs:
        raise PredictorError("--evaluate needs at least one run folder")
    cfgs = [load_run_config(r) for r in run_dirs]
    for run_dir, cfg in zip(run_dirs, cfgs):
        if cfg.data.dataset != "lgg":
            raise PredictorError(f"{run_dir} was trained on {cfg.data.dataset!r}, not on LGG")
    check_ensemble(run_dirs, cfgs, **({} if head_mask is None else {"head_mask": head_mask}))
    cfg = cfgs[0]
    options = {**cfg.data.options, "root": str(resolve_lgg_dir(data_dir)), "split": "all", "folds": None,
               "fold": None, "patients": None}
    if head_mask is not None:
        options["head_mask"] = head_mask
    dataset = data.get("lgg", preprocess=cfg.data.preprocess, progress=progress, **options)
    states = [load_run_state(r, which=which)[2] for r in run_dirs]
    if live_weights:
        plain = [str(r) for r, s in zip(run_dirs, states) if s.ema is None]
        if plain:
            raise PredictorError(f"--live-weights: {', '.join(plain)} trained without --ema-decay; its figures "
                                 "use the live weights already (leave the flag out)")
        states = [s.replace(ema=None) for s in states]  # eval_step then applies params and batch_stats
    # The predictor's ensemble (the mean of the runs' probabilities) and flip TTA, as
    # unet_jax.predict computes them; the dataset above supplies the input.
    predictor = Predictor(cfg=cfg, num_classes=dataset.num_classes, runs=tuple(str(r) for r in run_dirs),
                          states=tuple(states))
    workdir = Path(workdir or f"runs/lgg-eval-{run_dirs[0].name}-{time.strftime('%Y%m%d-%H%M%S')}")
    prepare_workdir(workdir, overwrite=overwrite)
    reporter = dataset.test_reporter(workdir, ignore_empty=cfg.train.ignore_empty)

    def predict(batch):  # (1, H, W, C) -> (1, H, W)
        return predictor.model_probs(batch[0], tta="hflip" if tta else False)[None]

    ev = evaluate(predict, dataset.test(), dataset.preprocess, num_classes=dataset.num_classes,
                  threshold=cfg.train.threshold, ignore_empty=cfg.train.ignore_empty, restore=dataset.restore_probs,
                  on_image=lambda ex, probs, pred: reporter.add(ex, probs, pred), progress=progress, desc="evaluate")
    volumes = reporter.finish()
    atomic_write_csv(workdir / "per_image.csv", ev.per_image)
    atomic_write_csv(workdir / "per_case.csv", ev.per_case)
    results = {"dataset": "lgg", "evaluated_run": str(run_dirs[0].resolve()),
               "evaluated_runs": [str(r.resolve()) for r in run_dirs], "ensemble": "mean" if len(run_dirs) > 1
               else "none", "checkpoint": which, "step": predictor.steps[0], "steps": list(predictor.steps),
               "tta": "hflip" if tta else "none",
               # Per ensemble: one kind, or both (runs with and without an average, --live-weights off).
               "weights": " + ".join(sorted({"live" if s.ema is None else "moving average" for s in states})),
               "data": dataset.describe(), "arch": cfg.model.arch,
               "archs": [c.model.arch for c in cfgs], "test": ev.summary,
               "volumes": volumes, "volumes_per_patient": reporter.per_volume_rows(),
               "total_wall_s": time.perf_counter() - t0,
               "note": "every patient of the folder evaluated with the run's preprocessing; figures on the stored "
                       "256x256 masks"}
    atomic_write_json(workdir / "results.json", results)
    what = f"an ensemble of {len(run_dirs)} runs" if len(run_dirs) > 1 else "the run"
    n = volumes["num_volumes"]
    print(f"{what}, {len(dataset.test())} slices of {n} patient{'s' if n != 1 else ''}: per-patient Dice mean "
          f"{volumes['dice_per_volume_mean']:.4f} median {volumes['dice_per_volume_median']:.4f} "
          f"(after LCC {volumes['dice_per_volume_lcc_mean']:.4f} / {volumes['dice_per_volume_lcc_median']:.4f}); "
          f"results in {workdir}/results.json", flush=True)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.evaluate is None:
        return cli.run_main(parser, build, argv)
    from unet_jax.data.base import DataError
    from unet_jax.training.checkpoint import CheckpointError
    from unet_jax.workdir import WorkdirError

    try:
        evaluate_run(args.evaluate, args.data_dir, args.workdir, which=args.which, overwrite=args.overwrite,
                     progress=args.progress, head_mask=args.head_mask, tta=args.tta == "hflip",
                     live_weights=args.live_weights)
    except (DataError, WorkdirError, CheckpointError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
