"""Segment images with a trained run.

    python -m unet_jax.predict --run runs/drive-unet-... images/ more.png --output preds/
    python -m unet_jax.predict --run RUN DRIVE/test/images --labels DRIVE/test/1st_manual \\
        --fov-masks DRIVE/test/mask --tta flip --output preds/       # also per_image.csv + summary.json
    python -m unet_jax.predict --run runs/seed0 --run runs/seed1 images/ --output preds/   # an ensemble

For every input image (files, or every image in a folder; PNG, JPEG, TIFF, BMP, GIF, PPM)
writes ``<stem>_prob.png`` (foreground probability x 255), ``<stem>_pred.png`` (mask: 0/255,
or class ids) and ``<stem>_overlay.png``. With --labels, the overlay shows the prediction
against the label and per_image.csv / summary.json hold the metrics (``unet_jax.metrics``,
within --fov-masks when given). Labels and FOV masks pair with an image by file stem, after
a common suffix (``_mask``, ``_manual1``, ...) or by the stem's first ``_``-separated part
(DRIVE's ``01_test.tif`` and ``01_manual1.gif``). Architecture, preprocessing, classes and
threshold come from the run; nothing the training fixed is asked again. ``--run`` given more
than once predicts with the mean of the runs' probabilities (runs of other seeds, folds or
architectures trained on the same input with the same threshold; others are refused).

Runs trained on volumes predict volumes, preprocessed as in training (statistics of the
whole volume), and write them in the input's own format:

    python -m unet_jax.predict --run runs/lgg-unet PATIENT_FOLDER... --output preds/   # LGG
    python -m unet_jax.predict --run runs/liver volume.nii.gz --labels labelsTs/ --output preds/

LGG: patient folders (``<patient>_<n>.tif``), or folders of them; writes
``<patient>/<patient>_<n>_pred.png`` (0/255), ``_prob.png``, ``_overlay.png`` and
``gifs/<patient>.gif``; when every slice has its ``_mask.tif``, per-patient Dice
(``per_volume.csv``, ``dsc.png``, summary.json). NIfTI: volumes or folders of them; writes
``<case>_pred.nii.gz`` and ``<case>_prob.nii.gz`` on the input's grid with its affine;
--labels (a folder of label volumes of the same names) adds per-volume Dice.
"""

from __future__ import annotations

import argparse
import functools
import sys
import time
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from unet_jax.data.base import DataError, Example
from unet_jax.data.folder import MASK_SUFFIXES
from unet_jax.data.imageio import IMAGE_EXTENSIONS, read_image, read_mask

INPUT_EXTENSIONS = (*IMAGE_EXTENSIONS, ".ppm")


def input_files(inputs: list[str]) -> list[Path]:
    """The image files named, and the images in the folders named, in order."""
    files: list[Path] = []
    for name in inputs:
        path = Path(name)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in INPUT_EXTENSIONS)
            if not found:
                raise DataError(f"{path} holds no images ({', '.join(INPUT_EXTENSIONS)})")
            files += found
        elif path.is_file():
            files.append(path)
        else:
            raise DataError(f"input {path} does not exist")
    return files


@functools.cache  # one listing per folder, not one per input image
def _files_by_stem(folder: Path) -> dict[str, Path]:
    by_stem: dict[str, Path] = {}
    for p in sorted(folder.iterdir()):
        if p.is_file() and p.suffix.lower() in INPUT_EXTENSIONS:
            by_stem.setdefault(p.stem, p)
    return by_stem


def find_partner(stem: str, folder: Path, what: str) -> Path:
    """The file in `folder` that labels the image `stem` (see the module docstring)."""
    by_stem = _files_by_stem(folder)
    for base in dict.fromkeys([stem, stem.split("_")[0]]):
        for suffix in MASK_SUFFIXES:
            if f"{base}{suffix}" in by_stem:
                return by_stem[f"{base}{suffix}"]
    raise DataError(f"no {what} for image {stem!r} in {folder} (looked for {stem}, {stem}_mask, "
                    f"{stem.split('_')[0]}_manual1, ... with any image extension)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m unet_jax.predict", description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("inputs", nargs="+", help="image files or folders of images; for runs trained on volumes, "
                                             "LGG patient folders or NIfTI volumes (or folders of them)")
    p.add_argument("--run", required=True, action="append", help="the training run's folder (its --workdir); "
                   "repeated (--run A --run B): their ensemble, the mean of their probabilities")
    p.add_argument("--output", required=True, help="folder for the predictions")
    p.add_argument("--which", choices=["best", "final"], default="best", help="which checkpoint of the run")
    p.add_argument("--labels", default=None, help="folder of ground-truth masks (NIfTI runs: label volumes): "
                                                  "also write metrics")
    p.add_argument("--fov-masks", default=None, help="folder of valid-region masks (e.g. DRIVE's FOV)")
    p.add_argument("--threshold", type=float, default=None, help="binary: mask threshold (default: the run's)")
    add_inference_args(p)
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    return p


def predict_files(args: argparse.Namespace) -> dict:
    """Runs the prediction of `args` (see :func:`build_parser`); returns the summary."""
    from unet_jax.evaluation import Evaluator, predicted_classes
    from unet_jax.predictor import load_predictor
    from unet_jax.visualize import save_prediction
    from unet_jax.workdir import atomic_write_csv, atomic_write_json

    predictor = load_predictor(args.run, which=args.which)
    if predictor.volume_preprocessing is not None:
        return predict_volumes(args, predictor)
    files = input_files(args.inputs)
    threshold = predictor.threshold if args.threshold is None else args.threshold
    evaluator = Evaluator(predictor.num_classes, threshold=threshold) if args.labels else None
    out = Path(args.output)
    options = {**inference_options(args), "scale": args.scale}
    t0, n_pixels = time.perf_counter(), 0
    for path in tqdm(files, desc="predict", unit="image", disable=not args.progress):
        image = read_image(path)
        probs = predictor(image, **options)
        label = read_mask(find_partner(path.stem, Path(args.labels), "label")) if args.labels else None
        valid = read_mask(find_partner(path.stem, Path(args.fov_masks), "FOV mask")) if args.fov_masks else None
        label = None if label is None else (label > 0 if predictor.num_classes == 2 else label).astype(np.uint8)
        valid = None if valid is None else (valid > 0).astype(np.uint8)  # FOV files hold 0/255
        pred = predicted_classes(probs, threshold)
        if evaluator is not None:
            evaluator.add(Example(id=path.stem, image=image, label=label, valid=valid), probs)
        save_prediction(out, path.stem, probs, pred, label, valid, image=image)
        n_pixels += image.shape[0] * image.shape[1]
    seconds = time.perf_counter() - t0
    summary = {**predictor.describe(), "images": len(files), "seconds": seconds,
               "images_per_s": len(files) / seconds, "threshold": threshold, **options}
    if evaluator is not None:
        result = evaluator.result()
        atomic_write_csv(out / "per_image.csv", result.per_image)
        summary["test"] = result.summary
        atomic_write_json(out / "summary.json", summary)
    print(f"{len(files)} image(s) in {seconds:.1f}s ({summary['images_per_s']:.2f} images/s, "
          f"{n_pixels / seconds / 1e6:.2f} Mpixel/s); predictions in {out}"
          + (f"; dice/F1 {summary['test']['dice']:.4f}" if evaluator is not None else ""), flush=True)
    return summary


def add_inference_args(p: argparse.ArgumentParser) -> None:
    """The predictor's options as flags (this command's and the app's): --tta, --window,
    --overlap, --blend, --scale."""
    p.add_argument("--tta", choices=["none", "flip", "flip8", "hflip"], default="none",
                   help="test-time augmentation: mean over the 4 flips, flips and transposes, or the image and "
                        "its horizontal flip (hflip: for images with an up and a down, e.g. brain MRI slices)")
    p.add_argument("--window", type=int, default=None, help="sliding-window side (default: whole image, "
                                                            "windows of 512 above 2048x2048 pixels)")
    p.add_argument("--overlap", type=float, default=0.5, help="sliding-window overlap")
    p.add_argument("--blend", choices=["gaussian", "constant"], default="gaussian", help="sliding-window blending")
    p.add_argument("--scale", type=float, default=1.0, help="resample inputs by this factor to the training "
                                                           "data's pixel scale (predictions are mapped back)")


def inference_options(args: argparse.Namespace) -> dict:
    """The predictor's keyword options (TTA, sliding window; not --scale, which volume runs
    refuse) from the flags of :func:`add_inference_args`."""
    return dict(tta={"none": False, "flip": True, "flip8": 8, "hflip": "hflip"}[args.tta], window=args.window,
                overlap=args.overlap, blend=args.blend)


def predict_volumes(args: argparse.Namespace, predictor) -> dict:
    """Prediction for a run trained on volumes (see the module docstring); returns the summary."""
    from unet_jax import data
    from unet_jax.evaluation import Evaluator, predicted_classes
    from unet_jax.workdir import atomic_write_csv, atomic_write_json

    cfg = predictor.cfg
    for flag, given in (("--scale", args.scale != 1.0), ("--fov-masks", args.fov_masks is not None)):
        if given:
            raise DataError(f"{flag} applies to runs that predict single images; {', '.join(args.run)} predict "
                            f"{predictor.volume_preprocessing}")
    dataset = data.dataset_class(cfg.data.dataset).for_prediction(
        args.inputs, options={**cfg.data.options, "classes": predictor.num_classes}, preprocess=cfg.data.preprocess,
        labels=args.labels, progress=args.progress)
    threshold = predictor.threshold if args.threshold is None else args.threshold
    options = inference_options(args)
    out = Path(args.output)
    writer = dataset.prediction_writer(out)
    reporter = dataset.test_reporter(out, ignore_empty=cfg.train.ignore_empty)  # GIFs; per-volume Dice if labelled
    evaluator = Evaluator(predictor.num_classes, threshold=threshold, ignore_empty=cfg.train.ignore_empty) \
        if dataset.labelled else None
    source = dataset.test()
    t0 = time.perf_counter()
    # Not evaluation.evaluate: it scores inside its loop, and the time here is the
    # prediction's alone (as for images); the figures follow when there are labels.
    for i in tqdm(range(len(source)), desc="predict", unit="slice", disable=not args.progress):
        example = source[i]
        probs = dataset.restore_probs(example, predictor.model_probs(dataset.preprocess(example).image, **options))
        pred = predicted_classes(probs, threshold)
        writer.add(example, probs, pred)
        reporter.add(example, probs, pred)
        if evaluator is not None:
            evaluator.add(example, probs)
    written = writer.finish()
    volumes = reporter.finish()
    seconds = time.perf_counter() - t0
    summary = {**predictor.describe(), "dataset": cfg.data.dataset,
               "volumes": volumes["num_volumes"], "slices": len(source), "seconds": seconds,
               "slices_per_s": len(source) / seconds, "threshold": threshold, "labelled": dataset.labelled,
               "files": len(written), **options}
    if evaluator is not None:
        result = evaluator.result()
        atomic_write_csv(out / "per_image.csv", result.per_image)
        summary["test"], summary["per_volume"] = result.summary, volumes
    atomic_write_json(out / "summary.json", summary)
    scored = (f"; per-volume Dice mean {volumes['dice_per_volume_mean']:.4f} median "
              f"{volumes['dice_per_volume_median']:.4f}" if dataset.labelled else "")
    print(f"{summary['volumes']} volume(s), {len(source)} slices in {seconds:.1f}s "
          f"({summary['slices_per_s']:.2f} slices/s); predictions in {out}{scored}", flush=True)
    return summary


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from unet_jax.predictor import PredictorError
    from unet_jax.training.checkpoint import CheckpointError

    try:
        predict_files(args)
    except (DataError, PredictorError, CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
