"""Small, JSON-serialisable configuration objects for a training run.

Every check lives here, in ``__post_init__``, so a configuration read back from a run's
``config.json`` is validated exactly like one built from command-line flags. A bad value
raises :class:`ConfigError`, which names the field (``data.patch_size``); the command-line
entry points translate that name to their flag.
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any, Literal


class ConfigError(ValueError):
    """An invalid configuration value; `field` is its dotted name, e.g. ``data.patch_size``."""

    def __init__(self, field: str, value: Any, requirement: str):
        super().__init__(f"invalid {field} = {value!r}: {requirement}")
        self.field, self.value, self.requirement = field, value, requirement


def _check(section: str, checks: list[tuple[str, bool, str]], obj: Any) -> None:
    for name, ok, requirement in checks:
        if not ok:
            raise ConfigError(f"{section}.{name}", getattr(obj, name), requirement)


@dataclasses.dataclass(frozen=True)
class PreprocessConfig:
    """Whole-image preprocessing, applied once per image before patches are cut.

    channels: "green" (fundus photographs: the vessel contrast is in the green channel),
      "gray" (ITU-R BT.601 luma), or "rgb"; gray images are repeated to RGB and colour
      images turned to gray as needed, so a folder may mix both.
    clahe: contrast-limited adaptive histogram equalisation per channel (8- or 16-bit).
    gamma: ``x ** (1 / gamma)`` on [0, 1] images; 1 disables.
    normalize: "unit" divides by the type's maximum (255, 65535) giving [0, 1];
      "zscore" standardises each channel of each image to mean 0, std 1.
    image_size: resize every image (and its label, nearest neighbour about pixel
      centres) to this square size; None keeps the stored size. Evaluation maps
      predictions back to the stored size, so test figures are always at the original
      resolution.
    """

    channels: Literal["green", "gray", "rgb"] = "green"
    clahe: bool = True
    clahe_clip: float = 2.0
    clahe_tile: int = 8
    gamma: float = 1.0
    normalize: Literal["unit", "zscore"] = "unit"
    image_size: int | None = None

    def __post_init__(self):
        _check("data.preprocess", [
            ("channels", self.channels in ("green", "gray", "rgb"), "one of green, gray, rgb"),
            ("clahe_clip", self.clahe_clip > 0, "must be > 0"),
            ("clahe_tile", self.clahe_tile >= 1, "must be >= 1"),
            ("gamma", self.gamma > 0, "must be > 0"),
            ("normalize", self.normalize in ("unit", "zscore"), "one of unit, zscore"),
            ("image_size", self.image_size is None or self.image_size >= 8, "must be >= 8, or None"),
        ], self)

    @property
    def num_channels(self) -> int:
        """Channels of the preprocessed image (the model's input channels)."""
        return 3 if self.channels == "rgb" else 1


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
    """Patch augmentation. Geometric ops apply to image, label and valid mask alike.

    flips: random horizontal and vertical flips (each with p=0.5).
    rot90: random rotation by a multiple of 90 degrees; with ``flips`` this covers all
      8 symmetries of the square (vessels and most lesions have no preferred
      orientation at patch scale, so these preserve the label).
    brightness: additive shift drawn from U(-brightness, brightness); 0 disables.
    contrast: the patch is scaled about its mean by U(1 - contrast, 1 + contrast).
    gamma: ``x -> x ** g`` on the patch's range [min, max] mapped to [0, 1], g drawn
      log-uniformly from [exp(-gamma), exp(gamma)], then shifted and scaled back to the
      patch's mean and standard deviation (nnU-Net's gamma augmentation); 0 disables.
    per_channel: contrast, brightness and gamma drawn for each channel (scanner
      sequences vary independently) and applied about that channel's own mean and range,
      instead of one draw for the whole patch; with ``channel_group`` the same draws in
      every group.
    Intensity jitter is clipped to [0, 1] for "unit"-normalised images only.
    vertical_flip: with ``flips``, flip vertically too (False: horizontal flips only,
      for images with an up and a down, such as axial brain slices).
    scale, rotate: a random zoom by U(1 - scale, 1 + scale) and rotation by
      U(-rotate, rotate) degrees about the patch centre (bilinear image, nearest label;
      pixels brought in from outside the patch are 0 and do not count); 0 disables.
    substitute: each channel of ``substitute_channels`` replaced by channel
      ``substitute_source`` with this probability, independently (a sequence missing from a
      scan and filled in with another: the Kaggle LGG set puts FLAIR in place of a missing
      pre- or post-contrast sequence); 0 disables. With ``channel_group`` g > 0 the indices
      count within each group of g channels and every group gets the same choice (2.5D
      input: the neighbouring slices lack the same sequence).
    """

    flips: bool = True
    rot90: bool = True
    brightness: float = 0.1
    contrast: float = 0.1
    vertical_flip: bool = True
    gamma: float = 0.0
    per_channel: bool = False
    scale: float = 0.0
    rotate: float = 0.0
    substitute: float = 0.0
    substitute_channels: tuple[int, ...] = ()
    substitute_source: int = 0
    channel_group: int = 0

    def __post_init__(self):
        object.__setattr__(self, "substitute_channels", tuple(int(c) for c in self.substitute_channels))  # JSON: list
        channels, group = self.substitute_channels, self.channel_group
        _check("data.augment", [
            ("brightness", self.brightness >= 0, "must be >= 0"),
            ("contrast", 0 <= self.contrast < 1, "must be in [0, 1)"),
            ("gamma", 0 <= self.gamma <= 2, "must be in [0, 2] (gamma from exp(-g) to exp(g))"),
            ("scale", 0 <= self.scale < 1, "must be in [0, 1)"),
            ("rotate", 0 <= self.rotate <= 180, "must be in [0, 180] degrees"),
            ("substitute", 0 <= self.substitute <= 1, "must be a probability in [0, 1]"),
            ("substitute_channels", len(set(channels)) == len(channels) and all(c >= 0 for c in channels)
             and self.substitute_source not in channels, "distinct channel indices >= 0, not the source"),
            ("substitute_channels", self.substitute == 0 or bool(channels), "name the channels to substitute"),
            ("substitute_source", self.substitute_source >= 0, "must be a channel index >= 0"),
            ("channel_group", group >= 0 and (group == 0 or max(channels + (self.substitute_source,)) < group),
             "0 (all channels one group) or a group size above every channel index"),
        ], self)

    @classmethod
    def none(cls) -> AugmentConfig:
        """No augmentation at all (evaluation, debugging, tests)."""
        return cls(flips=False, rot90=False, brightness=0.0, contrast=0.0)


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Which dataset, how it is preprocessed, sampled and split.

    dataset: a name in :func:`unet_jax.data.available`; `options` are its keyword
      arguments (paths, class count, ...), so ``unet_jax.data.get(dataset, **options)``
      rebuilds it from a run's config.json.
    patch_size: side of the square training patches (a patch as large as a resized
      image is the whole image).
    foreground_bias: probability that a patch is centred on a foreground pixel
      (vessel, lesion) instead of any valid pixel.
    val_size: training examples held out (seeded) for validation: a count if >= 1,
      else a fraction; used for model selection, never the test set.
    workers: grain worker processes producing patches (0: a thread of this process).
    cache_mb: preprocessed training images are held in memory when they fit in this
      many MB; larger sets are decoded from disk per patch, so memory stays flat.
    on_device: "yes" uploads the training set to the device once and samples patches
      inside the jitted step (:mod:`unet_jax.data.device_sampler`); "no" uses the host
      pipeline; "auto" uploads on an accelerator when the set takes at most `device_share`
      of its memory (never on CPU: see ``device_sampler.resolve_on_device``).
    """

    dataset: str = "drive"
    options: dict[str, Any] = dataclasses.field(default_factory=dict)
    preprocess: PreprocessConfig = PreprocessConfig()
    augment: AugmentConfig = AugmentConfig()
    patch_size: int = 64
    foreground_bias: float = 0.0
    val_size: float = 2
    workers: int = 0
    cache_mb: int = 1024
    on_device: str = "auto"
    device_share: float = 0.25

    def __post_init__(self):
        _check("data", [
            ("patch_size", self.patch_size >= 2, "must be >= 2"),
            ("foreground_bias", 0.0 <= self.foreground_bias <= 1.0, "must be in [0, 1]"),
            ("val_size", self.val_size >= 0 and (self.val_size < 1 or float(self.val_size).is_integer()),
             "a count (0, 1, 2, ...) or a fraction in (0, 1)"),
            ("workers", self.workers >= 0, "must be >= 0"),
            ("cache_mb", self.cache_mb >= 0, "must be >= 0"),
            ("on_device", self.on_device in ("auto", "yes", "no"), "one of auto, yes, no"),
            ("device_share", 0 < self.device_share <= 1, "must be in (0, 1]"),
        ], self)

    def num_val(self, num_train: int) -> int:
        """Training examples to hold out for validation out of `num_train`."""
        n = int(self.val_size) if self.val_size >= 1 else int(round(self.val_size * num_train))
        if self.val_size > 0 and n == 0:
            n = 1
        if n >= num_train:
            raise ConfigError("data.val_size", self.val_size,
                              f"holds out {n} of the {num_train} training examples, leaving none to train on")
        return n


# The forms of the U-Net family's 2x2 up-convolution and max pooling (unet_jax.models.layers).
UPSAMPLE_MODES = ("auto", "transpose", "depth_to_space", "bilinear")
POOL_MODES = ("window", "reshape")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    arch: str = "unet"
    features: int = 16
    depth: int = 4
    norm: str = "batch"
    upsample: str = "auto"
    pool: str = "window"
    # Deep supervision of the U-Net family (unet, attention_unet): auxiliary heads on the
    # decoder levels below the last, trained with the main head (models.UNet.aux_heads).
    aux_heads: int = 0

    def __post_init__(self):
        _check("model", [
            ("features", self.features >= 1, "must be >= 1"),
            ("depth", 1 <= self.depth <= 6, "must be in 1..6"),
            ("norm", self.norm in ("batch", "group", "none"), "one of batch, group, none"),
            ("upsample", self.upsample in UPSAMPLE_MODES, f"one of {', '.join(UPSAMPLE_MODES)}"),
            ("pool", self.pool in POOL_MODES, f"one of {', '.join(POOL_MODES)}"),
            ("aux_heads", 0 <= self.aux_heads < self.depth, f"must be in 0..depth - 1 = {self.depth - 1}"),
        ], self)
        if self.aux_heads:
            from unet_jax import models  # here: the models import this module

            with_heads = [a for a in models.available() if "aux_heads" in models.options(a)]
            _check("model", [("aux_heads", self.arch in with_heads,
                              f"{self.arch} has no auxiliary heads; only {', '.join(with_heads)} "
                              "(unetpp's deep supervision is its own)")], self)


SELECT_METRICS = ("dice", "dice_per_case_mean")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    steps: int = 1500
    batch_size: int = 32
    lr: float = 2e-3
    warmup_steps: int = 100
    end_lr_fraction: float = 0.01
    optimizer: str = "adamw"  # adam | adamw
    weight_decay: float = 1e-4
    grad_clip: float = 1.0  # global-norm clip; 0 disables
    loss: str = "bce_dice"
    # Overlap terms (Dice, IoU, Tversky) per image, then averaged, instead of pooled over the
    # batch: small lesions weigh as much as large ones (MONAI DiceLoss's batch=False).
    loss_per_image: bool = False
    # loss "tversky": weights of false positives (alpha) and false negatives (beta); 0.5 and
    # 0.5 is Dice, beta > alpha favours recall.
    tversky_alpha: float = 0.5
    tversky_beta: float = 0.5
    seed: int = 0
    eval_every: int = 250
    log_every: int = 25
    threshold: float = 0.5  # binary tasks: probability threshold of the masks
    ignore_empty: bool = True  # per-case Dice leaves out cases without foreground (MONAI's convention)
    # The validation figure that chooses the best checkpoint: "dice" (every validation pixel
    # pooled) or "dice_per_case_mean" (the mean of each case's Dice: per-patient figures).
    select: str = "dice"
    precision: str = "fp32"  # fp32 | bf16 (bf16 activations/convs; float32 params, optimizer, loss)
    bn_sync: bool = True  # batch-norm statistics over the global batch (False: per device)
    checkpoint_every: int = 250  # save the latest checkpoint every N steps (and at the last step)
    keep: int = 2  # latest checkpoints retained (the best-by-validation one is kept separately)
    # Optimizer steps per dispatch (lax.scan over K steps; device-resident data only). Step
    # counts at which something happens must be multiples of K: one program per run.
    # 0: automatic (see `resolved_steps_per_call`).
    steps_per_call: int = 0
    # Exponential moving average of the weights (and batch-norm statistics), updated every
    # step; validation, test and saved predictors use it. 0: off (the live weights).
    ema_decay: float = 0.0

    def __post_init__(self):
        _check("train", [
            ("steps", self.steps >= 1, "must be >= 1"),
            ("batch_size", self.batch_size >= 1, "must be >= 1"),
            ("lr", self.lr > 0, "must be > 0"),
            ("warmup_steps", self.warmup_steps >= 0, "must be >= 0"),
            ("end_lr_fraction", 0 <= self.end_lr_fraction <= 1, "must be in [0, 1]"),
            ("optimizer", self.optimizer in ("adam", "adamw"), "one of adam, adamw"),
            ("weight_decay", self.weight_decay >= 0, "must be >= 0"),
            ("tversky_alpha", self.tversky_alpha >= 0 and (self.loss == "tversky" or self.tversky_alpha == 0.5),
             "must be >= 0, and is used by loss 'tversky' only (--loss tversky)"),
            ("tversky_beta", self.tversky_beta >= 0 and (self.loss == "tversky" or self.tversky_beta == 0.5),
             "must be >= 0, and is used by loss 'tversky' only (--loss tversky)"),
            ("grad_clip", self.grad_clip >= 0, "must be >= 0 (0 disables)"),
            ("eval_every", self.eval_every >= 1, "must be >= 1"),
            ("log_every", self.log_every >= 1, "must be >= 1"),
            ("threshold", 0 < self.threshold < 1, "must be in (0, 1)"),
            ("select", self.select in SELECT_METRICS, f"one of {', '.join(SELECT_METRICS)}"),
            ("precision", self.precision in ("fp32", "bf16"), "one of fp32, bf16"),
            ("checkpoint_every", self.checkpoint_every >= 1, "must be >= 1"),
            ("keep", self.keep >= 1, "must be >= 1"),
            ("ema_decay", 0 <= self.ema_decay < 1, "must be in [0, 1) (0: no moving average)"),
            ("steps_per_call", self.steps_per_call == 0 or self.steps_per_call >= 1 and all(
                n % self.steps_per_call == 0
                for n in (self.steps, self.log_every, self.eval_every, self.checkpoint_every)),
             "must be 0 (automatic) or >= 1 and divide steps, log_every, eval_every and checkpoint_every"),
        ], self)

    @property
    def loss_options(self) -> dict[str, Any]:
        """Keyword arguments of :func:`unet_jax.losses.get_loss` beside the loss's name."""
        weights = {"alpha": self.tversky_alpha, "beta": self.tversky_beta} if self.loss == "tversky" else {}
        return {"per_image": self.loss_per_image, **weights}

    def resolved_steps_per_call(self, device_data: bool) -> int:
        """Steps per dispatch: `steps_per_call` when set; when 0, 1 with the host pipeline and
        with device-resident data the largest divisor of steps, log_every, eval_every and
        checkpoint_every up to 25 (25 with the defaults). On an H200 the DRIVE default loop
        ran at 0.87x the train step alone with 1 step per dispatch and 1.07x with 25
        (benchmarks/results/loop-nvidia_h200.json); 25 keeps the progress bar lively."""
        if self.steps_per_call:
            return self.steps_per_call
        if not device_data:
            return 1
        g = math.gcd(self.steps, self.log_every, self.eval_every, self.checkpoint_every)
        return max(d for d in range(1, min(g, 25) + 1) if g % d == 0)


@dataclasses.dataclass(frozen=True)
class RunConfig:
    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    train: TrainConfig = TrainConfig()

    def __post_init__(self):
        multiple = 2**self.model.depth
        if self.data.patch_size % multiple:
            raise ConfigError("data.patch_size", self.data.patch_size,
                              f"must be a multiple of 2**depth = {multiple} (model.depth = {self.model.depth})")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunConfig:
        data = dict(d["data"])
        data["preprocess"] = PreprocessConfig(**data.get("preprocess", {}))
        data["augment"] = AugmentConfig(**data.get("augment", {}))
        return cls(ModelConfig(**d["model"]), DataConfig(**data), TrainConfig(**d["train"]))
