"""Whole-image vs sliding-window vs flip-TTA prediction of one trained DRIVE run.

    python -m benchmarks.inference_modes --run runs/drive-unet --data-dir ../shared/data/DRIVE

For each mode, the run's predictor (``unet_jax.predictor``) segments the 20 DRIVE test
images as read from disk (preprocessing included, file reading and writing excluded). The
first image of each mode compiles and is timed apart; the remaining passes are timed per
image, modes interleaved round by round so that a noisy machine slows all of them alike,
and images/s is the inverse of the median per-image time. F1 (= Dice) and ROC AUC are
pooled over the FOV pixels of all test images (``unet_jax.evaluation.Evaluator``), at
the run's threshold, from the same predictions that were timed.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from benchmarks.timing import machine
from unet_jax.data.drive import read_drive_split, resolve_drive_dir
from unet_jax.evaluation import Evaluator
from unet_jax.predictor import load_predictor
from unet_jax.workdir import atomic_write_json

MODES = {
    "whole image": dict(),
    "sliding window 256, overlap 0.5, gaussian": dict(window=256, overlap=0.5, blend="gaussian"),
    "whole image + flip TTA (4 flips)": dict(tta=True),
}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m benchmarks.inference_modes", description=__doc__.split("\n")[0])
    p.add_argument("--run", required=True, help="a finished DRIVE training run (its --workdir)")
    p.add_argument("--data-dir", default=None, help="DRIVE folder (default: $UNET_JAX_DRIVE_DIR, ./data/DRIVE)")
    p.add_argument("--which", choices=["best", "final"], default="final",
                   help="checkpoint (final: the parameters of the run's headline test figures)")
    p.add_argument("--rounds", type=int, default=2, help="timed passes over the test images per mode")
    p.add_argument("--out", default=None, help="JSON file for the results")
    args = p.parse_args(argv)

    examples = read_drive_split(resolve_drive_dir(args.data_dir), "test")
    predictor = load_predictor(args.run, which=args.which)
    compile_s, times, evaluators = {}, {m: [] for m in MODES}, {}
    for mode, options in MODES.items():
        t = time.perf_counter()
        predictor(examples[0].image, **options)
        compile_s[mode] = time.perf_counter() - t
    for r in range(args.rounds):
        for mode, options in MODES.items():
            ev = Evaluator(predictor.num_classes, threshold=predictor.threshold)
            for ex in examples:
                t = time.perf_counter()
                probs = predictor(ex.image, **options)
                times[mode].append(time.perf_counter() - t)
                ev.add(ex, probs)
            evaluators[mode] = ev  # every round predicts the same; keep the last
            print(f"round {r + 1}: {mode}: {len(examples) / sum(times[mode][-len(examples):]):.2f} images/s",
                  flush=True)
    rows = {}
    for mode in MODES:
        s = evaluators[mode].result().summary
        rows[mode] = {"images_per_s": 1.0 / statistics.median(times[mode]),
                      "median_image_s": statistics.median(times[mode]), "first_image_s_with_compile": compile_s[mode],
                      "f1": s["dice"], "auc": s["auc"], "sensitivity": s["sensitivity"],
                      "specificity": s["specificity"], "accuracy": s["accuracy"]}
        print(f"{mode:45s} {rows[mode]['images_per_s']:6.2f} images/s  F1 {s['dice']:.4f}  AUC {s['auc']:.4f}  "
              f"(first image with compile {compile_s[mode]:.1f}s)")
    result = {
        "command": "python -m benchmarks.inference_modes " + " ".join(argv if argv is not None else []),
        "run": str(args.run), "checkpoint": args.which, "checkpoint_step": predictor.steps[0],
        "images": len(examples), "rounds": args.rounds, "modes": rows,
        "note": "DRIVE test set (20 images, 565x584), figures within the FOV pooled over all images; images/s "
                "from raw image in memory to probabilities at full size (preprocessing included, I/O excluded)",
        "machine": machine(),
    }
    if args.out:
        atomic_write_json(Path(args.out), result)
        print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
