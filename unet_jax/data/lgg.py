"""The Kaggle LGG brain MRI segmentation set (Buda et al. 2019): FLAIR abnormality masks.

Layout (``kaggle_3m``, as downloaded; any subset of the patient folders works)::

    ROOT/TCGA_CS_4941_19960909/TCGA_CS_4941_19960909_1.tif        256x256x3 uint8
                               TCGA_CS_4941_19960909_1_mask.tif   256x256 {0, 255}
                               ... _2.tif, _2_mask.tif, ... (numbered from 1, no gaps)
    ROOT/TCGA_.../...

The three channels of a slice are pre-contrast, FLAIR and post-contrast. Each patient folder
is one volume: its slices are ordered by their number (numerically: 2 before 10), the
patient (folder name) is every slice's :attr:`Example.case`, so per-case figures are
per-patient (per-volume) Dice, all of a patient's voxels pooled.

Volume-level preprocessing (options; the reference is mateuszbuda/brain-segmentation-pytorch),
each computed over the whole volume once, when the dataset is built:

1. ``crop``: voxels below 10% of the volume's maximum are set to 0 and every slice is
   cropped to the (y, x) bounding box of what is left (the brain), the same box for all
   slices of the volume; no slice is dropped;
2. pad to a square (zeros, centred) and resize to ``image_size`` (cubic for the image, the
   reference uses an order-2 spline; nearest neighbour about pixel centres for the mask);
3. ``rescale``: intensities mapped from the volume's [10th, 99th] percentile (all channels
   together) to [0, 1], clipped;
4. ``standardize``: each channel to mean 0, std 1 over the volume.

``head_mask`` (not in the reference; the entry point's default) first clears the
background of a channel whose background is not dark. A few Kaggle volumes have one (of
the 50 here, the pre-contrast channel of TCGA_FG_7637 and TCGA_FG_A4MU lies on a grey
field): the 10% threshold then keeps the whole slice, the crop box is the whole slice and
the channel's statistics are the field's. A channel counts as bright when most voxels of
the slices' outer 4-pixel frame are at or above the threshold; in such a volume, each
slice's voxels outside the head (below the threshold in every other channel and connected
to the slice's border through such voxels) are set to 0 in the bright channels. Volumes
without a bright channel are untouched.

``sequences`` picks which of the three the model sees, e.g. ``("flair",)``: the volume
preprocessing above runs on all three (the crop and head mask need them), then the others
are dropped from the model's input; 2.5D input keeps the same ones of every neighbour.

``context=c`` feeds the c neighbouring slices on each side as extra channels (2.5D input,
3 * (2c + 1) channels: slices k-c..k+c of three each, the end slices repeated at a volume's
ends), each through the same volume preprocessing; the label is slice k's.

``soft_labels=True`` resizes the masks to the model's grid as area fractions (each model
pixel: the share of its area that the stored mask covers, cv2.INTER_AREA) instead of
nearest-neighbour class ids, so training sees where a lesion's edge falls inside a pixel;
at 128x128 the masks so resized and mapped back score a mean per-patient Dice of 0.995
against 0.970 (``benchmarks.lgg_resize_ceiling``). Only the training targets change.

**Where Dice is computed.** Every figure (validation and test) is computed on the stored
256x256 masks: the model's probabilities on the preprocessed grid are resized to the
padded square, un-padded and put back into the crop box (probability 0 outside it, where
every voxel of every slice was below 10% of the maximum). So figures compare with
published per-patient Dice on the original slices.

Splits are by patient, never by slice: a split file (JSON: ``{"train": [...], "val":
[...], "test": [...]}`` of patient folder names, see :func:`make_patient_split`),
``folds``/``fold`` (K-fold cross-validation: patients shuffled with ``split_seed`` and cut
into K folds; fold i is the test set, validation patients are carved from the rest by the
engine), ``split="all"`` (every patient is a test patient: evaluating a trained run), or,
by default, a seeded split computed like the file.

Training slices are drawn per patient, weighted towards slices with abnormality
(:meth:`LggDataset.sampling_weights`, as in the reference); patients with small lesions
can be drawn more often than the others (``patient_weight_power``,
:func:`patient_sampling_weights`).

A trained run is evaluated on other patients with ``python -m experiments.brain_mri
--evaluate RUN --data-dir OTHER`` (this dataset's volume preprocessing). Not with
``unet_jax.predict`` / ``load_predictor``: those preprocess each image on its own (the run's
``image_size``, per-image standardisation, no crop), not each volume.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from tqdm.auto import tqdm

from unet_jax.config import PreprocessConfig
from unet_jax.data.base import DataError, Dataset, Example, InMemorySource, Source, Subset, register, source_cases
from unet_jax.data.imageio import read_image, read_mask
from unet_jax.data.preprocess import LABEL_INTERPOLATION

__all__ = ["LGG_LAYOUT", "SEQUENCES", "LggDataset", "LggSource", "brain_threshold", "list_patients",
           "make_patient_split", "resolve_lgg_dir", "scan_patient"]

LGG_LAYOUT = """\
ROOT/TCGA_CS_4941_19960909/TCGA_CS_4941_19960909_1.tif  (256x256x3 slice)
ROOT/TCGA_CS_4941_19960909/TCGA_CS_4941_19960909_1_mask.tif  (its mask, 0/255)
... one folder per patient, slices numbered 1, 2, 3, ... (Kaggle's kaggle_3m)"""

_SLICE = re.compile(r"^(?P<stem>.+)_(?P<number>\d+)(?P<mask>_mask)?\.tiff?$", re.IGNORECASE)
DEFAULT_DIR = Path("data/kaggle_3m")
SEQUENCES = ("pre", "flair", "post")  # a stored slice's channels: pre-contrast, FLAIR, post-contrast

Slice = tuple[str, int, Path, Path | None]  # (patient, slice number, image path, mask path: None unlabelled)


def brain_threshold(volume: np.ndarray) -> float:
    """The crop's threshold of a volume: 10% of its maximum (the reference's rule). Voxels
    below it are set to 0 before anything else reads them."""
    return 0.1 * float(volume.max())


def bright_background_channels(volume: np.ndarray, threshold: float) -> tuple[int, ...]:
    """The channels of a (N, H, W, C) volume whose background is not dark: more than half of
    the voxels in the slices' outer 4-pixel frame at or above `threshold`."""
    frame = np.ones(volume.shape[1:3], bool)
    frame[4:-4, 4:-4] = False
    edge = volume[:, frame, :]  # (N, frame pixels, C)
    return tuple(c for c in range(volume.shape[-1]) if np.mean(edge[..., c] >= threshold) > 0.5)


def clear_background(image: np.ndarray, bright: tuple[int, ...], threshold: float) -> np.ndarray:
    """`image` (H, W, 3k: k slices of three channels) with the voxels outside the head set to
    0 in the `bright` channels of each slice: outside is below `threshold` in every other
    channel and connected to the border through such voxels (holes inside the head stay)."""
    x = np.array(image, copy=True)
    h, w = x.shape[:2]
    groups = x.reshape(h, w, -1, 3)  # a view: writing to it writes x
    dark = [c for c in range(3) if c not in bright]
    for g in range(groups.shape[2]):
        low = np.all(groups[:, :, g, dark] < threshold, axis=-1).astype(np.uint8)
        _, labels = cv2.connectedComponents(low, connectivity=4)  # 0: head voxels
        border = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
        outside = np.isin(labels, border[border > 0])
        for c in bright:
            groups[:, :, g, c][outside] = 0
    return x


def resolve_lgg_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """`data_dir`, else ``$UNET_JAX_LGG_DIR``, else ``./data/kaggle_3m``."""
    return Path(data_dir or os.environ.get("UNET_JAX_LGG_DIR") or DEFAULT_DIR)


def list_patients(root: str | os.PathLike) -> list[str]:
    """The patient folders under `root` (sorted), or a DataError naming the folder."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"LGG folder {root} does not exist (give --data-dir or set $UNET_JAX_LGG_DIR). "
                        f"Expected layout:\n{LGG_LAYOUT}")
    patients = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith((".", "_")))
    if not patients:
        raise DataError(f"LGG folder {root} holds no patient folders. Expected layout:\n{LGG_LAYOUT}")
    return patients


def scan_patient(folder: Path, *, require_masks: bool = True) -> list[tuple[int, Path, Path | None]]:
    """(slice number, image, mask) of one patient folder, by slice number; errors name files.

    With ``require_masks=False`` a folder without any mask gives None masks (slices to
    predict); a folder with some masks must still have one for every slice."""
    images: dict[int, Path] = {}
    masks: dict[int, Path] = {}
    for p in sorted(folder.iterdir()):
        if not p.is_file() or p.suffix.lower() not in (".tif", ".tiff"):
            continue
        m = _SLICE.match(p.name)
        if m is None or m["stem"] != folder.name:
            raise DataError(f"{p}: unexpected file name; slices of {folder} are named {folder.name}_<number>.tif "
                            f"and their masks {folder.name}_<number>_mask.tif")
        (masks if m["mask"] else images)[int(m["number"])] = p
    if not images and not masks:
        raise DataError(f"patient folder {folder} holds no slices ({folder.name}_<number>.tif). "
                        f"Expected layout:\n{LGG_LAYOUT}")
    if not masks and not require_masks:
        _check_numbering(folder, sorted(images))
        return [(k, images[k], None) for k in sorted(images)]
    lonely = [images[k].name for k in sorted(set(images) - set(masks))]
    if lonely:
        raise DataError(f"{folder}: slice(s) without a mask: {', '.join(lonely[:10])}"
                        f"{' ...' if len(lonely) > 10 else ''} (expected <name>_mask.tif next to each slice)")
    lonely = [masks[k].name for k in sorted(set(masks) - set(images))]
    if lonely:
        raise DataError(f"{folder}: mask(s) without a slice: {', '.join(lonely[:10])}"
                        f"{' ...' if len(lonely) > 10 else ''}")
    numbers = sorted(images)
    _check_numbering(folder, numbers)
    return [(k, images[k], masks[k]) for k in numbers]


def _check_numbering(folder: Path, numbers: list[int]) -> None:
    missing = sorted(set(range(1, numbers[-1] + 1)) - set(numbers))
    if missing:
        raise DataError(f"{folder}: slice number(s) {', '.join(map(str, missing[:10]))} missing (slices are numbered "
                        f"1..{numbers[-1]} without gaps; a volume with a hole would be scored wrongly)")


def make_patient_split(patients: Sequence[str], *, seed: int = 0, val_fraction: float = 0.1,
                       test_fraction: float = 0.2) -> dict[str, Any]:
    """A seeded patient-level train/val/test split (what ``experiments/splits/*.json`` hold).

    Patients are sorted, permuted with ``numpy.random.default_rng(seed)``; the first
    ``round(test_fraction * n)`` are test, the next ``round(val_fraction * n)`` (at least 1
    when the fraction is > 0) validation, the rest training.
    """
    patients = sorted(patients)
    n = len(patients)
    n_test = max(1, int(round(test_fraction * n)))
    n_val = max(1 if val_fraction > 0 else 0, int(round(val_fraction * n)))
    if n_test + n_val >= n:
        raise DataError(f"{n} patient(s) cannot be split into {n_test} test and {n_val} validation patients with "
                        "at least one left to train on")
    order = np.random.default_rng(seed).permutation(n)
    pick = [patients[i] for i in order]
    return {"seed": seed, "val_fraction": val_fraction, "test_fraction": test_fraction,
            "train": sorted(pick[n_test + n_val:]), "val": sorted(pick[n_test:n_test + n_val]),
            "test": sorted(pick[:n_test])}


def fold_patients(patients: Sequence[str], folds: int, seed: int) -> list[list[str]]:
    """`patients` shuffled with `seed` and cut into `folds` near-equal folds (a partition)."""
    patients = sorted(patients)
    if not 2 <= folds <= len(patients):
        raise DataError(f"--folds {folds}: K-fold cross-validation needs 2 <= K <= the {len(patients)} patients")
    order = np.random.default_rng(seed).permutation(len(patients))
    return [sorted(patients[i] for i in part) for part in np.array_split(order, folds)]


class LggSource:
    """Slices of some patients, by patient then slice number; each access decodes 1 + 2c slices
    (``context`` c: the c slices on each side of the patient's slice, the end slices repeated
    at the volume's ends, as channels k-c..k+c of three each)."""

    def __init__(self, slices: list[Slice], areas: dict[tuple[str, int], int], context: int = 0):
        self.slices, self.context = slices, context
        self.cases = [s[0] for s in slices]
        self.areas = [areas[(s[0], s[1])] for s in slices]  # abnormal pixels per slice (stored masks)
        # Each patient's first and last index: its slices are consecutive.
        self._first: dict[str, int] = {}
        self._last: dict[str, int] = {}
        for i, case in enumerate(self.cases):
            self._first.setdefault(case, i)
            self._last[case] = i

    def __len__(self) -> int:
        return len(self.slices)

    def __getitem__(self, index: int) -> Example:
        patient, number, image_path, mask_path = self.slices[index]
        first, last = self._first[patient], self._last[patient]
        image = read_image(image_path)
        if self.context:
            around = [self.slices[min(max(index + d, first), last)][2] for d in range(-self.context, self.context + 1)]
            image = np.concatenate([image if p == image_path else read_image(p) for p in around], axis=-1)
        label = np.zeros(image.shape[:2], np.uint8) if mask_path is None else (read_mask(mask_path) > 0).astype(np.uint8)
        return Example(id=f"{patient}_{number}", image=image, label=label, case=patient)


class _Volume:
    """One patient's volume-level preprocessing: crop box, padding, intensity statistics."""

    def __init__(self, box: tuple[int, int, int, int], threshold: float, bright: tuple[int, ...] = ()):
        self.box, self.threshold, self.bright = box, threshold, bright  # bright: channels cleared outside the head
        self.lo = self.hi = 0.0
        self.mean = np.zeros(3, np.float32)
        self.std = np.ones(3, np.float32)

    def geometry(self, image: np.ndarray, size: int | None, interpolation: int) -> np.ndarray:
        """Crop to the box (the whole slice without cropping), pad to a square and resize
        one (H, W[, C]) slice."""
        y0, y1, x0, x1 = self.box
        a = image[y0:y1, x0:x1]
        h, w = a.shape[:2]
        side = max(h, w)
        (pt, pb), (pl, pr) = _pad(side - h), _pad(side - w)
        pad = ((pt, pb), (pl, pr)) + (((0, 0),) if a.ndim == 3 else ())
        a = np.pad(a, pad)
        if size is not None and side != size:
            a = cv2.resize(a, (size, size), interpolation=interpolation).reshape((size, size) + a.shape[2:])
        return a


def _pad(diff: int) -> tuple[int, int]:
    return diff // 2, diff - diff // 2  # floor before, ceil after (the reference's pad_sample)


@register("lgg")
class LggDataset(Dataset):
    """Kaggle LGG brain MRI (see the module docstring).

    Args:
      root: the ``kaggle_3m`` folder (None: ``$UNET_JAX_LGG_DIR``, else ``./data/kaggle_3m``).
      split: a split file (path to JSON with "train", "val", "test" lists of patients),
        "all" (every patient is a test patient, nothing to train on), or None: a seeded
        split (``split_seed``, ``val_fraction``, ``test_fraction``) by
        :func:`make_patient_split`.
      folds, fold: K-fold cross-validation by patient: fold `fold` (0-based) of `folds` is
        the test set, the others are training patients (validation patients are carved
        from them by the engine, ``--val-size`` patients).
      patients: use only these patient folders (default: every one under root, or those of
        the split file).
      folders: patient folders named one by one, anywhere (instead of `root`'s listing).
      masks: False lets patient folders come without masks (volumes to predict: their
        labels are all background and the dataset is not :attr:`labelled`).
      crop, rescale, standardize: the volume-level preprocessing steps (module docstring).
      head_mask: clear the background of channels whose background is not dark (module
        docstring; off by default, as in the reference).
      uniform_share: training slices are drawn with probability proportional to their
        abnormal area plus this share spread uniformly over the patient's slices (0.1 in
        the reference); None draws slices uniformly.
      patient_weight_power: training patients are drawn with probability proportional to
        their abnormal volume to the power ``-patient_weight_power``
        (:func:`patient_sampling_weights`); 0 (default): each patient equally likely, as in
        the reference; 1: in inverse proportion to the abnormal volume.
      context: the c neighbouring slices on each side fed as extra channels (2.5D input:
        3 * (2c + 1) channels with the three sequences, slices k-c..k+c of three each; the
        end slices repeated at a volume's ends); 0: the slice alone.
      sequences: the stored channels the model sees, by name (:data:`SEQUENCES`: "pre",
        "flair", "post"), in this order; preprocessed with all three, then selected.
      soft_labels: labels on the model's grid as the mask's area fractions (float32 in
        [0, 1]) instead of class ids (module docstring).
      preprocess: its ``image_size`` is the side of the model's input (None: the padded
        square's own size); the channels are `sequences` (times 2c + 1 with `context`).
      progress: a progress bar while reading the volumes.
    """

    name = "lgg"
    volume_preprocessing = ("patient folders (kaggle_3m layout: <patient>/<patient>_<n>.tif), or folders of them: "
                            "python -m unet_jax.predict --run RUN PATIENT_FOLDER... --output DIR")

    input_options = {"crop": True, "rescale": True, "standardize": True, "head_mask": False, "context": 0,
                     "sequences": list(SEQUENCES)}

    def __init__(
        self,
        root: str | os.PathLike | None = None,
        split: str | os.PathLike | None = None,
        split_seed: int = 0,
        val_fraction: float = 0.1,
        test_fraction: float = 0.2,
        folds: int | None = None,
        fold: int | None = None,
        patients: Sequence[str] | None = None,
        folders: Sequence[str | os.PathLike] | None = None,
        masks: bool = True,
        crop: bool = True,
        rescale: bool = True,
        standardize: bool = True,
        head_mask: bool = False,
        uniform_share: float | None = 0.1,
        patient_weight_power: float = 0.0,
        context: int = 0,
        sequences: Sequence[str] = SEQUENCES,
        soft_labels: bool = False,
        preprocess: PreprocessConfig = PreprocessConfig(channels="rgb", clahe=False, normalize="zscore",
                                                        image_size=256),
        progress: bool = True,
    ):
        super().__init__(preprocess)
        if preprocess.channels != "rgb" or preprocess.clahe:
            raise DataError("the LGG dataset feeds the three stored MRI channels as they are: use channels='rgb' "
                            "and no CLAHE")
        if uniform_share is not None and uniform_share < 0:
            raise DataError(f"--uniform-share {uniform_share}: must be >= 0")
        if context < 0:
            raise DataError(f"--context {context}: must be >= 0 (neighbouring slices on each side)")
        if not np.isfinite(patient_weight_power) or patient_weight_power < 0:
            raise DataError(f"--patient-weight-power {patient_weight_power}: must be >= 0 (0: every patient "
                            "equally likely; 1: in inverse proportion to its abnormal volume)")
        self.context = int(context)
        if isinstance(sequences, str) or not sequences or len(set(sequences)) != len(sequences) \
                or not set(sequences) <= set(SEQUENCES):
            named = sequences if isinstance(sequences, str) else ",".join(map(str, sequences))
            raise DataError(f"--sequences {named!r}: name one or more of {', '.join(SEQUENCES)}, each once "
                            "(e.g. flair or pre,flair,post)")
        self.sequences = tuple(sequences)
        self._keep = [SEQUENCES.index(s) for s in self.sequences]
        self.soft_labels = bool(soft_labels)
        if folders is None:
            self.root = resolve_lgg_dir(root)
        else:  # where the named patient folders live (for messages and results.json)
            parents = [str(Path(f).resolve().parent) for f in folders]
            self.root = Path(os.path.commonpath(parents)) if parents else Path(".")
        self.crop, self.rescale, self.standardize, self.head_mask = crop, rescale, standardize, head_mask
        self.bright_background: dict[str, list[int]] = {}  # patient -> channels cleared outside the head
        self.uniform_share = uniform_share
        self.patient_weight_power = float(patient_weight_power)
        if folders is None:
            available = list_patients(self.root)
            self._folders = {p: self.root / p for p in available}
        else:
            self._folders = {}
            for f in map(Path, folders):
                if not f.is_dir():
                    raise DataError(f"patient folder {f} does not exist. Expected layout:\n{LGG_LAYOUT}")
                if f.name in self._folders:
                    raise DataError(f"two patient folders named {f.name}: {self._folders[f.name]} and {f}")
                self._folders[f.name] = f
            available = sorted(self._folders)
        if patients is not None:
            unknown = sorted(set(patients) - set(available))
            if unknown:
                raise DataError(f"patient(s) not found in {self.root}: {', '.join(unknown[:10])}")
            available = sorted(set(patients))
        self.split_info: dict[str, Any]
        val: list[str] = []
        if folds is not None or fold is not None:
            if folds is None or fold is None or not 0 <= fold < folds:
                raise DataError(f"--folds K --fold i needs both, with 0 <= i < K (got folds={folds}, fold={fold})")
            if split is not None:
                raise DataError("give either --split or --folds/--fold, not both")
            parts = fold_patients(available, folds, split_seed)
            test = parts[fold]
            train = sorted(p for p in available if p not in set(test))
            self.split_info = {"kind": f"fold {fold} of {folds}", "seed": split_seed}
        elif split == "all":
            train, test = [], available
            self.split_info = {"kind": "all patients are test patients"}
        elif split is not None:
            train, val, test = self._read_split(Path(split), available)
            self.split_info = {"kind": "file", "file": str(Path(split).resolve())}
        else:
            s = make_patient_split(available, seed=split_seed, val_fraction=val_fraction, test_fraction=test_fraction)
            train, val, test = s["train"], s["val"], s["test"]
            self.split_info = {"kind": "seeded", "seed": split_seed, "val_fraction": val_fraction,
                               "test_fraction": test_fraction}
        self.split_info.update(train=train, val=val, test=test)
        self._volumes: dict[str, _Volume] = {}
        slices: dict[str, list[Slice]] = {
            p: [(p, k, i, m) for k, i, m in scan_patient(self._folders[p], require_masks=masks)]
            for p in train + val + test}
        self.labelled = all(s[3] is not None for ss in slices.values() for s in ss)
        areas: dict[tuple[str, int], int] = {}
        for p in tqdm(train + val + test, desc="reading LGG volumes", unit="patient", leave=False,
                      disable=not progress):
            self._volumes[p] = self._prepare_volume(slices[p], areas)
        self._train, self._val, self._test = (LggSource([s for p in part for s in slices[p]], areas, self.context)
                                              for part in (train, val, test))

    def _read_split(self, path: Path, available: list[str]) -> tuple[list[str], list[str], list[str]]:
        try:
            spec = json.loads(path.read_text())
            train, val, test = (sorted(spec.get(k, [])) for k in ("train", "val", "test"))
        except (OSError, ValueError, AttributeError, TypeError) as e:
            raise DataError(f"cannot read the split file {path}: {e} (expected JSON with 'train', 'val' and 'test' "
                            "lists of patient folder names)") from e
        named = train + val + test
        if len(set(named)) != len(named):
            twice = sorted({p for p in named if named.count(p) > 1})
            raise DataError(f"split file {path}: patient(s) in more than one split: {', '.join(twice[:10])}")
        missing = sorted(set(named) - set(available))
        if missing:
            raise DataError(f"split file {path} names patient(s) not in {self.root}: {', '.join(missing[:10])}"
                            f"{' ...' if len(missing) > 10 else ''}")
        if not train or not test:
            raise DataError(f"split file {path} needs at least one 'train' and one 'test' patient")
        return train, val, test

    def _prepare_volume(self, slices: list[Slice], areas: dict[tuple[str, int], int]) -> _Volume:
        """Reads one patient's slices and masks once: checks them, computes its statistics."""
        images, shape = [], None
        for patient, number, image_path, mask_path in slices:
            image = read_image(image_path)
            mask = np.zeros(image.shape[:2], np.uint8) if mask_path is None else read_mask(mask_path)
            if image.ndim != 3 or image.shape[-1] != 3 or image.dtype != np.uint8:
                raise DataError(f"{image_path}: expected a 3-channel 8-bit slice (pre-contrast, FLAIR, post-contrast), "
                                f"got shape {image.shape} {image.dtype}")
            if shape is None:
                shape = image.shape
            elif image.shape != shape:
                raise DataError(f"{image_path} is {image.shape[1]}x{image.shape[0]} but the other slices of its volume "
                                f"are {shape[1]}x{shape[0]}")
            if mask.shape != image.shape[:2]:
                raise DataError(f"mask {mask_path} is {mask.shape[1]}x{mask.shape[0]} but its slice is "
                                f"{image.shape[1]}x{image.shape[0]}")
            values = np.unique(mask)
            if not set(values.tolist()) <= {0, 255} and not set(values.tolist()) <= {0, 1}:
                raise DataError(f"mask {mask_path} holds values {values[:10].tolist()}: expected a binary 0/255 mask")
            areas[(patient, number)] = int(np.count_nonzero(mask))
            images.append(image)
        volume = np.stack(images)  # (N, H, W, 3) uint8: at most ~90 slices of 256x256x3
        threshold = brain_threshold(volume)
        bright = bright_background_channels(volume, threshold) if self.head_mask and threshold > 0 else ()
        if len(bright) == volume.shape[-1]:
            bright = ()  # no dark channel to tell the head from the background
        if bright:
            self.bright_background[slices[0][0]] = list(bright)
            volume = np.stack([clear_background(im, bright, threshold) for im in volume])
        if self.crop:
            kept = volume >= threshold if threshold > 0 else np.zeros(volume.shape, bool)
            ys = np.flatnonzero(kept.any(axis=(0, 2, 3)))
            xs = np.flatnonzero(kept.any(axis=(0, 1, 3)))
            box = (int(ys[0]), int(ys[-1]) + 1, int(xs[0]), int(xs[-1]) + 1) if ys.size else (0, shape[0], 0, shape[1])
        else:
            box = (0, shape[0], 0, shape[1])
        vol = _Volume(box, threshold, bright)
        if self.rescale or self.standardize:
            x = np.stack([self._geometry(vol, im) for im in images])
            if self.rescale:
                vol.lo, vol.hi = (float(v) for v in np.percentile(x, (10, 99)))
                x = self._rescale(vol, x)
            if self.standardize:
                vol.mean = x.mean(axis=(0, 1, 2), dtype=np.float64).astype(np.float32)
                std = x.std(axis=(0, 1, 2), dtype=np.float64)
                vol.std = np.where(std > 0, std, 1.0).astype(np.float32)
        return vol

    def _geometry(self, vol: _Volume, image: np.ndarray) -> np.ndarray:
        x = image.astype(np.float32)
        if vol.bright:
            x = clear_background(x, vol.bright, vol.threshold)
        if self.crop:
            x[x < vol.threshold] = 0.0  # the reference zeroes what is below 10% of the maximum
        return vol.geometry(x, self.preprocessing.image_size, cv2.INTER_CUBIC)

    def _rescale(self, vol: _Volume, x: np.ndarray) -> np.ndarray:
        span = vol.hi - vol.lo
        return np.clip((x - vol.lo) / (span if span > 0 else 1.0), 0.0, 1.0).astype(np.float32)

    @property
    def num_classes(self) -> int:
        return 2

    @property
    def channels(self) -> int:
        return len(self.sequences) * (2 * self.context + 1)

    @property
    def own_channels(self) -> slice:
        """The stored channels of the slice itself (pre-contrast, FLAIR, post-contrast) in an
        example before :meth:`preprocess`, without the neighbours that `context` adds."""
        return slice(3 * self.context, 3 * self.context + 3)

    def train(self) -> Source:
        return self._train

    def validation(self) -> Source | None:
        """The split file's (or seeded split's) validation patients; with --folds, None:
        the engine carves whole patients from the training ones."""
        return None if self.split_info["kind"].startswith("fold") or self.split_info["kind"].startswith("all") \
            else self._val

    def test(self) -> Source:
        return self._test

    def volume(self, patient: str) -> _Volume:
        if patient not in self._volumes:
            raise DataError(f"patient {patient} is not part of this dataset (its volume statistics were not computed)")
        return self._volumes[patient]

    def preprocess(self, example: Example) -> Example:
        """The model's input: the slice through its volume's crop, pad, resize and intensity
        statistics, then its chosen `sequences`; the label likewise (nearest neighbour, or
        area fractions with `soft_labels`)."""
        vol = self.volume(example.case_id)
        x = self._geometry(vol, np.asarray(example.image))
        if self.rescale:
            x = self._rescale(vol, x)
        if self.standardize:
            n = 2 * self.context + 1  # every neighbour slice with its volume's per-channel statistics
            x = (x - np.tile(vol.mean, n)) / np.tile(vol.std, n)
        elif not self.rescale:
            x = x / np.float32(255.0)
        if self.sequences != SEQUENCES:
            h, w = x.shape[:2]
            x = x.reshape(h, w, -1, 3)[..., self._keep].reshape(h, w, -1)
        if self.soft_labels:  # binary masks: the foreground's share of each model pixel
            label = vol.geometry(np.asarray(example.label, np.float32), self.preprocessing.image_size,
                                 cv2.INTER_AREA).clip(0.0, 1.0)
        else:
            label = vol.geometry(np.asarray(example.label, np.uint8), self.preprocessing.image_size,
                                 LABEL_INTERPOLATION)
        return example.replace(image=np.ascontiguousarray(x, np.float32), label=label, valid=None)

    def restore_probs(self, example: Example, probs: np.ndarray) -> np.ndarray:
        """Probabilities on the preprocessed grid back onto the stored slice: resized to the
        padded square, un-padded, placed in the crop box (0 outside)."""
        vol = self.volume(example.case_id)
        y0, y1, x0, x1 = vol.box
        h, w = y1 - y0, x1 - x0
        side = max(h, w)
        p = np.asarray(probs, np.float32)
        if p.shape[0] != side:
            p = cv2.resize(p, (side, side), interpolation=cv2.INTER_LINEAR).reshape((side, side) + p.shape[2:])
        top, left = _pad(side - h)[0], _pad(side - w)[0]
        out = np.zeros(np.asarray(example.label).shape + p.shape[2:], np.float32)
        out[y0:y1, x0:x1] = p[top:top + h, left:left + w]
        return out

    def sampling_weights(self, source: Source) -> np.ndarray | None:
        """Per patient: slice probability ``(area + share * total / n) / (total * (1 + share))``
        (area: the slice's abnormal pixels, total: the patient's, n: its slices; uniform when
        the patient has no abnormality or ``uniform_share`` is None), times the patient's
        probability: equal for every patient by default (the reference picks a patient
        uniformly, then a slice with these probabilities), else
        :func:`patient_sampling_weights` of the totals. None: uniform over slices."""
        if self.uniform_share is None and self.patient_weight_power == 0:
            return None
        cases, areas = _cases_and_areas(source)
        weights = np.zeros(len(cases), np.float64)
        by_case: dict[str, list[int]] = {}
        for i, c in enumerate(cases):
            by_case.setdefault(c, []).append(i)
        case_areas = [np.asarray([areas[i] for i in idx], np.float64) for idx in by_case.values()]
        totals = [a.sum() for a in case_areas]
        patient_p = patient_sampling_weights(totals, self.patient_weight_power)
        for idx, a, total, pp in zip(by_case.values(), case_areas, totals, patient_p):
            if self.uniform_share is None or total == 0:
                p = np.full(len(a), 1.0 / len(a))
            else:
                p = (a + self.uniform_share * total / len(a)) / (total * (1 + self.uniform_share))
            weights[idx] = p * pp
        return weights

    def test_reporter(self, workdir: Any, *, ignore_empty: bool = True) -> Any:
        """Per-patient Dice (with and without LCC), dsc.png, outline overlays and a GIF per
        test patient (the FLAIR channel in grey), see :mod:`unet_jax.volumes`."""
        from unet_jax.volumes import VolumeReporter

        own = self.own_channels
        return VolumeReporter(workdir, num_classes=2, ignore_empty=ignore_empty,
                              display=lambda ex: np.asarray(ex.image)[..., own][..., 1], labelled=self.labelled)

    @classmethod
    def for_prediction(cls, inputs: Sequence[str], *, options: dict[str, Any], preprocess: PreprocessConfig,
                       labels: str | None = None, progress: bool = True) -> LggDataset:
        """Every patient folder in `inputs` (a folder holding ``<patient>_<n>.tif`` slices
        is a patient; any other folder is searched for patient folders), preprocessed as the
        run's `options` say; :attr:`labelled` when every slice has its ``_mask.tif``."""
        if labels is not None:
            raise DataError("--labels does not apply to LGG runs: a slice's mask sits next to it "
                            "(<patient>_<n>_mask.tif) and is used when every slice has one")
        folders: list[Path] = []
        for name in inputs:
            path = Path(name)
            if not path.is_dir():
                raise DataError(f"{path}: an LGG run predicts patient folders (or folders of them), not single files. "
                                f"Expected layout:\n{LGG_LAYOUT}")
            if any(_SLICE.match(p.name) for p in path.iterdir()):
                folders.append(path)
            else:
                folders += [path / p for p in list_patients(path)]
        steps = {k: options[k] for k in cls.input_options if k in options}
        return cls(folders=folders, split="all", masks=False, uniform_share=None, preprocess=preprocess,
                   progress=progress, **steps)

    def prediction_writer(self, outdir: Any) -> Any:
        """``<outdir>/<patient>/<patient>_<n>_pred.png`` (0/255, the stored slice's size, like
        the dataset's masks), ``_prob.png`` (probability x 255) and ``_overlay.png``."""
        return _SliceWriter(Path(outdir), self.labelled, self.own_channels)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "root": str(self.root.resolve()), "split": self.split_info,
                "num_train": len(self._train), "num_val": len(self._val), "num_test": len(self._test),
                "preprocessing": {"crop": self.crop, "rescale": self.rescale, "standardize": self.standardize,
                                  "head_mask": self.head_mask, "bright_background": self.bright_background,
                                  "image_size": self.preprocessing.image_size, "context": self.context,
                                  "sequences": list(self.sequences),
                                  "training_labels": "area fractions" if self.soft_labels else "nearest"},
                "sampling": ("uniform" if self.uniform_share is None else
                             f"area-weighted per patient, uniform share {self.uniform_share}")
                + (f"; patients weighted by abnormal volume ** -{self.patient_weight_power}"
                   if self.patient_weight_power else ""),
                "evaluation_grid": "stored 256x256 masks (predictions mapped back through the crop box)"}


class _SliceWriter:
    def __init__(self, outdir: Path, labelled: bool, own_channels: slice):
        self.outdir, self.labelled, self.own_channels, self.files = outdir, labelled, own_channels, []

    def add(self, example: Example, probs: np.ndarray, pred: np.ndarray) -> None:
        from unet_jax.visualize import save_prediction

        label = np.asarray(example.label) if self.labelled else None  # overlay against it, else tinted
        folder = self.outdir / str(example.case)
        save_prediction(folder, example.id, probs, pred, label, image=np.asarray(example.image)[..., self.own_channels])
        self.files.append(folder / f"{example.id}_pred.png")

    def finish(self) -> list[Path]:
        return self.files


def patient_sampling_weights(totals: Sequence[float], power: float) -> np.ndarray:
    """Probability of drawing each patient: ``(total / m) ** -power``, normalised to sum to 1.

    `totals`: each patient's abnormal volume (voxels, > 0 or 0); m: the median of the
    nonzero totals. A patient without abnormality is weighted as a median one (1), since
    its volume gives no lesion size to balance. ``power`` 0: every patient equally likely;
    1: patient probability times abnormal volume is the same for every lesioned patient.
    Shape: (P,) -> (P,), float64.
    """
    t = np.asarray(totals, np.float64)
    if t.ndim != 1 or t.size == 0 or np.any(t < 0) or not np.all(np.isfinite(t)):
        raise ValueError(f"patient totals must be a non-empty list of volumes >= 0, got {totals!r}")
    w = np.ones_like(t)
    lesioned = t > 0
    if power and lesioned.any():
        w[lesioned] = (t[lesioned] / np.median(t[lesioned])) ** -power
    return w / w.sum()


def _cases_and_areas(source: Source) -> tuple[list[str], list[int]]:
    """Case id and abnormal area of each example of `source` (through Subsets; other
    sources are read)."""
    if isinstance(source, LggSource):
        return list(source.cases), list(source.areas)
    if isinstance(source, Subset):
        cases, areas = _cases_and_areas(source.source)
        return [cases[i] for i in source.indices], [areas[i] for i in source.indices]
    if isinstance(source, InMemorySource):
        return [e.case_id for e in source.examples], [int(np.count_nonzero(e.label)) for e in source.examples]
    cases = source_cases(source)
    examples = [source[i] for i in range(len(source))]
    return (cases or [e.case_id for e in examples]), [int(np.count_nonzero(e.label)) for e in examples]
