"""What every dataset provides: examples, random-access sources, and the dataset registry.

A dataset is a small class: where its train and test examples come from (random-access
*sources* that decode one example per access), how many classes its labels have, and how
an image is preprocessed. The training engine (:mod:`unet_jax.training.run`) does the rest.

    from unet_jax import data

    ds = data.get("folder", root="my_data")      # or "drive", "synthetic", ...
    ex = ds.train()[0]                           # an Example, decoded on access
    x = ds.preprocess(ex).image                  # float32 (H, W, C), the model's input

A new dataset subclasses :class:`Dataset` and registers itself with :func:`register`.
"""

from __future__ import annotations

import abc
import copy
import dataclasses
from collections.abc import Callable, Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np

from unet_jax.config import PreprocessConfig

__all__ = [
    "DataError",
    "Dataset",
    "Example",
    "InMemorySource",
    "MappedSource",
    "Source",
    "Subset",
    "available",
    "dataset_class",
    "get",
    "register",
    "source_cases",
]


class DataError(Exception):
    """Input data that cannot be used; the message names the file or folder and the fix."""


@dataclasses.dataclass(frozen=True, eq=False)
class Example:
    """One image with its label.

    Attributes:
      id: unique within its split, used for output file names.
      image: (H, W, C) as stored (uint8 / uint16) or, once preprocessed, float32.
      label: (H, W) integer class ids, 0 = background (binary tasks: {0, 1}); a training
        example of a binary task may instead carry a float soft label, the foreground's
        share of each pixel in [0, 1] (e.g. a mask resized by area).
      valid: optional (H, W) {0, 1} region that counts (DRIVE's field of view): the loss
        and every metric ignore pixels outside it. None: every pixel counts.
      case: the volume or patient the image belongs to (per-case metrics pool its
        images); None: the image is its own case.
    """

    id: str
    image: np.ndarray
    label: np.ndarray
    valid: np.ndarray | None = None
    case: str | None = None

    @property
    def case_id(self) -> str:
        return self.id if self.case is None else self.case

    def replace(self, **changes: Any) -> Example:
        return dataclasses.replace(self, **changes)


@runtime_checkable
class Source(Protocol):
    """Random access to examples (grain's ``RandomAccessDataSource`` protocol)."""

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> Example: ...


class InMemorySource:
    """Examples held in memory (small datasets, or ones already decoded)."""

    def __init__(self, examples: Sequence[Example]):
        self.examples = list(examples)

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> Example:
        return self.examples[index]


def source_cases(source: Source) -> list[str] | None:
    """Each example's case id without reading the examples, when `source` knows them (a
    ``cases`` attribute, passed through :class:`Subset` and :class:`MappedSource`); None
    otherwise (then every example is taken as its own case)."""
    cases = getattr(source, "cases", None)
    return None if cases is None else list(cases)


class MappedSource:
    """`fn` applied to each example of `source` on access (e.g. preprocessing)."""

    def __init__(self, source: Source, fn: Callable[[Example], Example]):
        self.source, self.fn = source, fn

    @property
    def cases(self) -> list[str] | None:
        return source_cases(self.source)

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> Example:
        return self.fn(self.source[index])


class Subset:
    """The examples of `source` at `indices`, in that order."""

    def __init__(self, source: Source, indices: Sequence[int]):
        self.source, self.indices = source, [int(i) for i in indices]

    @property
    def cases(self) -> list[str] | None:
        cases = source_cases(self.source)
        return None if cases is None else [cases[i] for i in self.indices]

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> Example:
        return self.source[self.indices[index]]


class Dataset(abc.ABC):
    """A segmentation dataset: train and test sources, classes, preprocessing.

    Subclasses set `name`, implement :meth:`train` and :meth:`test` and
    :attr:`num_classes`, and may override :meth:`preprocess` (the default applies
    :func:`unet_jax.data.preprocess.preprocess_example` with `self.preprocessing`).
    """

    name: str = ""
    #: what the valid-region mask is called in messages and results ("FOV"), or None.
    valid_region: str | None = None
    #: synthetic data: results say so loudly.
    synthetic: bool = False
    #: None when :meth:`preprocess` needs the image alone; else the preprocessing uses the
    #: whole volume (crop box, intensity statistics), so a single image cannot be
    #: predicted (the app, ``Predictor(image)``): this names the volumes that
    #: ``unet_jax.predict`` takes instead (see :meth:`for_prediction`).
    volume_preprocessing: str | None = None
    #: The keyword options that decide what the model is fed, with the value runs made
    #: before the option existed had: :meth:`for_prediction` rebuilds a run's data with
    #: them, and runs averaged together (an ensemble) must agree on them.
    input_options: dict[str, Any] = {}
    #: False when the test examples carry no labels (volumes given for prediction only);
    #: their labels are then all background and nothing is scored.
    labelled: bool = True

    def __init__(self, preprocess: PreprocessConfig = PreprocessConfig()):
        self.preprocessing = preprocess

    @property
    @abc.abstractmethod
    def num_classes(self) -> int:
        """Classes including background: 2 for a binary task."""

    @property
    def channels(self) -> int:
        """Input channels of the model (after preprocessing)."""
        return self.preprocessing.num_channels

    @abc.abstractmethod
    def train(self) -> Source:
        """The training examples (validation is carved from these by the engine)."""

    @abc.abstractmethod
    def test(self) -> Source:
        """The test examples: used once, for the reported figures."""

    def preprocess(self, example: Example) -> Example:
        """The model's view of `example`: float32 image, label and valid mask resized alike."""
        from unet_jax.data.preprocess import preprocess_example

        return preprocess_example(example, self.preprocessing)

    def with_preprocess(self, preprocess: PreprocessConfig) -> Dataset:
        """The same data with other preprocessing (a shallow copy: nothing is read again)."""
        other = copy.copy(self)
        other.preprocessing = preprocess
        return other

    def describe(self) -> dict[str, Any]:
        """Facts about the data for results.json (where it was read from, counts, ...)."""
        return {"name": self.name, "num_classes": self.num_classes}

    # Optional hooks of the training engine; the defaults keep its plain behaviour.

    def validation(self) -> Source | None:
        """A fixed validation split (e.g. patients listed in a split file); None: the engine
        carves one from :meth:`train` (whole cases when the source knows its cases)."""
        return None

    def sampling_weights(self, source: Source) -> np.ndarray | None:
        """Per-example probabilities of drawing each example of `source` (the training
        examples left after validation) for a patch; None: uniform."""
        return None

    def restore_probs(self, example: Example, probs: np.ndarray) -> np.ndarray:
        """The model's probabilities for preprocessed `example` mapped back onto the stored
        label's grid (default: resized), where every figure is computed."""
        from unet_jax.data.preprocess import resize_probs

        return resize_probs(probs, np.asarray(example.label).shape)

    @classmethod
    def for_prediction(cls, inputs: Sequence[str], *, options: dict[str, Any], preprocess: PreprocessConfig,
                       labels: str | None = None, progress: bool = True) -> Dataset:
        """Datasets with :attr:`volume_preprocessing`: every volume named by `inputs` (paths
        as given on the command line) as a test volume, preprocessed with a trained run's
        `options` and `preprocess`; `labels` (a folder), or labels found beside the inputs,
        make it :attr:`labelled`."""
        raise NotImplementedError(f"{cls.__name__} predicts image by image (unet_jax.predictor.Predictor)")

    def prediction_writer(self, outdir: Any) -> Any:
        """For :meth:`for_prediction` datasets: an object with ``add(example, probs, pred)``
        (each test slice, in order, at the label's resolution) and ``finish() -> list`` of
        the files written under `outdir` (predictions in the input's own format)."""
        raise NotImplementedError(f"{type(self).__name__} does not predict volumes")

    def test_reporter(self, workdir: Any, *, ignore_empty: bool = True) -> Any:
        """An object with ``add(example, probs, pred)`` (each test image, in order, at the
        label's resolution) and ``finish() -> dict`` (extra figures and pictures written
        under `workdir`; the dict goes into results.json under "volumes"), or None."""
        return None


_REGISTRY: dict[str, Callable[..., Dataset]] = {}


def register(name: str) -> Callable[[type[Dataset]], type[Dataset]]:
    """Class decorator adding a dataset to the registry under `name`."""

    def wrap(cls: type[Dataset]) -> type[Dataset]:
        if name in _REGISTRY:
            raise ValueError(f"dataset {name!r} is already registered")
        _REGISTRY[name] = cls
        return cls

    return wrap


def available() -> list[str]:
    """Names accepted by :func:`get`."""
    return sorted(_REGISTRY)


def dataset_class(name: str) -> type[Dataset]:
    """The class registered as `name` (its class attributes, without reading any data)."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown dataset {name!r}; available: {', '.join(available())}")
    return _REGISTRY[name]


def get(name: str, **options: Any) -> Dataset:
    """Builds the dataset `name` with its keyword `options` (and ``preprocess=``)."""
    return dataset_class(name)(**options)
