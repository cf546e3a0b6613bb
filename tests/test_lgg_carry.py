"""benchmarks.lgg_carry: the LGG set packed for a GPU machine and unpacked there gives the
model bit-identical input, and unpacking refuses what it cannot vouch for."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from benchmarks.lgg_carry import pack, unpack, zero_below_threshold
from unet_jax.config import PreprocessConfig
from unet_jax.data.imageio import read_image
from unet_jax.data.lgg import LggDataset

REPO = Path(__file__).resolve().parent.parent
LGG_DIR = REPO / ".." / "shared" / "data" / "lgg_mri" / "kaggle_3m"
REAL = ["TCGA_CS_4941_19960909", "TCGA_CS_4942_19970222"]
PRE = PreprocessConfig(channels="rgb", clahe=False, normalize="zscore", image_size=96)


def generated(root: Path, names: list[str], n: int = 4, size: int = 40) -> Path:
    """Patients in the Kaggle layout: a bright block (the brain) on noise below and above
    10% of the maximum, so the crop box and the zeroing both matter."""
    rng = np.random.default_rng(0)
    for name in names:
        (root / name).mkdir(parents=True)
        for k in range(1, n + 1):
            image = rng.integers(0, 40, (size, size, 3), dtype=np.uint8)
            image[6:30, 9:33] = rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)
            mask = np.zeros((size, size), np.uint8)
            mask[10:10 + 2 * k, 12:20] = 255
            assert cv2.imwrite(str(root / name / f"{name}_{k}.tif"), image)
            assert cv2.imwrite(str(root / name / f"{name}_{k}_mask.tif"), mask)
    return root


def assert_same_model_input(a: Path, b: Path) -> int:
    """Every slice of two kaggle_3m folders through LggDataset: equal bits, image and label."""
    ds_a, ds_b = (LggDataset(d, split="all", preprocess=PRE, progress=False) for d in (a, b))
    da, db = ds_a.test(), ds_b.test()
    assert len(da) == len(db) > 0
    for i in range(len(da)):
        xa, xb = ds_a.preprocess(da[i]), ds_b.preprocess(db[i])
        assert (xa.id, xa.case) == (xb.id, xb.case)
        assert xa.image.dtype == np.float32 and np.array_equal(xa.image, xb.image)
        assert np.array_equal(xa.label, xb.label)
    return len(da)


def test_generated_round_trip_in_two_parts_keeps_the_models_input(tmp_path):
    src = generated(tmp_path / "src", ["TCGA_AA_0001_20000101", "TCGA_AA_0002_20000101", "TCGA_AA_0003_20000101"])
    parts = pack(src, str(tmp_path / "carry"), 2, None, 1)
    assert [p.name for p in parts] == ["carry_1", "carry_2"]
    manifests = [json.loads((p / "manifest.json").read_text()) for p in parts]
    held = [e["patient"] for m in manifests for e in m["patients"]]
    assert sorted(held) == sorted(manifests[0]["all_patients"]) == sorted(p.name for p in src.iterdir())
    assert all(m["patients"] for m in manifests)  # both parts hold patients
    out = tmp_path / "out"
    for p in parts:
        unpack([p], out, 1)
    for patient in src.iterdir():
        originals = sorted(patient.glob("*_[0-9].tif"))
        volume = np.stack([read_image(f) for f in originals])
        expected = zero_below_threshold(volume)
        assert (expected != volume).any()  # the noise below 10% of the maximum was zeroed
        for f, e in zip(originals, expected):
            assert np.array_equal(read_image(out / patient.name / f.name), e)
            mask = f.with_name(f.stem + "_mask.tif")
            assert (out / patient.name / mask.name).read_bytes() == mask.read_bytes()
    assert assert_same_model_input(src, out) == 12


def test_unpack_refuses_a_missing_part_and_other_pixels(tmp_path):
    src = generated(tmp_path / "src", ["TCGA_AA_0001_20000101", "TCGA_AA_0002_20000101"])
    one, two = pack(src, str(tmp_path / "carry"), 2, None, 1)
    with pytest.raises(RuntimeError, match="lacks the files of 1 packed patient"):
        unpack([one], tmp_path / "out", 1, complete=True)
    assert len(unpack([two], tmp_path / "out", 1, complete=True)) == 1  # the earlier part counts
    with pytest.raises(RuntimeError, match="not a packed LGG part"):
        unpack([tmp_path / "src"], tmp_path / "elsewhere", 1)
    patient = json.loads((one / "manifest.json").read_text())["patients"][0]["patient"]
    coded = sorted((one / "data" / patient).glob("*.webp"))
    coded[0].write_bytes(coded[1].read_bytes())  # decodes fine, to another slice's pixels
    with pytest.raises(RuntimeError, match=f"{coded[0].name} decodes to other pixels"):
        unpack([one], tmp_path / "again", 1)
    coded[0].write_bytes(b"not an image")
    with pytest.raises(RuntimeError, match=f"cannot decode .*{coded[0].stem}"):
        unpack([one], tmp_path / "again", 1)


@pytest.mark.skipif(not all((LGG_DIR / p).is_dir() for p in REAL), reason=f"no LGG data at {LGG_DIR}")
def test_real_patients_round_trip_to_the_same_model_input(tmp_path):
    src = tmp_path / "lgg"
    src.mkdir()
    for p in REAL:  # linked, never copied
        (src / p).symlink_to((LGG_DIR / p).resolve(), target_is_directory=True)
    parts = pack(src, str(tmp_path / "carry"), 2, None, 2)
    unpack(parts, tmp_path / "out", 2, complete=True)
    packed = sum(f.stat().st_size for p in parts for f in (p / "data").rglob("*.webp"))
    stored = sum(f.stat().st_size for p in REAL for f in (LGG_DIR / p).glob("*_[0-9]*.tif") if "mask" not in f.name)
    assert packed < 0.5 * stored  # what lets the 50 patients travel in two calls
    assert assert_same_model_input(src, tmp_path / "out") > 0
