"""Train and evaluate a U-Net-family network on 3D NIfTI volumes, slice by slice.

    python -m experiments.volumes --root Task03_Liver --window -100,400            # CT: liver 1, tumour 2
    python -m experiments.volumes --root Task01_BrainTumour_flair --context 1      # MR, 2.5D input

``ROOT/imagesTr/*.nii.gz`` and ``ROOT/labelsTr/*.nii.gz`` (the Medical Segmentation Decathlon
layout) are read slice by slice along the third axis with nibabel (see
:mod:`unet_jax.data.nifti`). A seeded share of the volumes (--test-fraction) is the test set;
validation volumes are carved from the training ones (--val-size volumes). Figures are
per volume (all voxels pooled, per class), with and without largest-connected-component
post-processing, plus per-slice Dice (results.json "volumes", per_volume.csv, dsc.png,
overlays/, gifs/).
"""

from __future__ import annotations

import argparse
import sys

from unet_jax import cli, data
from unet_jax.config import DataConfig, PreprocessConfig, RunConfig


def _pair(text: str) -> tuple[float, float]:
    try:
        lo, hi = (float(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected two numbers LOW,HIGH, got {text!r}") from None
    return lo, hi


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m experiments.volumes",
        description="Train a U-Net-family network on NIfTI volumes (imagesTr/ + labelsTr/) slice by slice.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    g = p.add_argument_group("data")
    g.add_argument("--root", "--data-dir", dest="root", required=True, help="folder with imagesTr/ and labelsTr/")
    g.add_argument("--window", type=_pair, default=None,
                   help="CT intensity window LOW,HIGH (e.g. -100,400 for the liver); default: per-volume percentiles")
    g.add_argument("--percentiles", type=_pair, default=(0.5, 99.5), help="MR: per-volume LOW,HIGH percentiles")
    g.add_argument("--context", type=int, default=0, help="2.5D: neighbouring slices on each side as extra channels")
    g.add_argument("--classes", type=int, default=None, help="classes including background (default: from the labels)")
    g.add_argument("--test-fraction", type=float, default=0.2, help="share of the volumes held out for testing")
    g.add_argument("--val-size", type=float, default=0.1, help="training volumes held out for validation (fraction, "
                                                               "or a count if >= 1)")
    g.add_argument("--image-size", type=int, default=None, help="resize every slice to this square size")
    cli.add_patch_args(g, foreground_bias=0.5)
    g.add_argument("--cache-mb", type=int, default=DataConfig().cache_mb)
    cli.add_augment_args(g)
    cli.add_training_args(p)
    p.set_defaults(select="dice_per_case_mean")  # best checkpoint by the validation volumes' mean Dice
    return p


def build(a: argparse.Namespace) -> tuple[RunConfig, data.Dataset]:
    pre = PreprocessConfig(channels="gray", clahe=False, normalize="unit", image_size=a.image_size)
    options = {"root": a.root, "window": a.window, "percentiles": a.percentiles, "context": a.context,
               "test_fraction": a.test_fraction, "split_seed": a.seed, "classes": a.classes}
    dataset = data.get("nifti", preprocess=pre, progress=a.progress, **options)
    options["classes"] = dataset.num_classes
    cfg = RunConfig(
        model=cli.model_config(a),
        data=DataConfig(dataset="nifti", options=options, preprocess=pre, augment=cli.augment_config(a),
                        patch_size=cli.patch_size(a), foreground_bias=a.foreground_bias,
                        val_size=a.val_size, workers=a.workers, cache_mb=a.cache_mb),
        train=cli.train_config(a),
    )
    return cfg, dataset


def _join_negative_values(argv: list[str]) -> list[str]:
    """``--window -100,400`` as ``--window=-100,400``: argparse takes a value starting with
    '-' (other than a plain number) for an option."""
    out: list[str] = []
    it = iter(argv)
    for arg in it:
        if arg in ("--window", "--percentiles"):
            value = next(it, None)
            out.append(arg if value is None else f"{arg}={value}")
        else:
            out.append(arg)
    return out


def main(argv: list[str] | None = None) -> int:
    return cli.run_main(build_parser(), build, _join_negative_values(list(sys.argv[1:] if argv is None else argv)))


if __name__ == "__main__":
    sys.exit(main())
