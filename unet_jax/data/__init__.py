"""Datasets (DRIVE, synthetic fundus images, folders of images and masks), preprocessing,
and the patch pipeline.

Typical use::

    from unet_jax import data

    ds = data.get("drive")                      # or "synthetic", "folder" (root=...)
    train = ds.train()                          # random access: ds.train()[i] is an Example
    x = ds.preprocess(train[0]).image           # the model's float32 input
    it = data.make_train_iterator(data.MappedSource(train, ds.preprocess), batch_size=32)

The tensorflow-datasets parts (``Drive``, ``drive_source``, ``load_drive``,
``prepare_drive``, ``default_tfds_dir``) are imported lazily, since importing tfds takes
about a second.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from unet_jax.config import AugmentConfig, PreprocessConfig
from unet_jax.data.base import (
    DataError,
    Dataset,
    Example,
    InMemorySource,
    MappedSource,
    Source,
    Subset,
    available,
    dataset_class,
    get,
    register,
)
from unet_jax.data.drive import (
    DRIVE_LAYOUT,
    DRIVE_URL,
    DriveDataError,
    DriveDataset,
    DriveNotFoundError,
    read_drive_split,
    resolve_drive_dir,
)
from unet_jax.data.folder import FolderDataset
from unet_jax.data.lgg import LggDataset
from unet_jax.data.nifti import NiftiDataset
from unet_jax.data.pipeline import PatchSampler, make_train_dataset, make_train_iterator
from unet_jax.data.preprocess import preprocess_example, preprocess_image
from unet_jax.data.synthetic import SyntheticDrive, make_synthetic_drive, make_synthetic_example

if TYPE_CHECKING:
    from unet_jax.data.drive_tfds import Drive, default_tfds_dir, drive_source, load_drive, prepare_drive

_LAZY = {"Drive", "default_tfds_dir", "drive_source", "load_drive", "prepare_drive"}

__all__ = [
    "DRIVE_LAYOUT",
    "DRIVE_URL",
    "AugmentConfig",
    "DataError",
    "Dataset",
    "Drive",
    "DriveDataError",
    "DriveDataset",
    "DriveNotFoundError",
    "Example",
    "FolderDataset",
    "InMemorySource",
    "LggDataset",
    "MappedSource",
    "NiftiDataset",
    "PatchSampler",
    "PreprocessConfig",
    "Source",
    "Subset",
    "SyntheticDrive",
    "available",
    "dataset_class",
    "default_tfds_dir",
    "drive_source",
    "get",
    "load_drive",
    "make_synthetic_drive",
    "make_synthetic_example",
    "make_train_dataset",
    "make_train_iterator",
    "prepare_drive",
    "preprocess_example",
    "preprocess_image",
    "read_drive_split",
    "register",
    "resolve_drive_dir",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module("unet_jax.data.drive_tfds"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
