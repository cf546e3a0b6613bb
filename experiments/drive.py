"""Train and evaluate a U-Net-family network on DRIVE retinal vessel segmentation.

    python -m experiments.drive --arch unet                 # real DRIVE (see --data-dir)
    python -m experiments.drive --arch unet --synthetic     # built-in fundus-like images

    python -m experiments.drive --workdir runs/a --resume   # continue an interrupted run

The defaults are the recommended CPU recipe: 16 base features, 64x64 green-channel CLAHE
patches, flips/rot90 and intensity jitter, BCE + Dice, batch 32, AdamW 2e-3 with warmup
and cosine decay, 1500 steps. The run itself (outputs, checkpoints, validation on 2
held-out training images, the test figures within the FOV) is the library's
:func:`unet_jax.training.run.train_and_evaluate`; see its module for what the work
directory receives.
"""

from __future__ import annotations

import argparse
import sys

from unet_jax import cli, data
from unet_jax.config import DataConfig, PreprocessConfig, RunConfig


def build_parser() -> argparse.ArgumentParser:
    d, pre = DataConfig(), PreprocessConfig()
    p = argparse.ArgumentParser(
        prog="python -m experiments.drive",
        description="Train a U-Net-family network on DRIVE and evaluate it on the 20 test images within the FOV.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    g = p.add_argument_group("data")
    g.add_argument("--data-dir", default=None, help="DRIVE folder (original layout); else $UNET_JAX_DRIVE_DIR, else ./data/DRIVE")
    g.add_argument("--tfds-dir", default=None, help="where the prepared ArrayRecord dataset is cached; else $UNET_JAX_TFDS_DIR, else ~/.cache/unet_jax/tensorflow_datasets")
    g.add_argument("--synthetic", action="store_true", help="train on built-in synthetic fundus-like images (no download needed)")
    g.add_argument("--channels", choices=["green", "gray", "rgb"], default=pre.channels)
    g.add_argument("--no-clahe", dest="clahe", action="store_false", help="disable CLAHE contrast equalisation")
    g.add_argument("--gamma", type=float, default=pre.gamma, help="gamma correction applied after CLAHE")
    g.add_argument("--patch-size", type=int, default=d.patch_size)
    g.add_argument("--vessel-bias", dest="foreground_bias", type=float, default=d.foreground_bias,
                   help="probability that a patch is centred on a vessel pixel")
    g.add_argument("--val-images", dest="val_size", type=int, default=int(d.val_size),
                   help="training images held out for validation (seeded)")
    cli.add_augment_args(g)
    cli.add_training_args(p)
    return p


def build(a: argparse.Namespace) -> tuple[RunConfig, data.Dataset]:
    """The run's configuration and its dataset (DRIVE, or the synthetic stand-in)."""
    pre = PreprocessConfig(channels=a.channels, clahe=a.clahe, gamma=a.gamma)
    options = {"seed": a.seed} if a.synthetic else {"data_dir": a.data_dir, "tfds_dir": a.tfds_dir}
    cfg = RunConfig(
        model=cli.model_config(a),
        data=DataConfig(dataset="synthetic" if a.synthetic else "drive", options=options, preprocess=pre,
                        augment=cli.augment_config(a), patch_size=a.patch_size, foreground_bias=a.foreground_bias,
                        val_size=a.val_size, workers=a.workers, on_device=a.data_on_device),
        train=cli.train_config(a),
    )
    return cfg, data.get(cfg.data.dataset, preprocess=pre, **options)


def main(argv: list[str] | None = None) -> int:
    return cli.run_main(build_parser(), build, argv)


if __name__ == "__main__":
    sys.exit(main())
