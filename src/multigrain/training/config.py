"""Training configuration: one dataclass, validated once, stored in every checkpoint.

Defaults are the reference ImageNet recipe of the paper (ResNet-50, input 224, batch 512,
SGD lr 0.2, momentum 0.9, weight decay 1e-4, 120 epochs, lr x0.1 at 30/60/90, m = 3,
lambda = 0.5, p = 3). Only the CLI and `train` read this object; everything below them
takes plain arguments.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from multigrain.data.sources import DatasetKind
from multigrain.models.trunk import TrunkName
from multigrain.runtime.errors import MultiGrainError
from multigrain.runtime.precision import Precision


class Schedule(str, Enum):
    STEP = "step"
    COSINE = "cosine"


@dataclass
class TrainConfig:
    # data
    dataset: DatasetKind = DatasetKind.FOLDER
    data_root: str | None = None
    file_list: str | None = None
    limit: int | None = None  # use only the first N training images (quick experiments)
    unlabelled_root: str | None = None  # extra images without labels (instances only)
    augmentation: str = "full"
    # model
    trunk: str = "resnet50"
    small_input: bool = False
    standardise_input: bool = False  # per-image channel standardisation (models/standardise.py)
    pooling_exponent: float = 3.0
    input_size: int = 224
    # batches and loss
    # images per optimiser step, summed over ranks and accumulation steps; the paper says 512,
    # which m = 3 does not divide: 504 = 8 GPUs x 63 is the nearest that 1, 2, 4 and 8 split
    batch_size: int = 504
    num_repeats: int = 3
    classification_weight: float = 0.5  # lambda
    margin_alpha: float = 0.2
    beta_init: float = 1.2
    beta_lr_factor: float = 1.0
    global_sampling: bool = False
    # optimisation
    epochs: int = 120
    max_steps: int | None = None  # stop after this many optimiser steps (overrides epochs)
    lr: float = 0.2
    momentum: float = 0.9
    weight_decay: float = 1e-4
    schedule: Schedule = Schedule.STEP
    lr_steps: list[float] = field(default_factory=lambda: [30, 60, 90])  # epochs
    lr_gamma: float = 0.1
    warmup_epochs: float = 0.0
    grad_accum_steps: int = 1
    precision: Precision = Precision.AUTO
    channels_last: bool = True
    # running
    device: str = "auto"
    num_workers: int = 0
    seed: int = 0
    output_dir: str = "runs/train"
    checkpoint_every: int = 1  # epochs
    checkpoint_every_steps: int | None = None
    # also keep a copy of the checkpoint every N steps (snapshots/step-NNNNNN.pt), for
    # curves of held-out figures against steps
    keep_every_steps: int | None = None
    log_every: int = 10
    progress: bool = True

    def validate(self, world_size: int = 1) -> None:
        """Raise MultiGrainError with a fix for every inconsistent setting."""
        if not 0.0 <= self.classification_weight <= 1.0:
            raise MultiGrainError(
                f"lambda (--lambda) must be in [0, 1], got {self.classification_weight}"
            )
        if self.num_repeats < 1:
            raise MultiGrainError(f"repeats m (--repeats) must be >= 1, got {self.num_repeats}")
        if self.grad_accum_steps < 1:
            raise MultiGrainError(f"--grad-accum must be >= 1, got {self.grad_accum_steps}")
        if self.batch_size < 1:
            raise MultiGrainError(f"--batch-size must be >= 1, got {self.batch_size}")
        chunks = world_size * self.grad_accum_steps
        if self.batch_size % chunks:
            raise MultiGrainError(
                f"batch size {self.batch_size} does not split over {world_size} process(es) x "
                f"{self.grad_accum_steps} accumulation step(s): use a multiple of {chunks}"
            )
        micro = self.batch_size // chunks
        if micro % self.num_repeats:
            raise MultiGrainError(
                f"batch size {self.batch_size} gives {micro} images per process and step, "
                f"not divisible by the number of repeats m={self.num_repeats}: use a batch "
                f"size that is a multiple of {chunks * self.num_repeats}"
            )
        if self.trunk not in {name.value for name in TrunkName}:
            valid = ", ".join(name.value for name in TrunkName)
            raise MultiGrainError(f"unknown trunk {self.trunk!r}: choose one of {valid}")
        if self.pooling_exponent <= 0:
            raise MultiGrainError(f"--pooling-exponent must be > 0, got {self.pooling_exponent}")
        if self.input_size < 8:
            raise MultiGrainError(f"--input-size must be >= 8 pixels, got {self.input_size}")
        if self.epochs < 1 and self.max_steps is None:
            raise MultiGrainError(f"--epochs must be >= 1, got {self.epochs}")
        if self.lr <= 0:
            raise MultiGrainError(f"--lr must be > 0, got {self.lr}")
        if self.dataset is DatasetKind.FOLDER and not self.data_root:
            raise MultiGrainError("--data DIR is required for an image-folder dataset")
        if self.dataset is DatasetKind.FILE_LIST and not self.file_list:
            raise MultiGrainError("--file-list FILE is required for a file-list dataset")

    def to_dict(self) -> dict[str, Any]:
        """Plain types only, so the dict loads from a checkpoint with weights_only=True."""
        out: dict[str, Any] = {}
        for item in dataclasses.fields(self):
            value = getattr(self, item.name)
            out[item.name] = value.value if isinstance(value, Enum) else value
        return out

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        known = {item.name for item in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise MultiGrainError(f"unknown training settings {unknown}: check the config file")
        config = cls(**values)
        config.dataset = DatasetKind(config.dataset)
        config.schedule = Schedule(config.schedule)
        config.precision = Precision(config.precision)
        config.lr_steps = list(config.lr_steps)
        return config
