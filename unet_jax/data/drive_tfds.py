"""DRIVE as a tensorflow-datasets builder, stored as ArrayRecord, read without TF.

The builder reads the user's original DRIVE layout (a *manual download*: DRIVE
needs registration, so tfds never downloads it) through
:func:`unet_jax.data.drive.read_drive_split`, which does all the validation,
and writes the decoded arrays to ArrayRecord files. Reading goes through
``builder.as_data_source()``, a random-access source backed by
``array_record`` that decodes ``tfds.features.Tensor`` features with numpy
only, one record per access (:class:`DriveSource`), so neither preparation nor reading imports TensorFlow (verified with
TensorFlow absent). Every feature is a plain ``Tensor``; the image id is
stored as an int32 image number because string features would need TF to
encode.

Preparation is atomic: tfds writes into a randomly named
``incomplete.XXXXXX_1.0.0`` directory next to the final one and renames it
only after everything (including ``dataset_info.json``) is written, so an
interrupted run leaves no half-finished dataset that would later be read
(the stale temporary directory is ignored and the next call prepares again).
Nothing is ever written into the DRIVE directory itself.

Cache key: the prepared data lives under
``<tfds_dir>/drive_<fingerprint>/drive/1.0.0/`` where the fingerprint hashes
the resolved DRIVE path and the names, sizes and modification times of its
files. Pointing at another DRIVE copy, or editing files, therefore prepares a
fresh dataset instead of silently reusing stale arrays. Old fingerprints are
not cleaned up (each is ~55 MB); delete the directory to reclaim space. Each
one contains a ``SOURCE.txt`` naming the DRIVE directory it came from.
"""

from __future__ import annotations

import hashlib
import inspect
import os
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds
from etils import epath
from tensorflow_datasets.core.utils.py_utils import classproperty

from unet_jax.data.base import Example
from unet_jax.data.drive import (
    DRIVE_LAYOUT,
    DRIVE_URL,
    read_drive_split,
    resolve_drive_dir,
)

__all__ = ["Drive", "DriveSource", "default_tfds_dir", "drive_source", "load_drive", "prepare_drive"]

ENV_TFDS_DIR = "UNET_JAX_TFDS_DIR"
DRIVE_SHAPE = (584, 565)

_SPLITS = {"train": "training", "test": "test"}
# Store arrays as raw bytes: the default (NONE) encoding writes every pixel
# as a protobuf int64 varint, which made preparation ~4x slower. No zlib:
# ArrayRecord already compresses its chunks.
_RAW = tfds.features.Encoding.BYTES


class Drive(tfds.core.GeneratorBasedBuilder):
    """DRIVE retinal-vessel segmentation: 20 train + 20 test fundus images."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = f"""\
Register at {DRIVE_URL}, download DRIVE and unpack it; pass the unpacked
DRIVE directory as the manual dir (`load_drive(drive_dir)` does this). It
must contain:
{DRIVE_LAYOUT}
"""

    # tfds 4.9.x's default `code_path` evaluates `importlib_resources`, a
    # package tfds does not declare as a dependency on Python >= 3.9, for any
    # builder defined inside a package. Return what tfds would compute anyway
    # (this source file); it is only used to look for a checksums file.
    @classproperty
    @classmethod
    def code_path(cls) -> epath.Path:
        return epath.Path(inspect.getfile(cls))

    def _info(self) -> tfds.core.DatasetInfo:
        # DatasetInfo directly (not dataset_info_from_configs, which reads
        # metadata files from the builder's package directory).
        h, w = DRIVE_SHAPE
        return tfds.core.DatasetInfo(
            builder=self,
            description=(
                "DRIVE: 40 colour fundus photographs (565x584) with manual "
                "vessel segmentations (1st observer) and field-of-view masks."
            ),
            features=tfds.features.FeaturesDict(
                {
                    "id": tfds.features.Tensor(shape=(), dtype=np.int32),
                    "image": tfds.features.Tensor(shape=(h, w, 3), dtype=np.uint8, encoding=_RAW),
                    "label": tfds.features.Tensor(shape=(h, w), dtype=np.uint8, encoding=_RAW),
                    "fov": tfds.features.Tensor(shape=(h, w), dtype=np.uint8, encoding=_RAW),
                }
            ),
            homepage=DRIVE_URL,
            citation=(
                "@article{staal2004ridge, title={Ridge-based vessel segmentation "
                "in color images of the retina}, author={Staal, J. and Abramoff, "
                "M. D. and Niemeijer, M. and Viergever, M. A. and van Ginneken, "
                "B.}, journal={IEEE Transactions on Medical Imaging}, volume={23}, "
                "number={4}, pages={501--509}, year={2004}}"
            ),
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        root = Path(dl_manager.manual_dir)
        # Read (and validate) both splits before anything is written, so bad
        # input fails fast with read_drive_split's explanatory error.
        return {name: self._generate_examples(read_drive_split(root, folder))
                for name, folder in _SPLITS.items()}

    def _generate_examples(self, examples: list[Example]):
        for ex in examples:
            if ex.image.shape[:2] != DRIVE_SHAPE:
                raise ValueError(
                    f"DRIVE image {ex.id} is {ex.image.shape[:2]}, expected {DRIVE_SHAPE}"
                )
            yield ex.id, {
                "id": np.int32(int(ex.id)),
                "image": ex.image,
                "label": ex.label,
                "fov": ex.valid,
            }


def default_tfds_dir() -> Path:
    """``$UNET_JAX_TFDS_DIR`` or ``~/.cache/unet_jax/tensorflow_datasets``."""
    env = os.environ.get(ENV_TFDS_DIR)
    return Path(env).expanduser() if env else Path.home() / ".cache/unet_jax/tensorflow_datasets"


def _fingerprint(drive_dir: Path) -> str:
    """Hash of the DRIVE path and its split files' names, sizes and mtimes."""
    h = hashlib.sha256(str(drive_dir).encode())
    for folder in _SPLITS.values():
        for p in sorted((drive_dir / folder).rglob("*")):
            if p.is_file():
                st = p.stat()
                h.update(f"{p.relative_to(drive_dir)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


def prepare_drive(drive_dir: str | os.PathLike | None = None, *, tfds_dir: str | os.PathLike | None = None) -> Drive:
    """Prepares the DRIVE tfds dataset if needed and returns its builder.

    Args:
      drive_dir: the original DRIVE directory (resolved with
        :func:`resolve_drive_dir`: argument, ``$UNET_JAX_DRIVE_DIR``,
        ``./data/DRIVE``).
      tfds_dir: where prepared datasets go (default :func:`default_tfds_dir`).

    Raises:
      DriveNotFoundError / DriveDataError: as :func:`read_drive_split`.
    """
    drive_dir = resolve_drive_dir(drive_dir)
    root = Path(tfds_dir).expanduser() if tfds_dir is not None else default_tfds_dir()
    data_dir = root / f"drive_{_fingerprint(drive_dir)}"
    builder = Drive(data_dir=os.fspath(data_dir), file_format="array_record")
    if not builder.is_prepared():
        data_dir.mkdir(parents=True, exist_ok=True)
        (data_dir / "SOURCE.txt").write_text(f"{drive_dir}\n")
        config = tfds.download.DownloadConfig(manual_dir=os.fspath(drive_dir))
        try:
            builder.download_and_prepare(download_config=config, file_format="array_record")
        except Exception:
            # Another process may have finished preparing the same data while
            # we were writing (tfds's final rename then fails); use theirs.
            builder = Drive(data_dir=os.fspath(data_dir), file_format="array_record")
            if not builder.is_prepared():
                raise
    return builder


class DriveSource:
    """Random access to one split of the prepared dataset, in id order; each access
    decodes one record (an :class:`~unet_jax.data.base.Example` with the FOV as
    ``valid``)."""

    def __init__(self, source):
        self._source = source
        # tfds shuffles records by key hash when writing; index them in id order.
        ids = [int(source[i]["id"]) for i in range(len(source))]
        self._order = sorted(range(len(ids)), key=ids.__getitem__)

    def __len__(self) -> int:
        return len(self._order)

    def __getitem__(self, index: int) -> Example:
        r = self._source[self._order[index]]
        return Example(
            id=f"{int(r['id']):02d}",
            image=np.asarray(r["image"], dtype=np.uint8),
            label=np.asarray(r["label"], dtype=np.uint8),
            valid=np.asarray(r["fov"], dtype=np.uint8),
        )


def drive_source(
    drive_dir: str | os.PathLike | None,
    split: str,
    *,
    tfds_dir: str | os.PathLike | None = None,
) -> DriveSource:
    """A DRIVE split as a random-access source over the prepared ArrayRecord dataset.

    The first call prepares the dataset (~seconds; see the module docstring for where
    it goes and how it is keyed); later calls only read it.

    Args:
      drive_dir: the original DRIVE directory (None: ``$UNET_JAX_DRIVE_DIR`` or
        ``./data/DRIVE``).
      split: ``"train"`` (alias ``"training"``) or ``"test"``.
      tfds_dir: tfds data dir (default ``$UNET_JAX_TFDS_DIR`` or
        ``~/.cache/unet_jax/tensorflow_datasets``).
    """
    if split == "training":
        split = "train"
    if split not in _SPLITS:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    builder = prepare_drive(drive_dir, tfds_dir=tfds_dir)
    return DriveSource(builder.as_data_source(split=split))


def load_drive(
    drive_dir: str | os.PathLike | None,
    split: str,
    *,
    tfds_dir: str | os.PathLike | None = None,
) -> list[Example]:
    """All examples of a DRIVE split (see :func:`drive_source`), sorted by id: identical
    to ``read_drive_split`` (ids are two-digit strings as in the file names, e.g. "01")."""
    return list(drive_source(drive_dir, split, tfds_dir=tfds_dir))
