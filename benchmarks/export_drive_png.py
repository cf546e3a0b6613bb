"""DRIVE as image/mask PNG folders, to try `experiments.folder` on a public dataset.

    uv run python -m benchmarks.export_drive_png --data-dir ../shared/data/DRIVE --out /tmp/drive_png
    uv run python -m experiments.folder --root /tmp/drive_png --channels green --clahe --normalize unit \
        --workdir runs/folder-drive
    uv run python -m benchmarks.export_drive_png --out /tmp/drive_png --score runs/folder-drive

Writes OUT/{train,test}/images/<id>.png (the RGB fundus image), OUT/{train,test}/labels/
<id>.png (the first manual annotation, 0/255) and OUT/fov/<id>.png (DRIVE's field-of-view
mask, which the folder layout has no place for and the folder run never reads). Nothing is
copied into the repository: OUT is yours to choose.

The folder run scores every pixel of the image, the dark corners included; DRIVE's own
entry point scores within the FOV, as the DRIVE literature does. ``--score RUN_DIR``
recomputes the folder run's test F1 (Dice), sensitivity, specificity and accuracy within
the FOV from its saved ``predictions/<id>_pred.png``, so the two runs compare on the same
pixels, and writes them to RUN_DIR/fov_scores.json.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import cv2
import numpy as np

from unet_jax import metrics
from unet_jax.data.drive import read_drive_split, resolve_drive_dir
from unet_jax.workdir import atomic_write_json, atomic_write_png


def export(data_dir: Path, out: Path) -> dict[str, int]:
    """Writes the PNG folders; returns the number of images per split."""
    counts = {}
    for split, name in (("training", "train"), ("test", "test")):
        examples = read_drive_split(data_dir, split)
        for ex in examples:
            atomic_write_png(out / name / "images" / f"{ex.id}.png", ex.image)
            atomic_write_png(out / name / "labels" / f"{ex.id}.png", ex.label * np.uint8(255))
            atomic_write_png(out / "fov" / f"{ex.id}.png", ex.valid * np.uint8(255))
        counts[name] = len(examples)
    return counts


def _read(path: Path) -> np.ndarray:
    a = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if a is None:
        raise SystemExit(f"error: cannot read {path}: is it a test prediction of a run on {path.parents[2]}?")
    return a


def score(out: Path, run_dir: Path) -> dict[str, float]:
    """Pooled test figures within the FOV from the run's saved binary predictions."""
    per_image = []
    for label_path in sorted((out / "test" / "labels").glob("*.png")):
        pred = _read(run_dir / "predictions" / f"{label_path.stem}_pred.png") > 127
        label = _read(label_path) > 127
        fov = _read(out / "fov" / label_path.name) > 127
        per_image.append(metrics.confusion_counts(pred.astype(np.float32), label, mask=fov))
    if not per_image:
        raise SystemExit(f"error: no test labels in {out / 'test' / 'labels'}: run the export first")
    total = metrics.ConfusionCounts(*(np.sum([np.asarray(c[k], np.float64) for c in per_image])
                                      for k in range(4)))
    figures = {name: float(metrics.METRICS[name](total)) for name in ("dice", "sensitivity", "specificity",
                                                                       "accuracy", "iou")}
    return {**figures, "num_images": len(per_image), "pixels": "within the FOV, pooled over the test images"}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.export_drive_png", description=__doc__.split("\n")[0])
    p.add_argument("--data-dir", default=None, help="DRIVE (original layout); else $UNET_JAX_DRIVE_DIR, ./data/DRIVE")
    p.add_argument("--out", required=True, help="folder to write the PNG layout to")
    p.add_argument("--score", metavar="RUN_DIR", default=None,
                   help="instead of exporting: F1 within the FOV of a finished folder run on OUT")
    a = p.parse_args(argv)
    out = Path(a.out)
    if a.score:
        result = score(out, Path(a.score))
        atomic_write_json(Path(a.score) / "fov_scores.json", result)
        print(json.dumps(result, indent=2))
    else:
        counts = export(resolve_drive_dir(a.data_dir), out)
        print(f"wrote {counts['train']} training and {counts['test']} test images to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
