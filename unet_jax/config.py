"""Small, JSON-serialisable configuration objects for a training run."""

from __future__ import annotations

import dataclasses
import json
from typing import Any


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    arch: str = "unet"
    features: int = 16
    depth: int = 4
    norm: str = "batch"
    upsample: str = "transpose"


@dataclasses.dataclass(frozen=True)
class DataConfig:
    channels: str = "green"  # green | gray | rgb
    clahe: bool = True
    gamma: float = 1.0
    patch_size: int = 64
    vessel_bias: float = 0.0
    val_images: int = 2  # training images held out (seeded) for periodic validation
    flips: bool = True
    rot90: bool = True
    brightness: float = 0.1
    contrast: float = 0.1
    synthetic: bool = False
    workers: int = 0  # grain worker processes producing patches (0: a thread in the training process)


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
    seed: int = 0
    eval_every: int = 250
    log_every: int = 25
    threshold: float = 0.5
    precision: str = "fp32"  # fp32 | bf16 (bf16 activations/convs; float32 params, optimizer, loss)
    bn_sync: bool = True  # batch-norm statistics over the global batch (False: per device)
    checkpoint_every: int = 250  # save the latest checkpoint every N steps (and at the last step)
    keep: int = 2  # latest checkpoints retained (the best-by-validation one is kept separately)


@dataclasses.dataclass(frozen=True)
class RunConfig:
    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    train: TrainConfig = TrainConfig()

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "RunConfig":
        return cls(ModelConfig(**d["model"]), DataConfig(**d["data"]), TrainConfig(**d["train"]))
