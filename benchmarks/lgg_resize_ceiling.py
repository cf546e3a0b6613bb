"""How much per-patient Dice the resize to the model's grid costs by itself, on the LGG masks.

    uv run python -m benchmarks.lgg_resize_ceiling --data-dir ../shared/data/lgg_mri/kaggle_3m

Each stored mask goes through the LGG preprocessing's geometry (crop to the brain's box,
pad to a square, resize to `--image-size`) as a label would, comes back through
``restore_probs`` (the path of the model's probabilities) and is thresholded at 0.5; each
patient's voxels are then scored against the stored masks as a test patient is. The figure
is what a model that predicted its training labels exactly would score: the resize's
ceiling. Label resizes:

* ``nearest``: cv2.INTER_NEAREST, the labels' resize before commit 34b22fe (output pixel i
  takes input pixel floor(i * scale): half an output pixel off);
* ``nearest_exact``: cv2.INTER_NEAREST_EXACT, the labels' resize since (about pixel centres);
* ``area``: the mask's area fractions (soft labels, what ``experiments.brain_mri --soft-labels``
  trains on), what a model trained on them could output.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import cv2
import numpy as np
from tqdm.auto import tqdm

from unet_jax.data.lgg import LggDataset
from unet_jax.workdir import atomic_write_bytes

RESIZES = {"nearest": cv2.INTER_NEAREST, "nearest_exact": cv2.INTER_NEAREST_EXACT, "area": cv2.INTER_AREA}


def resize_ceiling(ds: LggDataset, size: int, interpolation: int) -> dict[str, float]:
    """Per patient with abnormality: the Dice of its masks after the round trip through a
    `size` x `size` grid (the crop boxes do not depend on the dataset's own image size)."""
    src = ds.test()
    counts: dict[str, list[int]] = {}  # case -> [overlap, predicted, stored] voxels
    for i in range(len(src)):
        ex = src[i]
        label = np.asarray(ex.label, np.float32)
        small = ds.volume(ex.case).geometry(label, size, interpolation)
        back = ds.restore_probs(ex, small) > 0.5
        stored = label > 0
        c = counts.setdefault(ex.case, [0, 0, 0])
        c[0] += int(np.count_nonzero(back & stored))
        c[1] += int(np.count_nonzero(back))
        c[2] += int(np.count_nonzero(stored))
    return {case: 2 * inter / (pred + stored) for case, (inter, pred, stored) in counts.items() if stored}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", default=None,
                   help="the kaggle_3m folder; else $UNET_JAX_LGG_DIR, else ./data/kaggle_3m")
    p.add_argument("--image-size", type=int, nargs="+", default=[128, 160, 256])
    p.add_argument("--no-head-mask", dest="head_mask", action="store_false",
                   help="crop boxes without the head mask (on by default, as in experiments.brain_mri)")
    p.add_argument("--output", default="benchmarks/results/lgg_resize_ceiling.json")
    args = p.parse_args(argv)
    argv = sys.argv[1:] if argv is None else argv
    out: dict = {"command": " ".join(["uv run python -m benchmarks.lgg_resize_ceiling", *argv]),
                 "head_mask": args.head_mask, "opencv": cv2.__version__, "results": {}}
    ds = LggDataset(args.data_dir, split="all", head_mask=args.head_mask, progress=False)  # read once
    for size in args.image_size:
        for name, interpolation in tqdm(RESIZES.items(), desc=f"{size}x{size}", unit="resize"):
            dice = resize_ceiling(ds, size, interpolation)
            values = list(dice.values())
            row = {"mean": statistics.mean(values), "median": statistics.median(values), "min": min(values),
                   "num_volumes": len(values), "per_patient": {c: round(d, 4) for c, d in sorted(dice.items())}}
            out["results"][f"{size}/{name}"] = row
            tqdm.write(f"{size}x{size} {name:14s} mean {row['mean']:.4f} median {row['median']:.4f} "
                       f"min {row['min']:.4f}")
    atomic_write_bytes(Path(args.output), (json.dumps(out, indent=1) + "\n").encode())
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
