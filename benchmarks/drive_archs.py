"""Every architecture trained on DRIVE with one shared budget; test F1 and AUC within FOV.

    uv run python -m benchmarks.drive_archs --data-dir ../shared/data/DRIVE --steps 500

Each architecture runs `experiments.drive` in its own process (so timings do not share
a warm cache) with identical flags; results go to
benchmarks/results/drive_archs_cpu.json and a markdown table on stdout.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ARCHS = ["unet", "attention_unet", "unetpp", "resunet34"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", default=None)
    p.add_argument("--archs", nargs="+", default=ARCHS)
    p.add_argument("--steps", type=int, default=500)
    p.add_argument("--workroot", default="runs/drive_archs")
    p.add_argument("--out", default="benchmarks/results/drive_archs_cpu.json")
    p.add_argument("extra", nargs=argparse.REMAINDER, help="further flags for experiments.drive, after --")
    a = p.parse_args()
    extra = [x for x in a.extra if x != "--"]
    out = Path(a.out)
    rows = json.loads(out.read_text())["runs"] if out.exists() else []
    for arch in a.archs:
        wd = Path(a.workroot) / arch
        cmd = [sys.executable, "-m", "experiments.drive", "--arch", arch, "--steps", str(a.steps),
               "--eval-every", str(a.steps), "--workdir", str(wd), "--overwrite", "--no-progress", *extra]
        if a.data_dir:
            cmd += ["--data-dir", a.data_dir]
        print("$", " ".join(cmd), flush=True)
        t = time.perf_counter()
        subprocess.run(cmd, check=True)
        wall = time.perf_counter() - t
        r = json.loads((wd / "results.json").read_text())
        rows = [x for x in rows if x["arch"] != arch] + [{
            "arch": arch, "params": r["params"], "dataset": r["dataset"], "steps": a.steps,
            "f1": r["test"]["dice"], "auc": r["test"]["auc"], "sensitivity": r["test"]["sensitivity"],
            "specificity": r["test"]["specificity"], "accuracy": r["test"]["accuracy"],
            "train_images_per_s": r["train_images_per_s"], "wall_s": wall,
            "command": "python -m experiments.drive " + " ".join(cmd[3:]),
        }]
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({"device": r["device"], "runs": rows}, indent=2) + "\n")
    print("| arch | params | F1 | AUC | images/s | wall |\n|---|---:|---:|---:|---:|---:|")
    for x in rows:
        print(f"| {x['arch']} | {x['params']:,} | {x['f1']:.4f} | {x['auc']:.4f} | {x['train_images_per_s']:.1f} | {x['wall_s'] / 60:.1f} min |")


if __name__ == "__main__":
    main()
