"""The cross-validated figure of runs that tested disjoint cases: per-volume Dice over all of them.

    python -m experiments.brain_mri --folds 5 --fold 0 ... --workdir runs/cv/fold0   # ... and folds 1-4
    python -m unet_jax.crossval runs/cv/fold0 runs/cv/fold1 runs/cv/fold2 runs/cv/fold3 runs/cv/fold4 \\
        --output runs/cv

Each RUN is a finished run folder of a volume dataset (LGG, NIfTI: its ``per_volume.csv``
and ``results.json``), or a ``per_volume.csv`` itself. No case may be a test case of two
runs. The figure is the mean and the median, over every test case of every run, of the
per-volume Dice with and without largest-component post-processing: each case weighs alike
whichever fold tested it, as in Buda et al.'s per-patient cross-validation (not the mean of
the folds' means, which weighs a fold's cases by 1 / its size). With ``--ignore-empty`` (the
default, MONAI's and training's convention) cases whose label is empty are left out.

Runs made with ``--folds K --fold i`` must agree on K and the split seed and have different
folds; the summary says how many of the K folds it holds (a partial cross-validation is
reported as such). Writes ``crossval.json``, ``per_volume.csv`` (every case, with its run)
and ``dsc.png`` to --output; prints one line per run and the total.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from unet_jax.data.base import DataError
from unet_jax.volumes import per_volume_figures

__all__ = ["FoldRun", "load_run", "summarize"]

REQUIRED = ("case", "dice", "dice_lcc", "label_voxels")


@dataclass
class FoldRun:
    """The test cases of one run: `rows` of its per_volume.csv (numbers parsed)."""

    name: str
    rows: list[dict[str, Any]]
    folds: int | None = None
    fold: int | None = None
    split_seed: int | None = None
    facts: dict[str, Any] = field(default_factory=dict)  # from the run's config, for the summary


def _number(text: str, path: Path, line: int, column: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise DataError(f"{path}, line {line}: column {column} holds {text!r}, not a number") from None


def read_per_volume(path: Path) -> list[dict[str, Any]]:
    """The rows of a per_volume.csv with Dice (a labelled test set), numbers as floats."""
    try:
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            columns = reader.fieldnames or []
            raw = list(reader)
    except OSError as e:
        raise DataError(f"cannot read {path}: {e}") from None
    missing = [c for c in REQUIRED if c not in columns]
    if missing:
        raise DataError(f"{path} lacks column(s) {', '.join(missing)}: not the per_volume.csv of a labelled test "
                        "set (a run's, or predict's with --labels / masks beside the slices)")
    if not raw:
        raise DataError(f"{path} holds no volumes")
    rows = []
    for line, r in enumerate(raw, start=2):
        row: dict[str, Any] = {"case": r["case"]}
        for c in columns:
            if c == "dice" or c == "dice_lcc" or c.startswith(("dice_class", "dice_lcc_class")):
                row[c] = _number(r[c], path, line, c)
            elif c.startswith("label_voxels"):
                row[c] = int(_number(r[c], path, line, c))
        rows.append(row)
    return rows


def load_run(path: str | Path) -> FoldRun:
    """A run folder (finished: results.json written) or a per_volume.csv, as a :class:`FoldRun`."""
    path = Path(path)
    if path.is_file():
        return FoldRun(name=str(path), rows=read_per_volume(path))
    if not path.is_dir():
        raise DataError(f"{path} does not exist (give run folders, or their per_volume.csv files)")
    if not (path / "results.json").is_file():
        raise DataError(f"{path} has no results.json: the run has not finished (resume it with its command and "
                        "--resume), or this is not a run folder")
    if not (path / "per_volume.csv").is_file():
        raise DataError(f"{path} has no per_volume.csv: its test set is not volumes (LGG patients, NIfTI cases)")
    run = FoldRun(name=str(path), rows=read_per_volume(path / "per_volume.csv"))
    config_path = path / "config.json"
    if config_path.is_file():
        try:
            config = json.loads(config_path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise DataError(f"cannot read {config_path}: {e}") from None
        options = config.get("data", {}).get("options", {})
        run.folds, run.fold, run.split_seed = options.get("folds"), options.get("fold"), options.get("split_seed")
        model = config.get("model", {})
        run.facts = {"dataset": config.get("data", {}).get("dataset"), "arch": model.get("arch"),
                     "features": model.get("features"), "split": options.get("split")}
    return run


def _check_folds(runs: list[FoldRun]) -> dict[str, Any]:
    """K, the folds held and the split seed of runs made with --folds (errors name the runs)."""
    folded = [r for r in runs if r.folds is not None]
    if not folded:
        return {}
    k = {(r.folds, r.split_seed) for r in folded}
    if len(k) > 1:
        raise DataError("the runs come from different cross-validations: "
                        + "; ".join(f"{r.name}: --folds {r.folds}, split seed {r.split_seed}" for r in folded))
    seen: dict[int, str] = {}
    for r in folded:
        if r.fold in seen:
            raise DataError(f"{seen[r.fold]} and {r.name} are both fold {r.fold}: give each fold once")
        seen[r.fold] = r.name
    folds, seed = k.pop()
    return {"folds": folds, "split_seed": seed, "folds_held": sorted(seen), "other_runs": len(runs) - len(folded)}


def summarize(runs: list[FoldRun], *, ignore_empty: bool = True) -> dict[str, Any]:
    """Mean and median per-volume Dice (with and without LCC) over every run's test cases.

    Raises DataError when a case is a test case of two runs or the runs' folds clash."""
    if not runs:
        raise DataError("no runs given")
    owner: dict[str, str] = {}
    for r in runs:
        for row in r.rows:
            if row["case"] in owner:
                raise DataError(f"case {row['case']} is a test case of both {owner[row['case']]} and {r.name}: "
                                "cross-validation needs disjoint test cases")
            owner[row["case"]] = r.name
    out: dict[str, Any] = _check_folds(runs)
    all_rows = [dict(row, run=r.name) for r in runs for row in r.rows]
    out.update(per_volume_figures(all_rows, ignore_empty=ignore_empty))  # the reporter's figures, over all runs
    out["num_volumes"] = len(all_rows)
    out["runs"] = [{"run": r.name, "fold": r.fold, "num_volumes": len(r.rows), **r.facts,
                    **per_volume_figures(r.rows, ignore_empty=ignore_empty)} for r in runs]
    out["ignore_empty"] = ignore_empty
    out["convention"] = ("every test case of every run weighs alike; per-volume Dice pools a case's voxels; "
                         + ("cases with an empty label left out (ignore_empty)" if ignore_empty
                            else "cases with an empty label kept as their runs scored them"))
    out["cases"] = all_rows
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m unet_jax.crossval", description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("runs", nargs="+", metavar="RUN", help="run folders (or their per_volume.csv), one per fold")
    p.add_argument("--output", default=None, help="folder for crossval.json, per_volume.csv and dsc.png "
                                                  "(default: print only)")
    p.add_argument("--ignore-empty", action=argparse.BooleanOptionalAction, default=True,
                   help="leave cases whose label is empty out of the mean and median")
    return p


def _report(summary: dict[str, Any]) -> str:
    lines = []
    for r in summary["runs"]:
        fold = "" if r["fold"] is None else f"fold {r['fold']}: "
        lines.append(f"{fold}{r['run']}: {r['num_volumes_scored']} cases, mean {r['dice_per_volume_mean']:.4f}, "
                     f"median {r['dice_per_volume_median']:.4f} (LCC {r['dice_per_volume_lcc_mean']:.4f} / "
                     f"{r['dice_per_volume_lcc_median']:.4f})")
    held = ""
    if "folds" in summary:  # runs with another split (a split file) may hold the missing folds' cases
        n, k, other = len(summary["folds_held"]), summary["folds"], summary["other_runs"]
        held = f" ({n} of {k} folds" + (f" and {other} run(s) with another split)" if other else
                                        ")" if n == k else ": a partial cross-validation)")
    lines.append(f"all {summary['num_volumes_scored']} cases{held}: mean {summary['dice_per_volume_mean']:.4f}, "
                 f"median {summary['dice_per_volume_median']:.4f} (LCC {summary['dice_per_volume_lcc_mean']:.4f} / "
                 f"{summary['dice_per_volume_lcc_median']:.4f})")
    return "\n".join(lines)


def write_outputs(summary: dict[str, Any], output: Path) -> None:
    """crossval.json, per_volume.csv (every case with its run) and dsc.png in `output`."""
    from unet_jax.volumes import plot_dsc, scored_volumes
    from unet_jax.workdir import atomic_write_csv, atomic_write_json

    output.mkdir(parents=True, exist_ok=True)
    cases = summary["cases"]
    columns = ["run", "case"] + [c for c in cases[0] if c not in ("run", "case")]
    atomic_write_csv(output / "per_volume.csv", [{c: row.get(c, "") for c in columns} for row in cases])
    scored = scored_volumes(cases, ignore_empty=summary["ignore_empty"])
    if scored:
        plot_dsc([row["case"] for row in scored], [row["dice"] for row in scored], output / "dsc.png",
                 dice_lcc=[row["dice_lcc"] for row in scored],
                 title=f"per-volume Dice, {len(scored)} test cases of {len(summary['runs'])} runs")
    atomic_write_json(output / "crossval.json", summary)  # last: its presence marks a complete summary


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        summary = summarize([load_run(r) for r in args.runs], ignore_empty=args.ignore_empty)
        if args.output:
            write_outputs(summary, Path(args.output))
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(_report(summary), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
