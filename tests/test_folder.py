"""The image/mask folder dataset on small generated folders: layouts, pairing, splits,
bad input (each a clear error naming the file or flag), and a few-step multi-class run."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from experiments import folder as folder_cli
from unet_jax import data
from unet_jax.data import DataError
from unet_jax.data.folder import FolderDataset
from unet_jax.predictor import load_predictor

SIZES = [(40, 56), (48, 48), (33, 61), (64, 40), (52, 52), (36, 44)]  # (H, W), all different


def _write(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), array)
    return path


def make_folder(root: Path, *, classes: int = 2, binary_255: bool = False, bit16: bool = False,
                rgb: bool = False, mask_suffix: str = "", n: int = len(SIZES), seed: int = 0,
                split: bool = True) -> dict[str, np.ndarray]:
    """Images and masks of mixed sizes; returns id -> label (class ids).

    `split`: ROOT/{train,test}/{images,labels} (the last two images are the test split),
    else ROOT/images + ROOT/masks.
    """
    rng = np.random.default_rng(seed)
    labels = {}
    for i in range(n):
        h, w = SIZES[i % len(SIZES)]
        label = rng.integers(0, classes, (h, w)).astype(np.uint8)
        label[0, 0] = classes - 1  # every class appears, so the class count is found
        dtype, top = (np.uint16, 65535) if bit16 else (np.uint8, 255)
        image = (rng.random((h, w, 3) if rgb else (h, w)) * top).astype(dtype)
        sub = ("test" if i >= n - 2 else "train") if split else ""
        _write(root / sub / "images" / f"img{i:02d}.png", image)
        name = "labels" if split else "masks"
        _write(root / sub / name / f"img{i:02d}{mask_suffix}.png", label * 255 if binary_255 else label)
        labels[f"img{i:02d}"] = label
    return labels


def test_split_layout_pairs_every_file_and_reads_what_was_written(tmp_path):
    labels = make_folder(tmp_path, classes=3, bit16=True)
    ds = data.get("folder", root=tmp_path, progress=False)
    assert ds.num_classes == 3 and len(ds.train()) == 4 and len(ds.test()) == 2
    assert ds.stored_channels() == "gray"
    for source in (ds.train(), ds.test()):
        for i in range(len(source)):
            ex = source[i]
            np.testing.assert_array_equal(ex.label, labels[ex.id])
            assert ex.image.dtype == np.uint16 and ex.image.shape == labels[ex.id].shape
    assert {ds.test()[i].id for i in range(2)} == {"img04", "img05"}


def test_binary_255_masks_become_0_1_and_rgb_is_detected(tmp_path):
    labels = make_folder(tmp_path, binary_255=True, rgb=True, mask_suffix="_mask")
    ds = FolderDataset(root=tmp_path, progress=False)
    assert ds.num_classes == 2 and ds.mask_suffix == "_mask" and ds.stored_channels() == "rgb"
    ex = ds.train()[0]
    np.testing.assert_array_equal(ex.label, labels[ex.id])
    assert set(np.unique(ex.label)) <= {0, 1}


def test_preprocess_resizes_and_normalises(tmp_path):
    from unet_jax.config import PreprocessConfig

    labels = make_folder(tmp_path, bit16=True)
    ds = FolderDataset(root=tmp_path, progress=False)
    raw = ds.train()[0]
    zscore = ds.with_preprocess(PreprocessConfig(channels="gray", clahe=False, normalize="zscore"))
    image = zscore.preprocess(raw).image.astype(np.float64)
    expected = (raw.image - raw.image.mean()) / raw.image.std()  # float64 reference
    # float32 output of values |x| < 4: each within 4 * 2**-24 of the reference
    np.testing.assert_allclose(image[..., 0], expected, rtol=0, atol=1e-6)
    resized = ds.with_preprocess(PreprocessConfig(channels="gray", clahe=False, normalize="unit", image_size=32))
    ex = resized.preprocess(raw)
    assert ex.image.shape == (32, 32, 1) and ex.label.shape == (32, 32)
    assert 0.0 <= ex.image.min() and ex.image.max() <= 1.0  # 16-bit divided by 65535
    assert set(np.unique(ex.label)) <= set(np.unique(labels[raw.id]))  # nearest: no invented classes


def test_images_and_masks_split_is_seeded_and_disjoint(tmp_path):
    make_folder(tmp_path, split=False, n=10)

    def ids(seed):
        ds = data.get("folder", images=tmp_path / "images", masks=tmp_path / "masks", test_fraction=0.3,
                      split_seed=seed, progress=False)
        return ([ds.train()[i].id for i in range(len(ds.train()))], [ds.test()[i].id for i in range(len(ds.test()))])

    train, test = ids(0)
    assert len(test) == 3 and len(train) == 7 and not set(train) & set(test)
    assert sorted(train + test) == [f"img{i:02d}" for i in range(10)]
    assert ids(0) == (train, test)  # deterministic
    assert ids(1)[1] != test  # and the seed matters
    # ROOT with images/ + masks/ is the same dataset as the two folders
    ds = data.get("folder", root=tmp_path, test_fraction=0.3, split_seed=0, progress=False)
    assert [ds.test()[i].id for i in range(3)] == test


@pytest.mark.parametrize(
    "break_it, kwargs, message",
    [
        (lambda r: (r / "train/labels/img01.png").unlink(), {}, "img01.png"),  # image without mask
        (lambda r: shutil.copy(r / "train/labels/img00.png", r / "train/labels/extra.png"), {}, "extra.png"),
        (lambda r: _write(r / "train/labels/img02.png", np.zeros((10, 10), np.uint8)), {}, "img02.png"),  # size
        (lambda r: _write(r / "train/labels/img03.png", np.resize(np.array([0, 128, 255], np.uint8), SIZES[3])),
         {}, "JPEG"),  # 0/128/255 values: not classes
        (lambda r: (r / "train/images/img00.png").write_bytes(b"not a png"), {}, "img00.png"),  # unreadable
        (lambda r: [p.unlink() for p in (r / "test/images").iterdir()], {}, "holds no images"),  # empty folder
        (lambda r: None, {"classes": 2}, "--classes 2"),  # smaller than the largest label value
        (lambda r: None, {"classes": 1}, "--classes 1"),
    ],
    ids=["image-without-mask", "mask-without-image", "size-mismatch", "jpeg-values", "unreadable", "empty-folder",
         "classes-too-small", "one-class"],
)
def test_bad_input_names_the_file_or_flag(tmp_path, break_it, kwargs, message):
    make_folder(tmp_path, classes=3)
    break_it(tmp_path)
    with pytest.raises(DataError, match=message.replace("-", r"\-")):
        FolderDataset(root=tmp_path, progress=False, **kwargs)


def test_unpaired_files_are_listed_up_to_ten(tmp_path):
    make_folder(tmp_path, split=False, n=2)
    for i in range(12):
        _write(tmp_path / "images" / f"orphan{i:02d}.png", np.zeros((4, 4), np.uint8))
    with pytest.raises(DataError) as err:
        FolderDataset(images=tmp_path / "images", masks=tmp_path / "masks", progress=False)
    text = str(err.value)
    assert "12 image(s)" in text and "orphan09.png" in text and "orphan10.png" not in text and "2 more" in text


def test_empty_test_split_is_an_error(tmp_path):
    make_folder(tmp_path, split=False, n=3)
    with pytest.raises(DataError, match="--test-fraction 0.1"):
        FolderDataset(root=tmp_path, test_fraction=0.1, progress=False)


def test_palette_masks_give_their_indices(tmp_path):
    make_folder(tmp_path, split=False, n=2)
    label = np.array([[0, 1], [2, 1]], np.uint8).repeat(20, 0).repeat(28, 1)  # 40x56, like img00
    im = Image.fromarray(label, mode="P")
    im.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0] + [0] * 759)  # colours for the eye, indices for training
    im.save(tmp_path / "masks" / "img00.png")
    _write(tmp_path / "masks" / "img01.png", np.full((48, 48), 2, np.uint8))
    ds = FolderDataset(root=tmp_path, test_fraction=0.5, progress=False)
    ex = next(s[0] for s in (ds.train(), ds.test()) if s[0].id == "img00")
    np.testing.assert_array_equal(ex.label, label)
    assert ds.num_classes == 3


@pytest.mark.slow
def test_multiclass_run_writes_results(tmp_path):
    make_folder(tmp_path / "d", classes=3, bit16=True)
    wd = tmp_path / "run"
    argv = ["--root", str(tmp_path / "d"), "--features", "4", "--depth", "2", "--patch-size", "32",
            "--batch-size", "4", "--steps", "6", "--warmup-steps", "2", "--eval-every", "3", "--log-every", "3",
            "--val-size", "1", "--no-progress", "--workdir", str(wd)]
    assert folder_cli.main(argv) == 0
    results = json.loads((wd / "results.json").read_text())
    assert results["dataset"] == "folder" and results["data"]["num_test"] == 2
    test = results["test"]
    for key in ("dice", "dice_class1", "dice_class2", "dice_per_case_mean", "dice_class2_per_case_median"):
        assert 0.0 <= test[key] <= 1.0
    np.testing.assert_allclose(test["dice"], (test["dice_class1"] + test["dice_class2"]) / 2, rtol=1e-12)
    rows = (wd / "per_image.csv").read_text().splitlines()
    assert len(rows) == 3 and {"dice_class1", "dice_class2"} <= set(rows[0].split(","))
    config = json.loads((wd / "config.json").read_text())
    assert config["data"]["options"]["classes"] == 3 and config["data"]["preprocess"]["channels"] == "gray"
    pred = cv2.imread(str(next((wd / "predictions").glob("img04*_pred.png"))), cv2.IMREAD_UNCHANGED)
    assert pred.shape[:2] == SIZES[4]  # predicted at the image's own size
    predictor = load_predictor(wd, which="final")  # the run loads as a model without its data
    probs = predictor(cv2.imread(str(tmp_path / "d" / "test" / "images" / "img04.png"), cv2.IMREAD_UNCHANGED))
    assert probs.shape == (*SIZES[4], 3)
    top2 = np.sort(probs, axis=-1)[..., -2:]
    clear = top2[..., 1] - top2[..., 0] > 1e-4  # pixels whose class no rounding can flip
    assert clear.mean() > 0.5
    np.testing.assert_array_equal(probs.argmax(-1)[clear], pred[clear])
