"""3D NIfTI volumes in the Medical Segmentation Decathlon layout, trained slice by slice.

    ROOT/imagesTr/liver_0.nii.gz  liver_1.nii.gz ...     (3D volumes)
    ROOT/labelsTr/liver_0.nii.gz  liver_1.nii.gz ...     (class ids: 0 background, 1 liver, 2 tumour)

Images pair with labels by file name (macOS ``._*`` files are ignored). Each volume is cut
into 2D slices along its third array axis (the axial one for the Decathlon's volumes; no
reorientation is applied), every slice an :class:`Example` whose ``case`` is the volume, so
per-case figures are per-volume (all voxels pooled, per foreground class). Volumes are read
through nibabel's array proxies (``img.dataobj[..., k0:k1]``) in chunks of 16 slices, never
whole. (``.nii.gz`` files are gzip streams: without ``indexed_gzip`` installed, nibabel
decompresses from the start of the file on each access, so reading a volume costs
depth / 16 such passes; uncompressed ``.nii`` reads fastest.)

Intensities: ``window=(lo, hi)`` (CT, Hounsfield units) clips to [lo, hi] and maps to
[0, 1]; otherwise (MR) each volume is mapped from its [``percentiles``] (0.5th, 99.5th by
default) to [0, 1], clipped; the percentiles are computed from up to 16 evenly spaced slices
of the volume (a bounded-memory estimate). ``context=c`` feeds the 2c neighbouring slices as
extra channels (2.5D input: channels k-c..k+c, the end slices repeated at the volume's ends).

Checked when the dataset is built, before any training: unreadable files, images without
labels and labels without images, image and label volumes of different shapes or affines,
non-3D volumes, label values that are not class ids. The test volumes are a seeded share
(``test_fraction``) of the cases; validation volumes are carved from the training ones by
the engine (whole volumes).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from unet_jax.config import PreprocessConfig
from unet_jax.data.base import DataError, Dataset, Example, Source, register

__all__ = ["NIFTI_LAYOUT", "NiftiDataset", "NiftiSource", "pair_volumes"]

NIFTI_LAYOUT = """\
ROOT/imagesTr/<case>.nii.gz   (3D image volumes)
ROOT/labelsTr/<case>.nii.gz   (3D label volumes of class ids, same shape and affine)"""

_EXTS = (".nii.gz", ".nii")
MAX_STAT_SLICES = 16


def _stem(p: Path) -> str | None:
    for ext in _EXTS:
        if p.name.endswith(ext):
            return p.name[: -len(ext)]
    return None


def _volumes(folder: Path) -> dict[str, Path]:
    if not folder.is_dir():
        raise DataError(f"folder {folder} does not exist. Expected layout:\n{NIFTI_LAYOUT}")
    out = {}
    for p in sorted(folder.iterdir()):
        stem = _stem(p)
        if p.is_file() and stem is not None and not p.name.startswith("._"):
            out[stem] = p
    if not out:
        raise DataError(f"folder {folder} holds no NIfTI volumes (.nii.gz, .nii). Expected layout:\n{NIFTI_LAYOUT}")
    return out


def pair_volumes(root: Path) -> list[tuple[str, Path, Path]]:
    """(case, image, label) for every volume under `root`, by case name; unpaired files listed."""
    images, labels = _volumes(root / "imagesTr"), _volumes(root / "labelsTr")
    lonely = sorted(set(images) - set(labels))
    if lonely:
        raise DataError(f"image volume(s) without a label in {root / 'labelsTr'}: "
                        f"{', '.join(images[c].name for c in lonely[:10])}")
    lonely = sorted(set(labels) - set(images))
    if lonely:
        raise DataError(f"label volume(s) without an image in {root / 'imagesTr'}: "
                        f"{', '.join(labels[c].name for c in lonely[:10])}")
    return [(c, images[c], labels[c]) for c in sorted(images)]


def _load(path: Path):
    import nibabel as nib

    try:
        img = nib.load(str(path))
        shape = img.shape  # header only
    except Exception as e:  # noqa: BLE001 - nibabel raises many types for bad files
        raise DataError(f"Cannot read NIfTI {path}: {e}") from e
    return img, shape


def _slice(img, k: int, path: Path) -> np.ndarray:
    return _slab(img, k, k + 1, path)[..., 0]


def _slab(img, k0: int, k1: int, path: Path) -> np.ndarray:
    """Slices k0..k1-1 of a 3D volume, read through its proxy."""
    try:
        return np.asarray(img.dataobj[..., k0:k1])
    except Exception as e:  # noqa: BLE001 - truncated / corrupt gzip streams
        raise DataError(f"Cannot read slices {k0}..{k1 - 1} of NIfTI {path}: {e}") from e


CHUNK = 16  # slices read per proxy access: a gzip stream is decompressed from its start on each access


class _Volume:
    __slots__ = ("case", "image_path", "label_path", "depth", "image", "label", "lo", "hi", "areas")

    def __init__(self, case: str, image_path: Path, label_path: Path | None):
        self.case, self.image_path, self.label_path = case, image_path, label_path
        self.image, shape = _load(image_path)
        if len(shape) != 3:
            raise DataError(f"{image_path} is a {len(shape)}D volume of shape {shape}: only 3D volumes are supported "
                            "(multi-modal 4D volumes are not)")
        self.depth = int(shape[2])
        self.lo = self.hi = 0.0
        self.areas: list[np.ndarray] = []
        self.label = None  # a volume to predict
        if label_path is None:
            return
        self.label, lshape = _load(label_path)
        if tuple(lshape) != tuple(shape):
            raise DataError(f"label {label_path} has shape {tuple(lshape)} but its image {image_path} has "
                            f"{tuple(shape)}: a label volume must match its image voxel for voxel")
        if not np.allclose(self.image.affine, self.label.affine, atol=1e-3):
            raise DataError(f"label {label_path} and its image {image_path} have different affines (voxel-to-world "
                            f"maps):\n{np.round(self.label.affine, 4)}\nvs\n{np.round(self.image.affine, 4)}")


class NiftiSource:
    """Slices of some volumes, by volume then slice index; each access reads 1 + 2c slices."""

    def __init__(self, volumes: list[_Volume], context: int):
        self.volumes, self.context = volumes, context
        self.index = [(v, k) for v in volumes for k in range(v.depth)]
        self.cases = [v.case for v, _ in self.index]
        self._lock = threading.Lock()
        self._chunk: tuple[Any, int, np.ndarray, np.ndarray] | None = None  # (volume, k0, image slab, label slab)

    def __len__(self) -> int:
        return len(self.index)

    def _planes(self, v: _Volume, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Image and label slice k, from the last chunk of CHUNK slices read (reading in order
        costs one proxy access per CHUNK slices, not one per slice)."""
        with self._lock:
            c = self._chunk
            if c is None or c[0] is not v or not c[1] <= k < c[1] + c[2].shape[-1]:
                k0 = (k // CHUNK) * CHUNK
                k1 = min(k0 + CHUNK, v.depth)
                image = _slab(v.image, k0, k1, v.image_path)
                label = np.zeros(image.shape, np.uint8) if v.label is None else _slab(v.label, k0, k1, v.label_path)
                c = self._chunk = (v, k0, image, label)
            return c[2][..., k - c[1]], c[3][..., k - c[1]]

    def __getitem__(self, i: int) -> Example:
        v, k = self.index[i]
        c = self.context
        planes = [self._planes(v, min(max(j, 0), v.depth - 1))[0] for j in range(k - c, k + c + 1)]
        label = self._planes(v, k)[1]
        return Example(id=f"{v.case}_{k:04d}", image=np.stack(planes, axis=-1).astype(np.float32),
                       label=np.rint(label).astype(np.uint8), case=v.case)


@register("nifti")
class NiftiDataset(Dataset):
    """NIfTI volumes (see the module docstring).

    Args:
      root: folder with ``imagesTr/`` and ``labelsTr/``.
      window: (lo, hi) intensity window (CT); None: per-volume percentile normalisation.
      percentiles: the (low, high) percentiles of that normalisation.
      context: neighbouring slices on each side fed as extra channels (2.5D); 0: 2D.
      test_fraction, split_seed: the seeded share of volumes held out for testing.
      classes: classes including background; None: the largest label value + 1 (at least 2).
      preprocess: its ``image_size`` resizes slices (labels nearest neighbour); the other
        fields do not apply (intensities follow `window` / `percentiles`).
      progress: a progress bar while checking the volumes.
      volumes: ``(case, image, label or None)`` triples instead of `root`'s layout, all of
        them test volumes (a trained run's prediction, see :meth:`for_prediction`).
    """

    name = "nifti"
    volume_preprocessing = ("NIfTI volumes (.nii.gz, .nii) or folders of them: python -m unet_jax.predict --run RUN "
                            "VOLUME... --output DIR [--labels LABEL_FOLDER]")
    input_options = {"window": None, "percentiles": [0.5, 99.5], "context": 0, "classes": None}

    def __init__(self, root: str | os.PathLike | None = None, window: tuple[float, float] | None = None,
                 percentiles: tuple[float, float] = (0.5, 99.5), context: int = 0, test_fraction: float = 0.2,
                 split_seed: int = 0, classes: int | None = None,
                 preprocess: PreprocessConfig = PreprocessConfig(channels="gray", clahe=False, normalize="unit"),
                 progress: bool = True, volumes: list[tuple[str, Path, Path | None]] | None = None):
        super().__init__(preprocess)
        if (root is None) == (volumes is None):
            raise DataError("the NIfTI dataset needs a data folder (--data-dir) or, to predict, the volumes")
        self.root = Path(root) if root is not None else Path(".")
        if window is not None and not window[0] < window[1]:
            raise DataError(f"--window {window[0]},{window[1]}: the low end must be below the high end")
        if context < 0:
            raise DataError(f"--context {context}: must be >= 0")
        self.window = None if window is None else (float(window[0]), float(window[1]))
        self.percentiles, self.context = tuple(percentiles), int(context)
        vols = [_Volume(*p) for p in (pair_volumes(self.root) if volumes is None else volumes)]
        self.labelled = all(v.label is not None for v in vols)
        max_label = 0
        for v in tqdm(vols, desc="checking volumes", unit="volume", leave=False, disable=not progress):
            max_label = max(max_label, self._scan(v, classes))
        self._classes = classes if classes is not None else max(2, max_label + 1)
        if volumes is not None:
            test_idx = set(range(len(vols)))
        else:
            n_test = int(round(test_fraction * len(vols)))
            if not 0 < n_test < len(vols):
                raise DataError(f"--test-fraction {test_fraction} of {len(vols)} volume(s) gives {n_test} test "
                                "volume(s); train and test need at least one each")
            test_idx = set(np.random.default_rng(split_seed).permutation(len(vols))[:n_test].tolist())
        self._train = NiftiSource([v for i, v in enumerate(vols) if i not in test_idx], self.context)
        self._test = NiftiSource([v for i, v in enumerate(vols) if i in test_idx], self.context)
        self._by_case = {v.case: v for v in vols}

    def _scan(self, v: _Volume, classes: int | None) -> int:
        """Reads the label slice by slice (values, areas) and a few image slices (percentiles);
        returns the largest label value (0 for a volume to predict, which has no label)."""
        if v.label is None:  # a volume to predict
            top, v.areas = 0, [0] * v.depth
        else:
            top = self._scan_label(v, classes)
        if self.window is None:
            ks = np.unique(np.linspace(0, v.depth - 1, min(MAX_STAT_SLICES, v.depth)).round().astype(int))
            sample = np.concatenate([_slice(v.image, int(k), v.image_path).ravel() for k in ks]).astype(np.float64)
            v.lo, v.hi = (float(x) for x in np.percentile(sample, self.percentiles))
        else:
            _slice(v.image, 0, v.image_path)  # readable
        return top

    @staticmethod
    def _scan_label(v: _Volume, classes: int | None) -> int:
        top = 0
        for k0 in range(0, v.depth, CHUNK):
            slab = _slab(v.label, k0, min(k0 + CHUNK, v.depth), v.label_path)
            if np.any(slab != np.rint(slab)) or np.any(slab < 0):
                raise DataError(f"label {v.label_path} (slices {k0}..) holds values that are not class ids 0, 1, 2, ...")
            m = int(slab.max()) if slab.size else 0
            if classes is not None and m >= classes:
                raise DataError(f"--classes {classes} is smaller than the largest label value {m} (in {v.label_path})")
            top = max(top, m)
            v.areas.extend(int(a) for a in np.count_nonzero(slab, axis=(0, 1)))
        return top

    @property
    def num_classes(self) -> int:
        return self._classes

    @property
    def channels(self) -> int:
        return 2 * self.context + 1

    def train(self) -> Source:
        return self._train

    def test(self) -> Source:
        return self._test

    def normalise(self, case: str, x: np.ndarray) -> np.ndarray:
        """Intensities to [0, 1]: the window, or the volume's percentile range."""
        lo, hi = self.window if self.window is not None else (self._by_case[case].lo, self._by_case[case].hi)
        return np.clip((np.asarray(x, np.float32) - lo) / (hi - lo if hi > lo else 1.0), 0.0, 1.0)

    def preprocess(self, example: Example) -> Example:
        import cv2

        from unet_jax.data.preprocess import resize_label

        x = self.normalise(example.case_id, example.image)
        label = np.asarray(example.label)
        size = self.preprocessing.image_size
        if size is not None and x.shape[:2] != (size, size):
            shrink = size < x.shape[0] or size < x.shape[1]
            x = cv2.resize(x, (size, size), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
            x = x.reshape(size, size, -1)
            label = resize_label(label, size)
        return example.replace(image=np.ascontiguousarray(x, np.float32), label=label)

    def test_reporter(self, workdir: Any, *, ignore_empty: bool = True) -> Any:
        from unet_jax.volumes import VolumeReporter

        c = self.context
        return VolumeReporter(workdir, num_classes=self.num_classes, ignore_empty=ignore_empty,
                              display=lambda ex: (self.normalise(ex.case_id, np.asarray(ex.image)[..., c]) * 255)
                              .astype(np.uint8), labelled=self.labelled)

    @classmethod
    def for_prediction(cls, inputs: Sequence[str], *, options: dict[str, Any], preprocess: PreprocessConfig,
                       labels: str | None = None, progress: bool = True) -> NiftiDataset:
        """Every NIfTI volume in `inputs` (files, or folders of ``.nii.gz`` / ``.nii``),
        normalised as the run's `options` say; with a `labels` folder, each volume's label
        of the same name (``case.nii.gz``) is read and the volumes are scored."""
        found: dict[str, Path] = {}
        for name in inputs:
            path = Path(name)
            named = _volumes(path) if path.is_dir() else {_stem(path): path} if _stem(path) and path.is_file() else None
            if named is None:
                raise DataError(f"{path}: not a NIfTI volume (.nii.gz, .nii) or a folder of them")
            for case, p in named.items():
                if case in found:
                    raise DataError(f"two volumes named {case}: {found[case]} and {p}")
                found[case] = p
        label_files = _volumes(Path(labels)) if labels is not None else {}
        missing = sorted(set(found) - set(label_files)) if labels is not None else []
        if missing:
            raise DataError(f"no label volume in {labels} for: {', '.join(found[c].name for c in missing[:10])} "
                            "(labels pair with images by file name)")
        keep = {k: options[k] for k in cls.input_options if k in options}
        return cls(volumes=[(c, p, label_files.get(c)) for c, p in sorted(found.items())], preprocess=preprocess,
                   progress=progress, **keep)

    def prediction_writer(self, outdir: Any) -> Any:
        """``<outdir>/<case>_pred.nii.gz`` (uint8 class ids) and ``<case>_prob.nii.gz`` (uint8
        probability x 255: the foreground for a binary run, else one volume per foreground
        class along a 4th axis), on the input's grid and with its affine."""
        return _VolumeWriter(Path(outdir), {v.case: v for v in self._test.volumes})

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "root": str(self.root.resolve()),
                "intensity": f"window {self.window}" if self.window else f"per-volume percentiles {self.percentiles}",
                "context": self.context, "train_volumes": [v.case for v in self._train.volumes],
                "test_volumes": [v.case for v in self._test.volumes], "num_train": len(self._train),
                "num_test": len(self._test), "slice_axis": "third array axis (no reorientation)"}


class _VolumeWriter:
    """Collects a volume's slices as they come and writes it when the next volume starts."""

    def __init__(self, outdir: Path, volumes: dict[str, _Volume]):
        from unet_jax.volumes import CaseSlices

        self.outdir, self.volumes = outdir, volumes
        self.files: list[Path] = []
        self._slices = CaseSlices(self._write)  # items: (pred, prob)

    def add(self, example: Example, probs: np.ndarray, pred: np.ndarray) -> None:
        fg = probs if probs.ndim == 2 else probs[..., 1:]
        self._slices.add(example.case_id, (np.asarray(pred, np.uint8),
                                           np.rint(np.clip(fg, 0.0, 1.0) * 255).astype(np.uint8)))

    def _write(self, case: str, items: list[tuple[np.ndarray, np.ndarray]]) -> None:
        src = self.volumes[case].image
        for kind, k in (("pred", 0), ("prob", 1)):  # slices were cut along the third array axis
            array = np.stack([item[k] for item in items], axis=2)
            self.files.append(_save_like(src, array, self.outdir / f"{case}_{kind}.nii.gz"))

    def finish(self) -> list[Path]:
        self._slices.flush()
        return self.files


def _save_like(src, array: np.ndarray, path: Path) -> Path:
    """`array` (uint8) as a NIfTI with `src`'s affine and its qform/sform codes, atomically."""
    import nibabel as nib

    img = nib.Nifti1Image(array, src.affine)
    img.set_qform(src.affine, code=int(src.header.get("qform_code", 1) or 1))
    img.set_sform(src.affine, code=int(src.header.get("sform_code", 1) or 1))
    img.set_data_dtype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.nii.gz")
    try:
        nib.save(img, str(tmp))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
