"""A finished run as a model (`load_predictor`) and the predict command.

The run is a few steps on synthetic fundus images (no data needed); the predict command
runs on a real DRIVE test image when DRIVE is present (skipped otherwise): the
preprocessing (green channel, CLAHE) is the same, so the synthetic model accepts them.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import shutil
from pathlib import Path

import cv2
import jax
import numpy as np
import pytest

from unet_jax import metrics, predict
from unet_jax.data import get as get_dataset
from unet_jax.data.imageio import read_image, read_mask
from unet_jax.predictor import PredictorError, load_predictor
from unet_jax.visualize import to_uint8

DRIVE = Path(os.environ.get("UNET_JAX_DRIVE_DIR", Path(__file__).parents[1] / ".." / "shared" / "data" / "DRIVE"))
# run_dir, predictor (tests/conftest.py): a tiny run trained and loaded once per session,
# shared with test_app.


@pytest.mark.slow
def test_final_predictor_reproduces_the_runs_test_predictions(run_dir):
    predictor = load_predictor(run_dir, which="final")
    assert predictor.steps == (8,) and predictor.num_classes == 2 and predictor.threshold == 0.5
    assert predictor.describe() == {"run": str(run_dir), "checkpoint_step": 8}
    example = get_dataset("synthetic").test()[0]  # the run's test images, as stored
    probs = predictor(example.image)
    assert probs.shape == example.label.shape and probs.dtype == np.float32
    saved = cv2.imread(str(run_dir / "predictions" / f"{example.id}_prob.png"), cv2.IMREAD_GRAYSCALE)
    inside = example.valid > 0
    # the PNG holds round(255 p): the same probabilities agree to one grey level
    assert np.abs(to_uint8(probs)[inside].astype(int) - saved[inside]).max() <= 1
    # Horizontal-flip TTA: the mean of the model's probabilities on the input and on its
    # mirror image, mirrored back (float32 sums of two values in [0, 1]: 1e-6 holds anywhere).
    x = predictor.preprocess(example.image)
    plain = predictor.model_probs(x)
    expected = (plain + predictor.model_probs(x[:, ::-1])[:, ::-1]) / 2
    assert np.abs(expected - plain).max() > 1e-4  # the model alone is not mirror-symmetric
    np.testing.assert_allclose(predictor.model_probs(x, tta="hflip"), expected, rtol=0, atol=1e-6)


@pytest.mark.slow
def test_an_ensemble_predicts_the_mean_of_its_runs(run_dir, tmp_path):
    one = load_predictor(run_dir, which="final")
    state = one.states[0]
    # A second model: the same network with other weights (every parameter scaled).
    other = dataclasses.replace(one, states=(state.replace(params=jax.tree.map(lambda p: 1.5 * p, state.params)),))
    pair = dataclasses.replace(one, states=(state, other.states[0]), runs=("a", "b"))
    example = get_dataset("synthetic").test()[0]
    x = one.preprocess(example.image)
    p, q = one.model_probs(x), other.model_probs(x)
    assert np.abs(p - q).max() > 1e-3  # the two models differ
    # (p + q) / 2 of float32 values in [0, 1]: 1e-6 holds anywhere, as for TTA above.
    np.testing.assert_allclose(pair.model_probs(x), (p + q) / 2, rtol=0, atol=1e-6)
    assert pair.describe() == {"runs": ["a", "b"], "checkpoint_steps": [8, 8], "ensemble": "mean"}

    # The command with --run twice: a run and its copy, whose mean is the run's own prediction.
    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy)
    image, labels = tmp_path / "image.png", tmp_path / "labels"
    labels.mkdir()
    cv2.imwrite(str(image), example.image[..., ::-1])  # RGB -> BGR for OpenCV
    cv2.imwrite(str(labels / "image_mask.png"), 255 * example.label)
    out = tmp_path / "out"
    assert predict.main(["--run", str(run_dir), "--run", str(copy), str(image), "--labels", str(labels),
                         "--output", str(out), "--which", "final", "--no-progress"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["runs"] == [str(run_dir), str(copy)] and summary["checkpoint_steps"] == [8, 8]
    saved = cv2.imread(str(out / "image_prob.png"), cv2.IMREAD_GRAYSCALE)
    assert np.abs(saved.astype(int) - to_uint8(one(read_image(image))).astype(int)).max() <= 1
    # A run whose output is read otherwise (here: another threshold) is refused, naming both.
    cfg = json.loads((copy / "config.json").read_text())
    cfg["train"]["threshold"] = 0.3
    (copy / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(PredictorError, match=f"{copy} and {run_dir} differ in threshold"):
        load_predictor([run_dir, copy])
    assert predict.main(["--run", str(run_dir), "--run", str(copy), str(image), "--output", str(tmp_path / "o"),
                         "--no-progress"]) == 2


def test_a_folder_that_is_not_a_run_is_a_clear_error(tmp_path):
    with pytest.raises(PredictorError, match="config.json is missing"):
        load_predictor(tmp_path)
    assert predict.main(["--run", str(tmp_path), str(tmp_path), "--output", str(tmp_path / "o")]) == 2


@pytest.mark.slow
@pytest.mark.skipif(not (DRIVE / "test" / "images").is_dir(), reason="DRIVE not found")
def test_predict_drive_images_writes_files_and_metrics(run_dir, predictor, tmp_path):
    images = sorted((DRIVE / "test" / "images").glob("*.tif"))[:1]
    out = tmp_path / "out"
    argv = ["--run", str(run_dir), *map(str, images), "--output", str(out), "--labels",
            str(DRIVE / "test" / "1st_manual"), "--fov-masks", str(DRIVE / "test" / "mask"), "--no-progress"]
    assert predict.main(argv) == 0
    for image in images:
        for kind in ("prob", "pred", "overlay"):
            assert (out / f"{image.stem}_{kind}.png").is_file()
    rows = list(csv.DictReader((out / "per_image.csv").open()))
    assert [r["id"] for r in rows] == [p.stem for p in images]
    for image, row in zip(images, rows):  # the CSV is unet_jax.metrics on the same arrays
        probs = predictor(read_image(image))
        n = image.stem.split("_")[0]
        label = read_mask(DRIVE / "test" / "1st_manual" / f"{n}_manual1.gif") > 0
        fov = read_mask(DRIVE / "test" / "mask" / f"{image.stem}_mask.gif") > 0
        expected = metrics.dice(metrics.confusion_counts(probs, label, mask=fov))
        np.testing.assert_allclose(float(row["dice"]), float(expected), rtol=1e-6)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["images"] == 1 and summary["tta"] is False and 0 <= summary["test"]["dice"] <= 1

    # sliding windows over an image of another size, no labels: same files, the input's size
    assert predict.main(["--run", str(run_dir), str(images[0]), "--output", str(tmp_path / "sw"), "--window", "64",
                         "--scale", "0.5", "--no-progress"]) == 0
    pred = cv2.imread(str(tmp_path / "sw" / f"{images[0].stem}_pred.png"), cv2.IMREAD_GRAYSCALE)
    assert pred.shape == read_image(images[0]).shape[:2]
