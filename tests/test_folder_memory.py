"""Memory stays flat as a folder dataset grows: training reads images per access.

Peak RSS while iterating 200 batches over a folder of 2,000 images of 512x512 is within
1.2x of the same over 200 images. Held in memory as float32, the 2,000 images alone would
take 2 GB (and 200 of them 0.2 GB), so a source that cached them would fail this by far.
Each count runs in a fresh process (tests/_folder_memory_worker.py) so that its peak is
its own. The files are 8 distinct image/mask pairs, hard-linked under 2,000 names: every
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


def peak_rss(root: Path, cache_mb: int = 0) -> tuple[int, str]:
    out = subprocess.run([sys.executable, str(WORKER), str(root), str(BATCHES), str(cache_mb)],
                         capture_output=True, text=True, check=True, cwd=WORKER.parent.parent)
    rss, kind, _ = out.stdout.split()
    return int(rss), kind


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
    small, small_kind = peak_rss(make_folder(tmp_path / "n200", 200, originals))
    large, large_kind = peak_rss(make_folder(tmp_path / "n2000", 2000, originals))
    assert small_kind == large_kind == "MappedSource"  # read per access, not cached
    print(f"peak RSS: 200 images {small / 2**20:.0f} MiB, 2,000 images {large / 2**20:.0f} MiB")
    assert large <= 1.2 * small, (small, large)
