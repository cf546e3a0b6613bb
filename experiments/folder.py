"""Train and evaluate a U-Net-family network on a folder of images and masks.

    python -m experiments.folder --root my_data                     # my_data/{train,test}/{images,labels}
    python -m experiments.folder --images imgs --masks masks --test-fraction 0.2
    python -m experiments.folder --root my_data --image-size 256    # resize, train on whole images

Masks pair with images by file stem (after a suffix such as ``_mask``, detected or given
with --mask-suffix); they hold 0/1 or 0/255 (binary: sigmoid head) or class ids 0, 1, 2, ...
(softmax head, per-class and mean foreground Dice). Every file is checked before training
starts. Without --image-size, the network trains on --patch-size patches and predicts whole
images at their own size; with it, images are resized and predictions resized back, so
test figures are always at the original resolution. Validation images (--val-size) are
carved from the training files; the test files are used once, for the reported figures.
"""

from __future__ import annotations

import argparse
import sys

from unet_jax import cli, data
from unet_jax.config import DataConfig, PreprocessConfig, RunConfig


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m experiments.folder",
        description="Train a U-Net-family network on a folder of images and masks and evaluate it on its test files.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    g = p.add_argument_group("data")
    g.add_argument("--root", default=None, help="folder with train/ and test/ (each images/ + labels/ or masks/), "
                                                "or with images/ + masks/ to split")
    g.add_argument("--images", default=None, help="folder of images (with --masks, instead of --root)")
    g.add_argument("--masks", default=None, help="folder of masks, paired with --images by file stem")
    g.add_argument("--test-fraction", type=float, default=0.2, help="share of the files held out for testing "
                                                                     "when one folder is split")
    g.add_argument("--mask-suffix", default=None, help="what a mask's file stem adds to its image's, e.g. _mask "
                                                       "(default: detected among common ones)")
    g.add_argument("--classes", type=int, default=None, help="classes including background (default: from the masks)")
    g.add_argument("--channels", choices=["auto", "gray", "rgb", "green"], default="auto",
                   help="model input: auto = as the first image is stored (gray or RGB)")
    g.add_argument("--normalize", choices=["zscore", "unit"], default="zscore",
                   help="zscore: each image to mean 0, std 1; unit: divide by 255 (or 65535)")
    g.add_argument("--clahe", action="store_true", help="CLAHE contrast equalisation before normalising")
    g.add_argument("--image-size", type=int, default=None, help="resize every image to this square size")
    cli.add_patch_args(g)
    g.add_argument("--val-size", type=float, default=0.1, help="training files held out for validation: a "
                                                               "fraction, or a count if >= 1")
    g.add_argument("--cache-mb", type=int, default=DataConfig().cache_mb,
                   help="keep the preprocessed training images in memory if they fit, else read them per patch")
    cli.add_augment_args(g)
    cli.add_training_args(p)
    return p


def build(a: argparse.Namespace) -> tuple[RunConfig, data.Dataset]:
    """The run's configuration and its dataset; `--channels auto` is resolved from the data."""
    options = {"root": a.root, "images": a.images, "masks": a.masks, "test_fraction": a.test_fraction,
               "split_seed": a.seed, "mask_suffix": a.mask_suffix, "classes": a.classes}
    dataset = data.get("folder", progress=a.progress, **options)
    channels = dataset.stored_channels() if a.channels == "auto" else a.channels
    pre = PreprocessConfig(channels=channels, clahe=a.clahe, normalize=a.normalize, image_size=a.image_size)
    # The resolved class count goes into the config, so config.json says what was trained.
    options["classes"] = dataset.num_classes
    cfg = RunConfig(
        model=cli.model_config(a),
        data=DataConfig(dataset="folder", options=options, preprocess=pre, augment=cli.augment_config(a),
                        patch_size=cli.patch_size(a), foreground_bias=a.foreground_bias, val_size=a.val_size,
                        workers=a.workers, cache_mb=a.cache_mb, on_device=a.data_on_device),
        train=cli.train_config(a),
    )
    return cfg, dataset.with_preprocess(pre)


def main(argv: list[str] | None = None) -> int:
    return cli.run_main(build_parser(), build, argv)


if __name__ == "__main__":
    sys.exit(main())
