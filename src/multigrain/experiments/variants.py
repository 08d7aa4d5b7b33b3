"""What the research experiments vary (one setting per variant) and at what size they run."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from multigrain.experiments.demo_settings import DemoSettings


class Question(str, Enum):
    """The paper's research question a variant answers (``ALL``: the reference)."""

    ALL = "all"
    RQ1 = "RQ1"  # lambda: one embedding for both jobs?
    RQ2 = "RQ2"  # repeated augmentations
    RQ3 = "RQ3"  # GeM exponent in training
    RQ4 = "RQ4"  # test resolution x pooling exponent


@dataclass(frozen=True)
class Variant:
    name: str
    question: Question
    classification_weight: float = 0.5
    num_repeats: int = 3
    pooling_exponent: float = 3.0

    @property
    def slug(self) -> str:
        """The variant's folder name: its name before the settings, e.g. ``retrieval-only``."""
        keep = "".join(c if c.isalnum() else "-" for c in self.name.split(" (")[0])
        return keep.strip("-").lower()

    @property
    def short_name(self) -> str:
        """The name without its settings in brackets (plot labels)."""
        return self.name.split(" (")[0]


#: The reference (joint) variant first; every other one changes one setting.
VARIANTS: tuple[Variant, ...] = (
    Variant("joint (λ=0.5, m=3, p=3)", Question.ALL),
    Variant("classification only (λ=1)", Question.RQ1, classification_weight=1.0),
    Variant("retrieval only (λ=0)", Question.RQ1, classification_weight=0.0),
    Variant("no repeated augmentation (m=1)", Question.RQ2, num_repeats=1),
    Variant("average pooling in training (p=1)", Question.RQ3, pooling_exponent=1.0),
)


@dataclass(frozen=True)
class Scale:
    """How big each run is."""

    seeds: tuple[int, ...]
    builtin: DemoSettings
    fashion_steps: int
    fashion_batch: int
    fashion_images: int
    resolutions: tuple[int, ...]  # RQ4, built-in photos
    fashion_resolutions: tuple[int, ...]  # RQ4, Fashion-MNIST
    exponents: tuple[float, ...]


FULL = Scale(
    seeds=(0, 1),
    builtin=DemoSettings(steps=300, batch_size=48, train_resolution=128, test_resolution=224),
    fashion_steps=250,
    fashion_batch=60,
    fashion_images=1000,
    resolutions=(128, 224, 320),
    fashion_resolutions=(32, 48, 64),
    exponents=(1.0, 2.0, 3.0, 4.0, 6.0),
)
QUICK = Scale(
    seeds=(0,),
    builtin=DemoSettings(
        steps=2, batch_size=12, train_resolution=48, test_resolution=64, workers=0
    ),
    fashion_steps=2,
    fashion_batch=12,
    fashion_images=60,
    resolutions=(48, 64),
    fashion_resolutions=(28, 40),
    exponents=(1.0, 3.0),
)
