"""Where training metrics go: metrics.jsonl (one JSON line per record) and TensorBoard."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np

from unet_jax.workdir import JsonlWriter


def _summary_writer_class() -> type:
    """tensorboardX's SummaryWriter, imported without PyTorch where torch is not loaded yet.

    tensorboardX imports torch whenever it is installed, only to accept torch tensors (it
    imports it again when given one); that cost every training run 3.2 s and 200 MB of
    memory beside the bench extra's torch (measured)."""
    block = "torch" not in sys.modules
    if block:
        sys.modules["torch"] = None  # `import torch` raises ImportError while this is set
    try:
        from tensorboardX import SummaryWriter
    finally:
        if block:
            del sys.modules["torch"]
    return SummaryWriter


class Recorder:
    """Writes scalar records to `metrics.jsonl` and TensorBoard event files under `tb/`.

    A record is a flat dict with `split` ("train", "val" or "test") and `step`; every other
    numeric entry becomes a TensorBoard scalar named `split/key`.
    """

    def __init__(self, workdir: Path, *, append: bool = False, purge_step: int | None = None):
        """`append` continues an existing metrics.jsonl; `purge_step` makes TensorBoard drop
        earlier events at steps >= it (a resumed run re-logs the steps after its checkpoint)."""
        self.jsonl = JsonlWriter(Path(workdir) / "metrics.jsonl", append=append)
        self.tb = _summary_writer_class()(logdir=str(Path(workdir) / "tb"), flush_secs=30, purge_step=purge_step)

    def write(self, record: dict[str, Any]) -> None:
        self.jsonl.write(record)
        split, step = record["split"], int(record["step"])
        for key, value in record.items():
            # Not-yet-defined figures (images/s before any timed interval) are NaN: the
            # JSON line keeps them, TensorBoard gets no point; flags are not figures.
            numeric = isinstance(value, (int, float, np.floating)) and not isinstance(value, bool)
            if key not in ("split", "step") and numeric and np.isfinite(value):
                self.tb.add_scalar(f"{split}/{key}", float(value), step)

    def image(self, tag: str, image: np.ndarray, step: int) -> None:
        """Adds an (H, W, 3) uint8 or (H, W) image to TensorBoard."""
        self.tb.add_image(tag, image if image.ndim == 3 else image[..., None], step, dataformats="HWC")

    def close(self) -> None:
        self.jsonl.close()
        self.tb.close()
