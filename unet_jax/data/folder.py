"""A folder of images and masks: the layout most segmentation tutorials use.

Either a root with both splits::

    ROOT/train/images/  a.png b.png ...        ROOT/test/images/  ...
    ROOT/train/labels/  a.png b.png ...        ROOT/test/labels/  ...   (or masks/)

or one folder of images and one of masks (``images=``, ``masks=``, also ``ROOT/images`` and
``ROOT/masks``), split into train and test by file, seeded (``test_fraction``).

Images are PNG, JPEG, TIFF, BMP or GIF, gray or RGB(A), 8- or 16-bit, of any sizes. A mask
pairs with the image of the same file stem, after an optional suffix (``a.png`` with
``a_mask.png``; found automatically among common ones, or given). Masks hold class ids:
binary 0/1 or 0/255, or 0, 1, 2, ... for several classes (palette PNGs give their
indices). Everything is checked when the dataset is built, before any training: unpaired
files, masks whose size differs from their image, values that are not classes (0/128/255
after JPEG compression), unreadable files, empty folders, an empty test split.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from unet_jax.config import PreprocessConfig
from unet_jax.data.base import DataError, Dataset, Example, Source, register
from unet_jax.data.imageio import IMAGE_EXTENSIONS, image_shape, read_image, read_mask

__all__ = ["FOLDER_LAYOUT", "FolderDataset", "FolderSource"]

LABEL_DIRS = ("labels", "masks", "label", "mask", "annotations", "gt")
MASK_SUFFIXES = ("", "_mask", "_masks", "-mask", "_label", "_labels", "_seg", "_gt", "_manual1", "_segmentation")
MAX_AUTO_CLASSES = 64  # beyond this, mask values are taken for a mistake unless --classes says so

FOLDER_LAYOUT = """\
ROOT/train/images/  a.png b.png ...   ROOT/train/labels/ (or masks/)  a.png b.png ...
ROOT/test/images/   ...               ROOT/test/labels/  (or masks/)  ...
or: --images DIR --masks DIR [--test-fraction 0.2] (also ROOT/images + ROOT/masks)"""

Pair = tuple[str, Path, Path]  # (id = the image's stem, image path, mask path)


def _files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise DataError(f"folder {folder} does not exist. Expected layout:\n{FOLDER_LAYOUT}")
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    if not files:
        raise DataError(f"folder {folder} holds no images ({', '.join(IMAGE_EXTENSIONS)}). Expected layout:\n"
                        f"{FOLDER_LAYOUT}")
    return files


def _by_stem(files: list[Path], folder: Path) -> dict[str, Path]:
    out: dict[str, Path] = {}
    for p in files:
        if p.stem in out:
            raise DataError(f"{out[p.stem].name} and {p.name} in {folder} share the stem {p.stem!r}: "
                            "images and masks pair by stem, so keep one of them")
        out[p.stem] = p
    return out


def _list(names: list[str], limit: int = 10) -> str:
    return ", ".join(names[:limit]) + (f" (and {len(names) - limit} more)" if len(names) > limit else "")


def pair_files(images_dir: Path, masks_dir: Path, mask_suffix: str | None = None) -> tuple[list[Pair], str]:
    """Images paired with masks by stem; returns the pairs (sorted by id) and the suffix used.

    With `mask_suffix` None, the suffix among :data:`MASK_SUFFIXES` that pairs the most
    images is used. Any image without a mask or mask without an image is an error that
    lists them.
    """
    images = _by_stem(_files(images_dir), images_dir)
    masks = _by_stem(_files(masks_dir), masks_dir)
    candidates = [mask_suffix] if mask_suffix is not None else list(MASK_SUFFIXES)
    suffix = max(candidates, key=lambda sfx: sum(f"{s}{sfx}" in masks for s in images))
    lonely_images = [images[s].name for s in images if f"{s}{suffix}" not in masks]
    paired_masks = {f"{s}{suffix}" for s in images}
    lonely_masks = [masks[m].name for m in masks if m not in paired_masks]
    if lonely_images or lonely_masks:
        parts = []
        if lonely_images:
            parts.append(f"{len(lonely_images)} image(s) in {images_dir} without a mask in {masks_dir}: "
                         f"{_list(lonely_images)}")
        if lonely_masks:
            parts.append(f"{len(lonely_masks)} mask(s) in {masks_dir} without an image: {_list(lonely_masks)}")
        raise DataError("; ".join(parts) + f". Masks pair with images by file stem plus the suffix {suffix!r}"
                        + ("" if mask_suffix is not None else " (the best of the common ones)")
                        + "; give it with --mask-suffix, or add or remove the files listed.")
    return [(s, images[s], masks[f"{s}{suffix}"]) for s in sorted(images)], suffix


class FolderSource:
    """The pairs of one split; each access decodes one image and its mask."""

    def __init__(self, pairs: list[Pair], binary_255: bool):
        self.pairs, self.binary_255 = pairs, binary_255

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> Example:
        example_id, image_path, mask_path = self.pairs[index]
        mask = read_mask(mask_path)
        label = (mask > 0) if self.binary_255 else mask
        return Example(id=example_id, image=read_image(image_path), label=label.astype(np.uint8))


def check_masks(pairs: list[Pair], classes: int | None, progress: bool = True) -> tuple[int, bool]:
    """Reads every mask once: sizes against the image headers and values against classes.

    Returns (number of classes, whether the masks are binary 0/255). Raises DataError
    naming the first file with a problem.
    """
    values: set[int] = set()
    for _, image_path, mask_path in tqdm(pairs, desc="checking masks", unit="mask", leave=False,
                                         disable=not progress or len(pairs) < 200):
        mask = read_mask(mask_path)
        shape = image_shape(image_path)
        if mask.shape != shape:
            raise DataError(f"mask {mask_path} is {mask.shape[1]}x{mask.shape[0]} (WxH) but its image {image_path} "
                            f"is {shape[1]}x{shape[0]}: a mask must label its image pixel for pixel")
        found = set(np.unique(mask).tolist())
        values |= found
        if classes is not None and max(found) >= classes and not (classes == 2 and found <= {0, 255}):
            raise DataError(f"--classes {classes} is smaller than the largest label value {max(found)} "
                            f"(in {mask_path}): class ids run from 0 to classes - 1")
        if classes is None and max(found) >= MAX_AUTO_CLASSES and not found <= {0, 255}:
            raise DataError(
                f"mask {mask_path} has values {_list([str(v) for v in sorted(found)])}: these are neither class ids "
                f"0, 1, 2, ... nor a binary 0/255 mask. JPEG compression creates such values: save masks "
                "losslessly (PNG, TIFF). If they really are class ids, pass --classes.")
    if values <= {0, 255} and 255 in values:
        if classes not in (None, 2):
            raise DataError(f"the masks hold only 0 and 255 (a binary task) but --classes is {classes}")
        return 2, True
    if classes is not None:
        return classes, False
    if max(values) >= MAX_AUTO_CLASSES:
        raise DataError(f"the masks mix the values {_list([str(v) for v in sorted(values)])}: some masks are 0/1 and "
                        "others 0/255? Save all masks one way (class ids 0, 1, 2, ... or binary 0/255), or pass --classes")
    return max(2, max(values) + 1), False


def split_pairs(pairs: list[Pair], test_fraction: float, seed: int) -> tuple[list[Pair], list[Pair]]:
    """(train, test): a seeded split by file; every pair lands in exactly one of the two."""
    n_test = int(round(test_fraction * len(pairs)))
    if not 0 < n_test < len(pairs):
        raise DataError(f"--test-fraction {test_fraction} of {len(pairs)} image(s) gives {n_test} test image(s); "
                        "both splits need at least one: choose a fraction between "
                        f"{1 / len(pairs):.3g} and {1 - 1 / len(pairs):.3g}" if len(pairs) > 1 else
                        f"only {len(pairs)} image: a train/test split needs at least two")
    test_idx = set(np.random.default_rng(seed).permutation(len(pairs))[:n_test].tolist())
    return ([p for i, p in enumerate(pairs) if i not in test_idx], [p for i, p in enumerate(pairs) if i in test_idx])


def _label_dir(split_dir: Path) -> Path:
    for name in LABEL_DIRS:
        if (split_dir / name).is_dir():
            return split_dir / name
    raise DataError(f"{split_dir} has no label folder ({' or '.join(LABEL_DIRS)}). Expected layout:\n{FOLDER_LAYOUT}")


@register("folder")
class FolderDataset(Dataset):
    """Images and masks from folders (see the module docstring for the layouts).

    Args:
      root: a folder with ``train/`` and ``test/`` (each ``images/`` + ``labels/`` or
        ``masks/``), or with ``images/`` + ``masks/`` to be split.
      images, masks: the image and mask folders of a dataset to be split (instead of root).
      test_fraction: share of the files held out for testing when splitting.
      split_seed: seed of that split.
      mask_suffix: what a mask's stem adds to its image's (``"_mask"``); None: detected.
      classes: classes including background; None: from the masks (binary for 0/1 and
        0/255, else the largest value + 1).
      preprocess: image preprocessing.
      progress: a progress bar while checking many masks.
    """

    name = "folder"

    def __init__(
        self,
        root: str | os.PathLike | None = None,
        images: str | os.PathLike | None = None,
        masks: str | os.PathLike | None = None,
        test_fraction: float = 0.2,
        split_seed: int = 0,
        mask_suffix: str | None = None,
        classes: int | None = None,
        preprocess: PreprocessConfig = PreprocessConfig(channels="rgb", clahe=False, normalize="zscore"),
        progress: bool = True,
    ):
        super().__init__(preprocess)
        if classes is not None and classes < 2:
            raise DataError(f"--classes {classes}: a segmentation needs at least 2 classes (background and one)")
        if (root is None) == (images is None and masks is None) or (images is None) != (masks is None):
            raise DataError("give either a root folder, or both an images folder and a masks folder")
        self.location: dict[str, str] = {}
        if root is not None and (Path(root) / "train").is_dir():
            root = Path(root)
            train, self.mask_suffix = pair_files(root / "train" / "images", _label_dir(root / "train"), mask_suffix)
            test, _ = pair_files(root / "test" / "images", _label_dir(root / "test"), self.mask_suffix)
            self.location["root"] = str(root.resolve())
        else:
            images_dir = Path(images) if images is not None else Path(root) / "images"
            masks_dir = Path(masks) if masks is not None else _label_dir(Path(root))
            pairs, self.mask_suffix = pair_files(images_dir, masks_dir, mask_suffix)
            train, test = split_pairs(pairs, test_fraction, split_seed)
            self.location.update(images=str(images_dir.resolve()), masks=str(masks_dir.resolve()))
        self._classes, binary_255 = check_masks(train + test, classes, progress)
        self._train, self._test = FolderSource(train, binary_255), FolderSource(test, binary_255)

    @property
    def num_classes(self) -> int:
        return self._classes

    def train(self) -> Source:
        return self._train

    def test(self) -> Source:
        return self._test

    def stored_channels(self) -> str:
        """"gray" or "rgb": what the first training image holds (for ``--channels auto``)."""
        image = read_image(self._train.pairs[0][1])
        return "gray" if image.ndim == 2 else "rgb"

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), **self.location, "mask_suffix": self.mask_suffix,
                "num_train": len(self._train), "num_test": len(self._test),
                "mask_values": "binary 0/255" if self._train.binary_255 else "class ids"}
