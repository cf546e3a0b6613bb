"""Memory stays flat as a folder dataset grows: training reads images per access.

Peak RSS while iterating 200 batches over a folder of 2,000 images of 512x512 is within
1.2x of the same over 200 images. Held in memory as float32, the 2,000 images alone would
take 2 GB (and 200 of them 0.2 GB), so a source that cached them would fail this by far.
Each count runs in a fresh process (tests/_folder_memory_worker.py; the two side by side)
so that its peak is its own. The files are 8 distinct image/mask pairs, hard-linked under 2,000 names: every
access still opens and decodes a file, and the test does not write 1 GB of PNGs.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

WORKER = Path(__file__).with_name("_folder_memory_worker.py")
SIZE, BATCHES = 512, 200


def make_folder(root: Path, n: int, originals: list[tuple[Path, Path]]) -> Path:
    for split, count in (("train", n), ("test", 1)):
        (root / split / "images").mkdir(parents=True)
        (root / split / "labels").mkdir(parents=True)
        for i in range(count):
            image, mask = originals[i % len(originals)]
            os.link(image, root / split / "images" / f"{i:05d}.png")
            os.link(mask, root / split / "labels" / f"{i:05d}.png")
    return root


def peak_rss(*roots: Path) -> list[tuple[int, str]]:
    """(peak RSS in bytes, source type) of the worker on each folder, the workers run side by side."""
    procs = [subprocess.Popen([sys.executable, str(WORKER), str(root), str(BATCHES), "0"], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, cwd=WORKER.parent.parent) for root in roots]
    out = []
    for proc in procs:
        stdout, stderr = proc.communicate(timeout=600)
        assert proc.returncode == 0, stderr[-4000:]
        rss, kind, _ = stdout.split()
        out.append((int(rss), kind))
    return out


@pytest.mark.slow
def test_peak_memory_is_flat_in_the_number_of_images(tmp_path):
    rng = np.random.default_rng(0)
    originals = []
    for k in range(8):
        image, mask = tmp_path / f"orig{k}.png", tmp_path / f"orig{k}_mask.png"
        yy, xx = np.mgrid[:SIZE, :SIZE]
        cv2.imwrite(str(image), ((np.sin(xx / (9 + k)) + np.cos(yy / 7)) * 60 + 128 + rng.normal(0, 8, (SIZE, SIZE)))
                    .clip(0, 255).astype(np.uint8))
        cv2.imwrite(str(mask), ((xx + yy + 13 * k) % 40 < 6).astype(np.uint8))
        originals.append((image, mask))
    (small, small_kind), (large, large_kind) = peak_rss(make_folder(tmp_path / "n200", 200, originals),
                                                        make_folder(tmp_path / "n2000", 2000, originals))
    assert small_kind == large_kind == "MappedSource"  # read per access, not cached
    print(f"peak RSS: 200 images {small / 2**20:.0f} MiB, 2,000 images {large / 2**20:.0f} MiB")
    assert large <= 1.2 * small, (small, large)
