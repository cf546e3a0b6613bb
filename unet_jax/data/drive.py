"""Reading and validating the original DRIVE layout.

DRIVE (Digital Retinal Images for Vessel Extraction) is distributed by the
DRIVE challenge (https://drive.grand-challenge.org/) after registration; this
library never downloads it. Users unpack it themselves into::

    DRIVE/
      training/
        images/      21_training.tif ... 40_training.tif   (584x565 RGB)
        1st_manual/  21_manual1.gif  ... 40_manual1.gif    (vessels, 0/255)
        mask/        21_training_mask.gif ...              (FOV, 0/255)
      test/
        images/      01_test.tif ... 20_test.tif
        1st_manual/  01_manual1.gif ... 20_manual1.gif
        mask/        01_test_mask.gif ...
        2nd_manual/  (optional, unused)

Every error raised here is a :class:`DriveDataError` whose message names the
offending path and says how to fix it, because a wrongly unpacked archive is
the most common failure a new user hits.

:class:`DriveDataset` (registered as ``"drive"``) serves the two splits to the
training engine through the prepared ArrayRecord dataset
(:mod:`unet_jax.data.drive_tfds`), with the FOV mask as the valid region.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import cv2
import numpy as np

from unet_jax.config import PreprocessConfig
from unet_jax.data.base import DataError, Dataset, Example, Source, register
from unet_jax.data.imageio import decode_image

__all__ = [
    "DRIVE_URL",
    "DRIVE_LAYOUT",
    "DriveDataError",
    "DriveDataset",
    "DriveNotFoundError",
    "resolve_drive_dir",
    "read_drive_split",
]

DRIVE_URL = "https://drive.grand-challenge.org/"
ENV_DRIVE_DIR = "UNET_JAX_DRIVE_DIR"
DEFAULT_DRIVE_DIR = Path("data/DRIVE")

DRIVE_LAYOUT = """\
DRIVE/
  training/
    images/      21_training.tif ... 40_training.tif
    1st_manual/  21_manual1.gif ... 40_manual1.gif
    mask/        21_training_mask.gif ... 40_training_mask.gif
  test/
    images/      01_test.tif ... 20_test.tif
    1st_manual/  01_manual1.gif ... 20_manual1.gif
    mask/        01_test_mask.gif ... 20_test_mask.gif"""

Split = Literal["training", "test"]
_SUBDIRS = ("images", "1st_manual", "mask")


class DriveDataError(DataError):
    """The DRIVE data on disk is missing, incomplete or unreadable."""


class DriveNotFoundError(DriveDataError):
    """No DRIVE directory was found at any of the candidate locations."""


def resolve_drive_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """Finds the DRIVE root directory.

    Order: the ``data_dir`` argument; else the ``UNET_JAX_DRIVE_DIR``
    environment variable; else ``./data/DRIVE``. The first source that is set
    decides: an explicit but wrong path is an error, not silently replaced by
    a fallback that might hold different data.

    Returns:
      The resolved (absolute) directory.

    Raises:
      DriveNotFoundError: the chosen directory does not exist. The message
        lists every candidate (the one used and those that were not set or
        not consulted), the expected layout and where to get DRIVE.
    """
    env = os.environ.get(ENV_DRIVE_DIR) or None
    sources: list[tuple[str, Path | None]] = [
        ("data_dir argument", Path(data_dir).expanduser() if data_dir is not None else None),
        (f"${ENV_DRIVE_DIR}", Path(env).expanduser() if env else None),
        ("default", DEFAULT_DRIVE_DIR),
    ]
    chosen = next(i for i, (_, p) in enumerate(sources) if p is not None)
    path = sources[chosen][1]
    assert path is not None
    if path.is_dir():
        return path.resolve()

    lines = []
    for i, (what, p) in enumerate(sources):
        if p is None:
            status = "not set"
        elif i == chosen:
            status = f"{p.absolute()}  <- used, does not exist"
        else:
            status = f"{p.absolute()}  (not consulted: an earlier source was set)"
        lines.append(f"  {i + 1}. {what}: {status}")
    raise DriveNotFoundError(
        f"DRIVE dataset not found at {path.absolute()}.\n"
        "Locations, in order of precedence:\n" + "\n".join(lines) + "\n"
        f"Pass data_dir=..., set ${ENV_DRIVE_DIR}, or unpack DRIVE to "
        f"./{DEFAULT_DRIVE_DIR} with this layout:\n{DRIVE_LAYOUT}\n"
        f"DRIVE is not downloaded automatically: register at {DRIVE_URL} "
        "and download it yourself. To try everything without it, train on "
        "built-in synthetic fundus images: python -m experiments.drive --synthetic "
        "(in Python: unet_jax.data.get(\"synthetic\"))."
    )


def _decode(path: Path, flags: int) -> np.ndarray:
    return decode_image(path, flags, error=DriveDataError,
                        hint=f"Re-extract it from the original DRIVE archive ({DRIVE_URL}).")


def _read_binary(path: Path, image_path: Path, image_shape: tuple[int, ...]) -> np.ndarray:
    mask = _decode(path, cv2.IMREAD_GRAYSCALE)
    if mask.shape != image_shape[:2]:
        raise DriveDataError(
            f"Size mismatch: {path} is {mask.shape[1]}x{mask.shape[0]} (WxH) "
            f"but its image {image_path} is {image_shape[1]}x{image_shape[0]}. "
            "Labels and masks must match their image; re-extract the original "
            "DRIVE files."
        )
    # Threshold rather than require exact {0,255}: GIF/resampling artefacts
    # give a few intermediate values in some copies of DRIVE.
    return (mask > 127).astype(np.uint8)


def read_drive_split(root: str | os.PathLike, split: Split) -> list[Example]:
    """Reads and validates one split of the original DRIVE layout.

    Args:
      root: the DRIVE directory (containing ``training/`` and ``test/``).
      split: ``"training"`` or ``"test"``.

    Returns:
      The examples sorted by id: ``id`` the image number as in the file names
      (``"21"``, ``"01"``), ``image`` uint8 (H, W, 3) **RGB** (not cv2's BGR),
      ``label`` uint8 {0, 1} vessels of the first manual annotation, ``valid``
      uint8 {0, 1} the circular field of view (FOV).

    Raises:
      DriveDataError: a missing split folder or subfolder, no images, an image
        without its manual label or FOV mask, an undecodable file, or a
        label/mask whose size differs from its image. The message names the
        path involved.
    """
    if split not in ("training", "test"):
        raise ValueError(f"split must be 'training' or 'test', got {split!r}")
    root = Path(root)
    split_dir = root / split
    if not split_dir.is_dir():
        hint = ""
        nested = next((p for p in root.glob(f"*/{split}") if p.is_dir()), None)
        if nested is not None:  # e.g. the archive unpacked to DRIVE/DRIVE/
            hint = f" Found {nested}: did you mean data_dir={nested.parent}?"
        raise DriveDataError(
            f"Missing split folder {split_dir}.{hint} Expected layout:\n{DRIVE_LAYOUT}"
        )
    for sub in _SUBDIRS:
        if not (split_dir / sub).is_dir():
            raise DriveDataError(
                f"Missing folder {split_dir / sub} (the '{sub}' subfolder of "
                f"the {split} split). Expected layout:\n{DRIVE_LAYOUT}"
            )
    image_paths = sorted((split_dir / "images").glob(f"*_{split}.tif"))
    if not image_paths:
        raise DriveDataError(
            f"No images matching '*_{split}.tif' in {split_dir / 'images'}. "
            f"Expected layout:\n{DRIVE_LAYOUT}"
        )

    examples = []
    for image_path in image_paths:
        image_id = image_path.name[: -len(f"_{split}.tif")]
        label_path = split_dir / "1st_manual" / f"{image_id}_manual1.gif"
        fov_path = split_dir / "mask" / f"{image_id}_{split}_mask.gif"
        for what, p in (("manual label", label_path), ("FOV mask", fov_path)):
            if not p.is_file():
                raise DriveDataError(
                    f"Image {image_path} has no {what}: {p} is missing. "
                    "Every image needs its 1st_manual label and FOV mask; "
                    "re-extract the DRIVE archive."
                )
        bgr = _decode(image_path, cv2.IMREAD_COLOR)
        image = np.ascontiguousarray(bgr[..., ::-1])  # cv2 decodes as BGR
        label = _read_binary(label_path, image_path, image.shape)
        fov = _read_binary(fov_path, image_path, image.shape)
        examples.append(Example(id=image_id, image=image, label=label, valid=fov))
    # Ids are zero-padded in DRIVE, but sort numerically where possible so
    # hand-made layouts ("3" vs "10") still come out in a sensible order.
    examples.sort(key=lambda e: (int(e.id) if e.id.isdigit() else float("inf"), e.id))
    return examples


@register("drive")
class DriveDataset(Dataset):
    """DRIVE: 20 training and 20 test fundus images, vessels within the FOV.

    Args:
      data_dir: the unpacked DRIVE folder (see :func:`resolve_drive_dir`); checked here,
        so a wrong path fails before anything else happens.
      tfds_dir: where the prepared ArrayRecord dataset is cached (see
        :func:`unet_jax.data.drive_tfds.default_tfds_dir`).
      preprocess: the image preprocessing (default: green channel with CLAHE).
    """

    name = "DRIVE"
    valid_region = "FOV"

    def __init__(
        self,
        data_dir: str | os.PathLike | None = None,
        tfds_dir: str | os.PathLike | None = None,
        preprocess: PreprocessConfig = PreprocessConfig(),
    ):
        super().__init__(preprocess)
        self.root = resolve_drive_dir(data_dir)
        self.tfds_dir = tfds_dir

    @property
    def num_classes(self) -> int:
        return 2

    def train(self) -> Source:
        from unet_jax.data.drive_tfds import drive_source

        return drive_source(self.root, "train", tfds_dir=self.tfds_dir)

    def test(self) -> Source:
        from unet_jax.data.drive_tfds import drive_source

        return drive_source(self.root, "test", tfds_dir=self.tfds_dir)

    def describe(self) -> dict:
        return {**super().describe(), "root": str(self.root)}
