"""What the research experiments vary (one setting per variant) and at what size they run."""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import Enum


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
    """How big the study is (research.py's docstring gives the reasons for FULL)."""

    seeds: tuple[int, ...]
    train_per_class: int  # Fashion-MNIST training images per class (10 classes)
    test_per_class: int
    whitening_per_class: int  # the whitening's fit set, disjoint from the training images
    input_size: int  # training resolution s (56 px: a 7x7 last map with the small stem)
    batch_size: int
    steps: int  # optimiser steps: the same images processed for every variant
    warmup_steps: int
    lr: float
    curve_points: int  # held-out checkpoints per run, evenly spaced
    curve_images: int  # the curves read the first test images
    grid_images: int  # RQ4 reads the first test images
    resolutions: tuple[int, ...]  # RQ4 test resolutions, the training one first
    exponents: tuple[float, ...]  # RQ4 test exponents, including the training p = 3
    bootstrap_samples: int
    convergence_tolerance: float  # max - min over the last quarter's checkpoints
    # "cosine": a half cosine to 0 after the warm-up; "step": the paper's, the learning rate
    # x 0.1 after 1/4, 1/2 and 3/4 of the steps (its epochs 30, 60 and 90 of 120)
    schedule: str = "cosine"


FULL = Scale(
    seeds=(0, 1, 2),
    train_per_class=80,
    test_per_class=200,
    whitening_per_class=200,
    input_size=56,
    batch_size=48,
    steps=256,
    warmup_steps=64,
    lr=0.02,
    curve_points=8,
    curve_images=500,
    grid_images=1000,
    resolutions=(56, 72, 96, 112),
    exponents=(1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0),
    bootstrap_samples=2000,
    convergence_tolerance=0.02,
)
#: FULL on a schedule twice as long (each training image ~30 times) with the learning
#: curves read on all test images: the follow-up for runs of FULL that still moved in their
#: last quarter (docs/results/research-questions.md). ~4 h of 2 idle cores.
LONG = replace(FULL, steps=512, curve_images=2000)
QUICK = Scale(
    seeds=(0,),
    train_per_class=3,
    test_per_class=2,
    whitening_per_class=3,
    input_size=16,
    batch_size=6,
    steps=4,
    warmup_steps=1,
    lr=0.02,
    curve_points=2,
    curve_images=10,
    grid_images=10,
    resolutions=(16, 24),
    exponents=(1.0, 3.0),
    bootstrap_samples=200,
    convergence_tolerance=0.02,
)
