"""The training recorder: metrics.jsonl and TensorBoard events, without importing PyTorch."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="torch not installed: nothing to avoid")
def test_records_are_written_and_torch_is_not_imported(tmp_path):
    # A fresh interpreter: this one may have imported torch already (the PyTorch-twin tests).
    loaded = "print(json.dumps(sorted(m for m in ('torch', 'tensorboardX') if m in sys.modules)))\n"
    code = (
        "import sys, json\n"
        "from unet_jax.training.recorder import Recorder\n"
        f"rec = Recorder({str(tmp_path)!r})\n"
        "rec.write({'split': 'train', 'step': 3, 'loss': 0.5, 'images_per_s': float('nan'), 'flag': True})\n"
        "rec.close()\n"
        + loaded
        + "import torch\n"  # torch stays importable afterwards
        + loaded
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    during, after = (json.loads(line) for line in out.stdout.splitlines()[-2:])
    assert during == ["tensorboardX"] and after == ["tensorboardX", "torch"]
    (record,) = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert record["step"] == 3 and record["loss"] == 0.5
    events = list((tmp_path / "tb").glob("events.out.tfevents.*"))
    assert len(events) == 1 and b"train/loss" in events[0].read_bytes()
    assert b"train/images_per_s" not in events[0].read_bytes() and b"train/flag" not in events[0].read_bytes()
