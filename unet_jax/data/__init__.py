"""DRIVE data: reading, tfds/ArrayRecord caching, preprocessing, patch pipeline.

Typical use::

    from unet_jax import data

    train = data.load_drive(None, "train")        # or data.read_drive_split(...)
    # no DRIVE? train, test = data.make_synthetic_drive()
    pre = data.PreprocessConfig()
    it = data.make_train_iterator(
        [pre(e.image) for e in train], [e.label for e in train], [e.fov for e in train]
    )

The tensorflow-datasets parts (``Drive``, ``load_drive``, ``prepare_drive``,
``default_tfds_dir``) are imported lazily, since importing tfds takes about
a second.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from unet_jax.data.drive import (
    DRIVE_LAYOUT,
    DRIVE_URL,
    DriveDataError,
    DriveExample,
    DriveNotFoundError,
    read_drive_split,
    resolve_drive_dir,
)
from unet_jax.data.pipeline import (
    AugmentConfig,
    PatchSampler,
    make_train_dataset,
    make_train_iterator,
)
from unet_jax.data.preprocess import PreprocessConfig, preprocess_image
from unet_jax.data.synthetic import make_synthetic_drive, make_synthetic_example

if TYPE_CHECKING:
    from unet_jax.data.drive_tfds import Drive, default_tfds_dir, load_drive, prepare_drive

_LAZY = {"Drive", "default_tfds_dir", "load_drive", "prepare_drive"}

__all__ = [
    "DRIVE_LAYOUT",
    "DRIVE_URL",
    "AugmentConfig",
    "Drive",
    "DriveDataError",
    "DriveExample",
    "DriveNotFoundError",
    "PatchSampler",
    "PreprocessConfig",
    "default_tfds_dir",
    "load_drive",
    "make_synthetic_drive",
    "make_synthetic_example",
    "make_train_dataset",
    "make_train_iterator",
    "prepare_drive",
    "preprocess_image",
    "read_drive_split",
    "resolve_drive_dir",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module("unet_jax.data.drive_tfds"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
