"""Reading image and mask files (PNG, JPEG, TIFF, BMP, GIF; 8- or 16-bit) with clear errors."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from unet_jax.data.base import DataError

__all__ = ["IMAGE_EXTENSIONS", "decode_image", "image_shape", "read_image", "read_mask"]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".gif")


def decode_image(path: Path, flags: int = cv2.IMREAD_UNCHANGED, *, error: type[Exception] = DataError,
                 hint: str = "") -> np.ndarray:
    """Decodes an image file in OpenCV's layout (BGR / BGRA channel order) for `flags`.

    Raises `error` naming the file (plus `hint`) when it cannot be read or decoded.
    """
    try:
        # imdecode (rather than imread) handles non-ASCII paths and does not print cv2
        # warnings to stderr for unreadable files.
        buf = np.fromfile(path, dtype=np.uint8)
    except OSError as e:
        raise error(f"Cannot read {path}: {e}") from e
    img = cv2.imdecode(buf, flags) if buf.size else None
    if img is None and buf.size:
        img = _decode_pil(path, flags)
    if img is None:
        raise error(f"Cannot decode {path}: the file is empty, corrupt or not an image. {hint}".rstrip())
    return img


def _decode_pil(path: Path, flags: int) -> np.ndarray | None:
    """Pillow fallback (OpenCV < 4.11 has no GIF decoder), in OpenCV's layout."""
    try:
        from PIL import Image

        with Image.open(path) as im:
            if flags == cv2.IMREAD_GRAYSCALE:
                return np.asarray(im.convert("L"))
            if flags == cv2.IMREAD_UNCHANGED and im.mode in ("L", "I;16", "I;16B", "RGBA"):
                a = np.asarray(im)
                return a[..., [2, 1, 0, 3]] if a.ndim == 3 else a
            return np.asarray(im.convert("RGB"))[..., ::-1]
    except Exception:  # noqa: BLE001 - any failure means "cannot decode"
        return None


def read_image(path: Path) -> np.ndarray:
    """An image as stored: (H, W) gray, (H, W, 3) **RGB** or (H, W, 4) RGBA; uint8 or uint16."""
    img = decode_image(Path(path), cv2.IMREAD_UNCHANGED)
    if img.ndim == 3 and img.shape[-1] == 3:
        img = img[..., ::-1]
    elif img.ndim == 3 and img.shape[-1] == 4:
        img = img[..., [2, 1, 0, 3]]
    if img.dtype not in (np.uint8, np.uint16):
        raise DataError(f"{path} holds {img.dtype} pixels; only 8- and 16-bit images are supported: convert it")
    return np.ascontiguousarray(img)


def read_mask(path: Path) -> np.ndarray:
    """A label mask as stored, (H, W) integers: palette images give their palette indices
    (class ids), gray ones their values; an RGB mask must be gray (equal channels)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            mask = np.asarray(im)
    except (OSError, UnidentifiedImageError, ValueError) as e:
        raise DataError(f"Cannot decode mask {path}: the file is empty, corrupt or not an image ({e})") from e
    if mask.dtype == bool:
        mask = mask.astype(np.uint8)
    if mask.ndim == 3:
        if not (mask[..., :3] == mask[..., :1]).all():
            raise DataError(
                f"mask {path} is a colour image with different channels; save each mask as one channel of "
                "class ids (0 = background, 1, 2, ...) or 0/255 for a binary task"
            )
        mask = mask[..., 0]
    if mask.dtype.kind not in "ui":
        raise DataError(f"mask {path} holds {mask.dtype} values; masks must hold integer class ids")
    return np.ascontiguousarray(mask)


def image_shape(path: Path) -> tuple[int, int]:
    """(H, W) from the file's header, without decoding the pixels."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            w, h = im.size
    except (OSError, UnidentifiedImageError, ValueError) as e:
        raise DataError(f"Cannot read image {path}: the file is empty, corrupt or not an image ({e})") from e
    return h, w
