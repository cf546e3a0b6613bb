"""The web page (`python -m unet_jax.app`): its HTTP API, then the page in a real browser.

The server runs in a thread on a free port. The reference for what it sends is
`load_predictor(run)(image)` called directly and `unet_jax.visualize.tint`; the browser
test drives Debian's chromium through Selenium (skipped without it) and checks the
overlay it draws, after moving the threshold slider, pixel for pixel.

Environment: UNET_JAX_APP_RUN=RUN uses that run instead of the tiny one trained for the
session; UNET_JAX_APP_SCREENSHOT=PATH also saves the browser's screenshot of the segmented
DRIVE image there (docs/app.png).
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from unet_jax.app import make_server
from unet_jax.data.imageio import read_image
from unet_jax.predictor import Predictor, load_predictor
from unet_jax.visualize import tint

DRIVE = Path(os.environ.get("UNET_JAX_DRIVE_DIR", Path(__file__).parents[1] / ".." / "shared" / "data" / "DRIVE"))
IMAGE = DRIVE / "test" / "images" / "01_test.tif"
CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
needs_drive = pytest.mark.skipif(not IMAGE.is_file(), reason="DRIVE not found")
STEP = 1 / 255  # the page gets the probabilities as an 8-bit PNG


@pytest.fixture(scope="module")
def run(request) -> Path:
    if os.environ.get("UNET_JAX_APP_RUN"):
        return Path(os.environ["UNET_JAX_APP_RUN"])
    return request.getfixturevalue("run_dir")  # trained only when needed (tests/conftest.py)


@pytest.fixture(scope="module")
def model(request, run) -> Predictor:
    """load_predictor(run) (best checkpoint)."""
    if os.environ.get("UNET_JAX_APP_RUN"):
        return load_predictor(run)
    return request.getfixturevalue("predictor")  # loaded once per session (tests/conftest.py)


@pytest.fixture(scope="module")
def reference(model) -> np.ndarray:
    """The DRIVE image's probabilities, by calling the predictor directly (the server only
    shares the loaded model with it: decoding, quantising and encoding are the app's)."""
    return model(read_image(IMAGE))


@contextlib.contextmanager
def serving(predictor, **kwargs):
    server = make_server(predictor, port=0, **kwargs)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def post(server, body: bytes, name: str) -> tuple[int, dict]:
    req = urllib.request.Request(server.url + "api/predict?name=" + name, data=body, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def png(data_url: str, flags: int = cv2.IMREAD_UNCHANGED) -> np.ndarray:
    """A PNG data: URL decoded; colour ones as RGB(A)."""
    head, b64 = data_url.split(",", 1)
    assert head == "data:image/png;base64"
    img = cv2.imdecode(np.frombuffer(base64.b64decode(b64), np.uint8), flags)
    assert img is not None
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB) if img.ndim == 3 and img.shape[-1] == 3 else img


def encode(image: np.ndarray, ext: str) -> bytes:
    """An RGB/gray image in a file format, via Pillow (independent of the server's OpenCV)."""
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format={"ppm": "PPM", "gif": "GIF", "jpg": "JPEG", "png": "PNG"}[ext])
    return buf.getvalue()


def test_page_and_info(model):
    with serving(model, run="RUN", quiet=True) as server:
        with urllib.request.urlopen(server.url, timeout=30) as r:
            assert r.status == 200 and r.headers["Content-Type"].startswith("text/html")
            page = r.read().decode()
        assert 'type="file"' in page and 'id="threshold"' in page and "Download mask" in page
        with urllib.request.urlopen(server.url + "api/info", timeout=30) as r:
            info = json.loads(r.read())
        assert info["num_classes"] == 2 and info["threshold"] == model.threshold and info["run"] == "RUN"
        assert info["max_upload_bytes"] == 20 * 2**20
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(server.url + "nothing", timeout=30)
        assert e.value.code == 404


@needs_drive
def test_drive_image_probabilities_match_the_predictor(model, reference):
    image = read_image(IMAGE)
    with serving(model, quiet=True) as server:
        status, body = post(server, IMAGE.read_bytes(), IMAGE.name)
        assert status == 200, body
        prob = png(body["prob"])
        assert (body["width"], body["height"], body["num_classes"]) == (565, 584, 2)
        assert prob.shape == reference.shape == (584, 565) and prob.dtype == np.uint8
        # within one quantisation step of the probabilities (rounding: half a step)
        assert np.abs(prob / 255.0 - reference).max() <= STEP
        assert prob.std() > 0  # a real map, not a constant one
        np.testing.assert_array_equal(png(body["original"]), image)
        np.testing.assert_array_equal(png(body["base"]), tint(image, np.zeros(image.shape[:2]))[..., 0])

        # other formats of the same pixels: lossless ones give the same map; lossy ones a map
        pixels = {"png": encode(image, "png"), "ppm": encode(image, "ppm"),
                  "png16": encode(image[..., 1].astype(np.uint16) * 257, "png"),
                  "gif": encode(image, "gif"), "jpg": encode(image, "jpg")}
        for kind, data in pixels.items():
            status, body = post(server, data, f"01_test.{kind}")
            assert status == 200, (kind, body)
            got = png(body["prob"])
            assert got.shape == (584, 565), kind
            if kind in ("png", "ppm"):
                np.testing.assert_array_equal(got, prob, err_msg=kind)
            if kind == "png16":  # 16-bit: shown scaled to 8 bits
                np.testing.assert_array_equal(png(body["original"]), image[..., 1])


@needs_drive
def test_bad_uploads_are_clear_4xx_and_the_server_keeps_serving(model, tmp_path, capfd):
    good = IMAGE.read_bytes()
    whole = encode(read_image(IMAGE), "png")
    corrupt = bytearray(whole)
    corrupt[len(whole) // 2: len(whole) // 2 + 4000] = bytes(4000)  # zeroed IDAT bytes: CRC and zlib fail
    with serving(model, max_upload_mb=1) as server:
        status, body = post(server, b"patient notes, not a picture\n" * 40, "notes.txt")
        assert status == 415 and "notes.txt is not an image" in body["error"] and "text" in body["error"]
        status, body = post(server, os.urandom(2 * 2**20), "big.png")
        assert status == 413 and "big.png is 2.0 MB" in body["error"] and "limit is 1 MB" in body["error"]
        status, body = post(server, bytes(corrupt), "broken.png")
        assert status == 422 and "broken.png" in body["error"] and "PNG" in body["error"]
        assert "corrupt" in body["error"]
        status, body = post(server, whole[: len(whole) // 3], "cut.png")
        assert status == 422 and "cut.png" in body["error"]
        status, body = post(server, b"", "empty.png")
        assert status == 400 and "empty" in body["error"]
        status, body = post(server, good, IMAGE.name)
        assert status == 200 and body["width"] == 565
    log = capfd.readouterr().err
    for name in ("notes.txt", "big.png", "broken.png", "cut.png", "empty.png"):
        assert f"rejected '{name}'" in log

    with serving(model, quiet=True) as server:  # the default limit (20 MB) and a 50 MB body
        status, body = post(server, bytes(50 * 2**20), "huge.tif")
        assert status == 413 and "huge.tif is 50.0 MB" in body["error"] and "limit is 20 MB" in body["error"]
        status, body = post(server, good, IMAGE.name)
        assert status == 200


class ThreeClasses:
    """A multi-class run as the app sees it (Predictor's contract: (H, W, K) probabilities
    summing to 1); compiling a real 3-class network would cost more than the whole test."""

    steps, num_classes, threshold = (0,), 3, 0.5

    def __call__(self, image: np.ndarray, **options) -> np.ndarray:
        g = image.astype(np.float32).mean(axis=-1) / 255.0
        logits = np.stack([np.zeros_like(g), 4 * (g - 0.5), 4 * (0.5 - g) * np.cos(20 * g)], axis=-1)
        e = np.exp(logits - logits.max(axis=-1, keepdims=True))
        return e / e.sum(axis=-1, keepdims=True)


def test_multi_class_run_gets_its_argmax_class_map():
    image = np.random.default_rng(0).integers(0, 256, (40, 48, 3), dtype=np.uint8)
    probs = ThreeClasses()(image)
    pred = np.argmax(probs, axis=-1)
    assert set(np.unique(pred)) == {0, 1, 2}
    with serving(ThreeClasses(), quiet=True) as server:
        with urllib.request.urlopen(server.url + "api/info", timeout=30) as r:
            assert json.loads(r.read())["num_classes"] == 3
        status, body = post(server, encode(image, "png"), "x.png")
    assert status == 200 and body["num_classes"] == 3 and "base" not in body
    mask = png(body["mask"])
    assert mask.shape == (40, 48) and mask.dtype == np.uint8  # class ids, as the predict command writes
    np.testing.assert_array_equal(mask, pred)
    np.testing.assert_array_equal(png(body["overlay"]), tint(image, pred))
    assert np.abs(png(body["prob"]) / 255.0 - (1 - probs[..., 0])).max() <= STEP


@pytest.mark.slow
@needs_drive
@pytest.mark.skipif(not (CHROMIUM.is_file() and CHROMEDRIVER.is_file()),
                    reason="needs Debian's chromium and chromedriver (apt-get install chromium chromium-driver)")
def test_the_page_in_a_browser(run, model, reference, tmp_path):
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    downloads = tmp_path / "downloads"
    downloads.mkdir()
    opts = webdriver.ChromeOptions()
    opts.binary_location = str(CHROMIUM)
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--window-size=1500,900", f"--user-data-dir={tmp_path / 'profile'}"):
        opts.add_argument(flag)
    opts.add_experimental_option("prefs", {"download.default_directory": str(downloads),
                                           "download.prompt_for_download": False})
    image = read_image(IMAGE)
    text = tmp_path / "notes.txt"
    text.write_text("not an image\n")
    huge = tmp_path / "scan.tif"
    with huge.open("wb") as f:
        f.truncate(50 * 2**20)

    with serving(model, run=str(run)) as server:
        driver = webdriver.Chrome(service=webdriver.ChromeService(executable_path=str(CHROMEDRIVER)), options=opts)
        try:
            driver.execute_cdp_cmd("Page.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)})
            wait = WebDriverWait(driver, 60)

            def state(*wanted):
                wait.until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-state") in wanted)
                return driver.find_element(By.TAG_NAME, "body").get_attribute("data-state")

            def upload(path):
                driver.execute_script("document.body.dataset.state = 'sent'")
                driver.find_element(By.ID, "file").send_keys(str(Path(path).resolve()))  # chromedriver: no ".."
                return state("done", "error")

            def overlay():
                return png(driver.execute_script("return document.getElementById('overlay').toDataURL()"),
                           cv2.IMREAD_COLOR)

            def downloaded(name):
                target = downloads / name  # chromium writes NAME.crdownload, then renames it
                deadline = time.monotonic() + 30
                while not target.is_file() and time.monotonic() < deadline:
                    time.sleep(0.1)
                return target

            def message():
                return driver.find_element(By.ID, "message").text

            driver.get(server.url)
            state("ready")
            assert upload(IMAGE) == "done", message()
            prob = png(driver.find_element(By.ID, "prob").get_attribute("src"))
            assert prob.shape == (584, 565) and np.abs(prob / 255.0 - reference).max() <= STEP
            slider = driver.find_element(By.ID, "threshold")  # over grey levels 0..255
            level0 = int(slider.get_attribute("value"))
            # the run's threshold: level0 splits the grey levels as q / 255 >= threshold does, and the
            # mask is the predictor's p >= threshold but for p within half a grey level of it
            assert all((q >= level0) == (q / 255 >= model.threshold) for q in range(256))
            differ = (prob >= level0) != (reference >= model.threshold)
            assert np.all(np.abs(reference[differ] - model.threshold) <= STEP / 2 + 1e-6)
            first = overlay()
            # the page's overlay is visualize.tint of prob >= threshold, pixel for pixel
            np.testing.assert_array_equal(first, tint(image, prob >= level0))
            shot = tmp_path / "app.png"
            assert driver.save_screenshot(str(shot)) and Image.open(shot).size[0] > 0
            if os.environ.get("UNET_JAX_APP_SCREENSHOT"):
                target = Path(os.environ["UNET_JAX_APP_SCREENSHOT"])
                target.parent.mkdir(parents=True, exist_ok=True)
                assert driver.save_screenshot(str(target))

            # move the slider with the keyboard to the median grey level: a new mask, no new
            # request; pixels at exactly that level are in it (">=")
            level = int(np.sort(prob.ravel())[prob.size // 2])
            level = level + 1 if level == level0 else level
            slider.send_keys(Keys.HOME + Keys.ARROW_RIGHT * level)
            assert int(slider.get_attribute("value")) == level
            expected = prob >= level
            assert (expected != (prob >= level0)).any() and (prob == level).any()
            moved = overlay()
            assert (moved != first).any()
            np.testing.assert_array_equal(moved, tint(image, expected))

            driver.find_element(By.ID, "download").click()
            with Image.open(downloaded("01_test_mask.png")) as mask:
                assert mask.format == "PNG" and mask.mode == "L" and mask.size == (565, 584)
                np.testing.assert_array_equal(np.asarray(mask), expected.astype(np.uint8) * 255)

            assert upload(text) == "error"
            assert "notes.txt is not an image" in message() and "415" in message()
            assert not driver.find_element(By.ID, "results").is_displayed()
            assert upload(huge) == "error"
            assert "scan.tif is 50.0 MB" in message() and "upload limit is 20.0 MB" in message()
            assert upload(IMAGE) == "done"  # and it still works
            np.testing.assert_array_equal(overlay(), first)

            # a multi-class run: its argmax class map tinted, no slider, the class ids to download
            small = np.random.default_rng(0).integers(0, 256, (40, 48, 3), dtype=np.uint8)
            (tmp_path / "small.png").write_bytes(encode(small, "png"))
            pred = np.argmax(ThreeClasses()(small), axis=-1).astype(np.uint8)
            with serving(ThreeClasses(), run="three-classes") as other:
                driver.get(other.url)
                state("ready")
                assert upload(tmp_path / "small.png") == "done", message()
                assert not driver.find_element(By.ID, "threshold-row").is_displayed()
                np.testing.assert_array_equal(overlay(), tint(small, pred))
                driver.find_element(By.ID, "download").click()
                with Image.open(downloaded("small_mask.png")) as mask:
                    np.testing.assert_array_equal(np.asarray(mask), pred)

                # dropping a file on the drop zone segments it too (flipped: a new picture)
                driver.execute_script("document.body.dataset.state = 'sent'")
                driver.execute_script("""
                    const bytes = Uint8Array.from(atob(arguments[0]), (c) => c.charCodeAt(0));
                    const dt = new DataTransfer();
                    dt.items.add(new File([bytes], "dropped.png", {type: "image/png"}));
                    document.getElementById("drop").dispatchEvent(
                        new DragEvent("drop", {dataTransfer: dt, bubbles: true, cancelable: true}));
                    """, base64.b64encode(encode(small[::-1], "png")).decode())
                assert state("done", "error") == "done", message()
                assert "dropped.png" in message()
                np.testing.assert_array_equal(overlay(), tint(small[::-1], pred[::-1]))
        finally:
            driver.quit()
