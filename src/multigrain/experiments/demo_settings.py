"""What the built-in demo trains and how it tests, and the training run it makes of that."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from multigrain.data.sources import DatasetKind
from multigrain.training.config import Precision, Schedule, TrainConfig


@dataclass(frozen=True)
class DemoSettings:
    """What the demo trains and how it tests; the defaults fit ~15 minutes on 2 cores."""

    trunk: str = "resnet18"
    steps: int = 400
    batch_size: int = 48
    train_resolution: int = 128
    test_resolution: int = 224
    lr: float = 0.02
    warmup_epochs: float = 3.0  # without it the first steps blow up (loss 14 at step 10)
    augmentation: str = "copy"
    calibration_resolutions: tuple[int, ...] = (128, 160, 224, 288)
    calibration_exponents: tuple[float, ...] = (1.0, 2.0, 3.0, 4.0, 5.0, 6.0)
    whitening_dim: int = 128
    whitening_shrinkage: float = 0.1
    seed: int = 0
    workers: int = 1
    precision: str = "auto"  # inference: bf16 where the CPU/GPU runs it natively


def demo_train_config(settings: DemoSettings, data_root: Path, output_dir: Path) -> TrainConfig:
    """The demo's training run on the built-in benchmark at ``data_root``: the joint loss
    (lambda = 0.5), m = 3 repeated augmentations, the unlabelled photos as extra instances
    when the benchmark has them; checkpoints in ``output_dir`` every 50 steps."""
    unlabelled = data_root / "train_unlabelled"
    return TrainConfig(
        dataset=DatasetKind.FOLDER,
        data_root=str(data_root / "train"),
        unlabelled_root=str(unlabelled) if unlabelled.is_dir() else None,
        augmentation=settings.augmentation,
        trunk=settings.trunk,
        input_size=settings.train_resolution,
        batch_size=settings.batch_size,
        num_repeats=3,
        classification_weight=0.5,
        max_steps=settings.steps,
        lr=settings.lr,
        warmup_epochs=settings.warmup_epochs,
        schedule=Schedule.COSINE,
        weight_decay=5e-4,
        precision=Precision.AUTO,
        num_workers=settings.workers,
        seed=settings.seed,
        output_dir=str(output_dir),
        checkpoint_every_steps=50,
    )
