"""The files a run writes, written so that an interrupted run never looks complete.

Every whole-file write goes to a temporary file in the same folder and is renamed into
place (atomic on POSIX), so a crash leaves either the old file or the new one. A run's
`results.json` is written last: its presence is what marks a run as finished.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterable

import cv2
import numpy as np


class WorkdirError(Exception):
    """The work directory cannot be used (e.g. it already holds another run)."""


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n").encode())


def atomic_write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_bytes(path, buf.getvalue().encode())


def atomic_write_png(path: Path, image: np.ndarray) -> None:
    """Writes a uint8 grayscale (H,W) or RGB (H,W,3) image."""
    if image.ndim == 3:
        image = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(".png", image)
    if not ok:
        raise OSError(f"could not encode PNG for {path}")
    atomic_write_bytes(path, buf.tobytes())


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def prepare_workdir(path: Path, *, overwrite: bool = False, resume: bool = False) -> Path:
    """Creates the work directory; refuses one that already holds a run unless `overwrite`.

    Refusing protects a finished run's results and checkpoints from a mistyped command.
    `resume` accepts the folder of an unfinished run as it is (the caller checks that the
    run is compatible and restores it).
    """
    path = Path(path)
    if overwrite and resume:
        raise WorkdirError("--overwrite and --resume exclude each other")
    if path.exists() and not path.is_dir():
        raise WorkdirError(f"--workdir {path} exists and is not a directory")
    if resume:
        if (path / "results.json").exists():
            raise WorkdirError(f"--workdir {path} holds a finished run (results.json); there is nothing to resume")
        if not (path / "config.json").exists():
            raise WorkdirError(f"--resume: --workdir {path} holds no run to resume (no config.json)")
        return path
    if path.exists() and any(path.iterdir()) and not overwrite:
        raise WorkdirError(
            f"--workdir {path} already holds a run (found {', '.join(sorted(p.name for p in path.iterdir())[:4])}); "
            "choose another --workdir, pass --resume to continue an interrupted run, or --overwrite to replace it"
        )
    path.mkdir(parents=True, exist_ok=True)
    if overwrite:
        (path / "results.json").unlink(missing_ok=True)
        # The old run's checkpoints would otherwise pass for this run's (and --resume from them).
        shutil.rmtree(path / "checkpoints", ignore_errors=True)
    return path


class JsonlWriter:
    """Appends one JSON record per line; each line is flushed so a crash loses at most one."""

    def __init__(self, path: Path, append: bool = False):
        self.path = Path(path)
        self._f = open(self.path, "a" if append else "w", buffering=1)

    def write(self, record: dict[str, Any]) -> None:
        self._f.write(json.dumps(record, default=_json_default) + "\n")

    def close(self) -> None:
        self._f.close()


def read_jsonl(path: Path) -> Iterable[dict[str, Any]]:
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line:
                yield json.loads(line)
