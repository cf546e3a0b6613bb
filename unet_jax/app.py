"""Try a trained run in the browser: a local web page that segments the images you drop on it.

    python -m unet_jax.app --run runs/drive-unet-...            # then open http://127.0.0.1:8000/
    python -m unet_jax.app --run RUN --which final --port 8080 --tta flip --max-upload-mb 50
    python -m unet_jax.app --run RUN_A --run RUN_B     # an ensemble: the mean of the runs' probabilities

Upload or drop an image (PNG, JPEG, TIFF, BMP, GIF, PPM/PGM: whatever
``unet_jax.data.imageio`` reads); the page shows the original, the foreground probability
map and the mask tinted on the image side by side. For a binary run a threshold slider
recomputes mask and overlay in the browser from the probability map (sent as an 8-bit PNG:
the slider moves in steps of 1/255) without running the network again, and "Download
mask" saves the mask (0/255, the image's own size) as PNG. A multi-class run shows its
argmax class map tinted and offers it (class ids) for download; there is no slider.

The model is loaded and compiled once at start and stays loaded; predictions run one at a
time (a lock), each new image size compiles once more (jit caches by shape). Only the
standard library's HTTP server is used. It listens on 127.0.0.1 unless --host says
otherwise: there is no authentication, so anyone who can reach the port can use the model.

API (what the page uses): ``GET /api/info`` (JSON: the run), ``POST /api/predict?name=FILE``
with the file's bytes as body (JSON: base64 PNGs; errors are 4xx with ``{"error": ...}``).
"""

from __future__ import annotations

import argparse
import base64
import codecs
import http.server
import importlib.resources
import json
import math
import os
import sys
import tempfile
import threading
import time
import traceback
import urllib.parse
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from unet_jax.data.base import DataError
from unet_jax.data.imageio import read_image
from unet_jax.predict import add_inference_args, inference_options

__all__ = ["UploadError", "decode_upload", "make_server", "main", "predict_payload"]

DEFAULT_MAX_UPLOAD_MB = 20.0
# A body over the limit is still read (and dropped) up to this size, so that the browser
# receives the 413 instead of a connection reset; beyond it the connection is just closed.
_DRAIN_LIMIT = 1 << 30
_SIGNATURES = [  # first bytes of the formats we read, to tell "corrupt" from "not an image"
    (b"\x89PNG\r\n\x1a\n", "PNG"), (b"\xff\xd8\xff", "JPEG"), (b"GIF87a", "GIF"), (b"GIF89a", "GIF"),
    (b"II*\x00", "TIFF"), (b"MM\x00*", "TIFF"), (b"II+\x00", "TIFF"), (b"BM", "BMP"),
    *((f"P{i}".encode(), "PPM/PGM") for i in range(1, 7)),
]
FORMATS = "PNG, JPEG, TIFF, BMP, GIF, PPM/PGM"


class UploadError(Exception):
    """An upload the page cannot segment: `status` is the HTTP status to answer with."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def _sniff(data: bytes) -> str | None:
    for magic, name in _SIGNATURES:
        if data.startswith(magic):
            return name
    return None


def decode_upload(data: bytes, name: str = "upload") -> np.ndarray:
    """An uploaded file's bytes as :func:`unet_jax.data.imageio.read_image` returns them.

    Raises :class:`UploadError` (400 empty, 415 not an image / unsupported pixels, 422
    corrupt) with a message naming the file and the problem.
    """
    if not data:
        raise UploadError(400, f"{name} is empty (0 bytes)")
    # read_image decodes from a path (OpenCV, then Pillow for GIF): reuse it via a temp file
    # so that the page reads exactly what the predict command reads.
    fd, tmp = tempfile.mkstemp(prefix="unet_jax_upload_")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        image = read_image(Path(tmp))
    except DataError as e:
        kind = _sniff(data)
        if not str(e).startswith("Cannot"):  # decoded, but e.g. a float TIFF: pixels we do not take
            raise UploadError(415, str(e).replace(tmp, name)) from None
        if kind is not None:
            raise UploadError(422, f"{name} starts like a {kind} file but cannot be decoded: "
                                   "it is corrupt or truncated") from None
        looks = " (it looks like text)" if _is_text(data) else ""
        raise UploadError(415, f"{name} is not an image this page can read{looks}; "
                               f"supported formats: {FORMATS}") from None
    finally:
        os.unlink(tmp)
    return image


def _is_text(data: bytes) -> bool:
    head = data[:4096]
    try:  # incremental: a character cut at the 4096th byte is not an error
        codecs.getincrementaldecoder("utf-8")().decode(head, final=False)
    except UnicodeDecodeError:
        return False
    return b"\x00" not in head


def _png_data_url(image: np.ndarray) -> str:
    """uint8 (H, W) gray or (H, W, 3/4) RGB(A) as a data: URL (lossless)."""
    if image.ndim == 3:
        image = cv2.cvtColor(image, cv2.COLOR_RGB2BGR if image.shape[-1] == 3 else cv2.COLOR_RGBA2BGRA)
    ok, buf = cv2.imencode(".png", image)
    if not ok:
        raise RuntimeError("PNG encoding failed")
    return "data:image/png;base64," + base64.b64encode(buf.tobytes()).decode("ascii")


def _display(image: np.ndarray) -> np.ndarray:
    """The image as a browser shows it: 8 bits (16-bit images scaled), gray or RGB(A)."""
    if image.dtype == np.uint16:
        image = np.rint(image / 257.0).astype(np.uint8)
    return image[..., 0] if image.ndim == 3 and image.shape[-1] == 1 else image


def predict_payload(probs: np.ndarray, image: np.ndarray) -> dict[str, Any]:
    """The JSON the page draws from: probabilities (H, W) or (H, W, K) and their image.

    Keys: width, height, num_classes, ``original`` (PNG), ``prob`` (8-bit PNG, the
    foreground probability x 255 rounded, as the predict command's ``_prob.png``),
    binary: ``base`` (the grey picture that :func:`unet_jax.visualize.tint` tints: the page
    blends it with red where prob >= threshold); multi-class: ``overlay`` (the argmax
    tinted) and ``mask`` (class ids).
    """
    from unet_jax.visualize import tint, to_uint8

    h, w = image.shape[:2]
    binary = probs.ndim == 2
    out: dict[str, Any] = {"width": w, "height": h, "num_classes": 2 if binary else int(probs.shape[-1]),
                           "original": _png_data_url(_display(image)),
                           "prob": _png_data_url(to_uint8(probs if binary else 1.0 - probs[..., 0]))}
    if binary:
        # tint() of an empty mask is its grey picture; the page does the tinting for any threshold
        out["base"] = _png_data_url(tint(image, np.zeros((h, w), np.uint8))[..., 0])
    else:
        pred = np.argmax(probs, axis=-1).astype(np.uint8)
        out["overlay"] = _png_data_url(tint(image, pred))
        out["mask"] = _png_data_url(pred)
    return out


class _Handler(http.server.BaseHTTPRequestHandler):
    server: "AppServer"
    server_version = "unet-jax-app"

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        path = urllib.parse.urlsplit(self.path).path
        if path in ("/", "/index.html"):
            self._send(200, self.server.page, "text/html; charset=utf-8")
        elif path == "/api/info":
            self._json(200, self.server.info)
        else:
            self._json(404, {"error": f"no page {path}"})

    def do_POST(self) -> None:  # noqa: N802
        url = urllib.parse.urlsplit(self.path)
        if url.path != "/api/predict":
            self._json(404, {"error": f"no endpoint {url.path}"})
            return
        name = urllib.parse.parse_qs(url.query).get("name", ["upload"])[0][:200] or "upload"
        try:
            data = self._read_body(name)
            t0 = time.perf_counter()
            image = decode_upload(data, name)
            with self.server.lock:  # one prediction at a time: the model is shared and uses all cores
                probs = self.server.predictor(image, **self.server.options)
            seconds = time.perf_counter() - t0
            payload = predict_payload(probs, image)
        except UploadError as e:
            self.log_message("rejected %r: %s", name, e)
            self._json(e.status, {"error": str(e)})
            return
        except Exception as e:  # noqa: BLE001 - a bad image must not stop the server
            self.log_message("error on %r: %s", name, traceback.format_exc())
            self._json(500, {"error": f"{name}: prediction failed ({type(e).__name__}: {e})"})
            return
        threshold = self.server.info["threshold"]
        # the page thresholds round(255 p) >= level: the run's p >= threshold is level = ceil(255 threshold)
        payload.update(name=name, seconds=round(seconds, 3), threshold=threshold,
                       threshold_level=int(math.ceil(threshold * 255 - 1e-9)))
        self.log_message("segmented %r (%dx%d) in %.2fs", name, image.shape[1], image.shape[0], seconds)
        self._json(200, payload)

    def _read_body(self, name: str) -> bytes:
        length = self.headers.get("Content-Length")
        if length is None or not length.isdigit():
            self.close_connection = True
            raise UploadError(411, "the upload has no Content-Length; send the file as the request body")
        length, limit = int(length), self.server.max_upload_bytes
        if length > limit:
            if length <= _DRAIN_LIMIT:  # read and drop it, or the client sees a reset, not our message
                left = length
                while left > 0 and (chunk := self.rfile.read(min(left, 1 << 20))):
                    left -= len(chunk)
            else:
                self.close_connection = True
            raise UploadError(413, f"{name} is {length / 2**20:.1f} MB; the upload limit is "
                                   f"{limit / 2**20:g} MB (start the app with --max-upload-mb to raise it)")
        data = self.rfile.read(length)
        if len(data) != length:
            raise UploadError(400, f"{name}: the upload was cut off ({len(data)} of {length} bytes)")
        return data

    def _json(self, status: int, obj: dict) -> None:
        self._send(status, json.dumps(obj).encode(), "application/json")

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - http.server's signature
        if not self.server.quiet:
            super().log_message(format, *args)


class AppServer(http.server.ThreadingHTTPServer):
    """The app's HTTP server; holds the predictor, its options and the prediction lock."""

    daemon_threads = True  # a hung browser connection must not keep the process alive

    def __init__(self, address: tuple[str, int], predictor: Any, *, options: dict[str, Any],
                 max_upload_bytes: int, run: str, quiet: bool = False):
        super().__init__(address, _Handler)
        self.predictor = predictor
        self.options = options
        self.max_upload_bytes = max_upload_bytes
        self.quiet = quiet
        self.lock = threading.Lock()
        self.page = importlib.resources.files("unet_jax").joinpath("app_page.html").read_bytes()
        self.info = {"run": run, "step": ", ".join(map(str, predictor.steps)), "num_classes": predictor.num_classes,
                     "threshold": predictor.threshold, "max_upload_bytes": max_upload_bytes,
                     "options": {k: v for k, v in options.items()}}

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{'[' + host + ']' if ':' in host else host}:{port}/"


def make_server(predictor: Any, *, host: str = "127.0.0.1", port: int = 8000,
                max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB, options: dict[str, Any] | None = None,
                run: str = "", quiet: bool = False) -> AppServer:
    """The app's server for a loaded :class:`unet_jax.predictor.Predictor` (not yet serving:
    call ``serve_forever()``). ``port=0`` picks a free port (see ``.url``). `options` are
    the predictor's keyword arguments (tta, window, overlap, blend, scale)."""
    return AppServer((host, port), predictor, options=dict(options or {}),
                     max_upload_bytes=int(max_upload_mb * 2**20), run=run, quiet=quiet)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m unet_jax.app", description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--run", required=True, action="append", help="the training run's folder (its --workdir); "
                   "repeated (--run A --run B): their ensemble, the mean of their probabilities")
    p.add_argument("--which", choices=["best", "final"], default="best", help="which checkpoint of the run")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    p.add_argument("--port", type=int, default=8000, help="port (0: any free port)")
    p.add_argument("--max-upload-mb", type=float, default=DEFAULT_MAX_UPLOAD_MB, help="largest upload accepted")
    add_inference_args(p)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from unet_jax.predictor import PredictorError, load_predictor
    from unet_jax.training.checkpoint import CheckpointError

    t0 = time.perf_counter()
    runs = ", ".join(args.run)
    try:
        predictor = load_predictor(args.run, which=args.which)
    except (PredictorError, CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    options = {**inference_options(args), "scale": args.scale}
    # Compile now (at one size) so that a broken run fails here, not on the first upload;
    # a run trained on volumes refuses single images here, with what it predicts instead.
    try:
        predictor(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8), **options)
    except PredictorError as e:
        print(f"error: {runs}: {e}", file=sys.stderr)
        return 2
    print(f"model loaded and compiled in {time.perf_counter() - t0:.1f}s", flush=True)
    try:
        server = make_server(predictor, host=args.host, port=args.port, max_upload_mb=args.max_upload_mb,
                             options=options, run=runs)
    except OSError as e:
        print(f"error: cannot listen on {args.host}:{args.port}: {e}", file=sys.stderr)
        return 2
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"note: listening on {args.host}: anyone who can reach this port can use the model", flush=True)
    try:
        print(f"unet-jax app: {runs} (step {server.info['step']}, {predictor.num_classes} classes) at {server.url}"
              "  (Ctrl-C to stop)", flush=True)
        server.serve_forever()
    except KeyboardInterrupt:
        print("stopped", file=sys.stderr)
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
