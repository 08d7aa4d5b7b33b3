"""Intervals, verdicts and convergence for the research experiments: plain numpy.

A figure of a variant is the mean of a per-image score (1/0 for a correct top-1, 1/rank
of the true match for copy retrieval, whose mean is the mAP with one positive) over the
test images and the seeds. The difference of two variants gets a 95 % percentile
interval from a two-level bootstrap: each replicate draws the seeds of each variant with
replacement (independently: seed k of two variants is not a matched pair) and one sample
of test images with replacement, shared by both variants (the images are paired). So the
interval holds both sources of noise, the training seed and the finite test set.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum

import numpy as np


class Verdict(str, Enum):
    """How a measured difference reads against the paper's (signed) claim."""

    AGREES = "agrees"
    DISAGREES = "disagrees"
    NOT_SEPARATED = "not separated at this scale"


@dataclass(frozen=True)
class Interval:
    """A difference A - B (mean over seeds and images) with its 95 % bootstrap interval."""

    difference: float
    low: float
    high: float

    @property
    def separated(self) -> bool:
        """Whether the interval excludes 0."""
        return self.low > 0 or self.high < 0


def verdict(interval: Interval, expected_sign: int) -> Verdict:
    """AGREES when the interval excludes 0 on the side of `expected_sign` (+1: A > B, -1:
    A < B), DISAGREES when it excludes 0 on the other side, else NOT_SEPARATED."""
    if expected_sign not in (-1, 1):
        raise ValueError(f"expected_sign must be +1 or -1, got {expected_sign}")
    if not interval.separated:
        return Verdict.NOT_SEPARATED
    measured = 1 if interval.low > 0 else -1
    return Verdict.AGREES if measured == expected_sign else Verdict.DISAGREES


def image_weights(num_images: int, samples: int, rng: np.random.Generator) -> np.ndarray:
    """(samples, num_images) bootstrap weights: how often each image was drawn, / num_images."""
    return rng.multinomial(num_images, np.full(num_images, 1.0 / num_images), size=samples) / (
        num_images
    )


def seed_means(scores: np.ndarray, samples: int, rng: np.random.Generator) -> np.ndarray:
    """scores (S, N) per seed and image -> (samples, N) means over S seeds drawn with
    replacement."""
    num_seeds = scores.shape[0]
    draws = rng.integers(0, num_seeds, size=(samples, num_seeds))
    return scores[draws].mean(axis=1)


def difference_interval(
    a: np.ndarray,
    b: np.ndarray,
    *,
    samples: int = 2000,
    seed: int = 0,
    level: float = 0.95,
    paired_seeds: bool = False,
) -> Interval:
    """a, b: (S_a, N), (S_b, N) per-seed, per-image scores on the same N test images ->
    the difference of their means with a two-level bootstrap interval (module docstring).

    `paired_seeds`: row k of `a` and of `b` come from the same trained model (two readings
    of one run: whitened vs raw, another test resolution), so each replicate draws one set
    of seeds for both; two readings that agree on every image then get [0, 0]."""
    a, b = np.atleast_2d(np.asarray(a, float)), np.atleast_2d(np.asarray(b, float))
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"a and b score different images: {a.shape} vs {b.shape}")
    rng = np.random.default_rng(seed)
    weights = image_weights(a.shape[1], samples, rng)
    if paired_seeds:
        if a.shape != b.shape:
            raise ValueError(f"paired seeds need one row per seed in both: {a.shape} vs {b.shape}")
        replicates = (seed_means(a - b, samples, rng) * weights).sum(1)
    else:
        replicates = ((seed_means(a, samples, rng) - seed_means(b, samples, rng)) * weights).sum(1)
    low, high = np.quantile(replicates, [(1 - level) / 2, (1 + level) / 2])
    return Interval(float(a.mean() - b.mean()), float(low), float(high))


def best_exponent_interval(
    scores: np.ndarray,
    exponents: Sequence[float],
    *,
    low_index: int,
    high_index: int,
    samples: int = 2000,
    seed: int = 0,
    level: float = 0.95,
) -> Interval:
    """RQ4: p*(s_high) - p*(s_low), p* the exponent of the best mean score at a resolution.

    scores: (S, R, P, N) per seed, resolution, exponent and image. Each replicate draws
    seeds and images (shared by all resolutions and exponents) and takes the argmax over
    the exponents at both resolutions.
    """
    scores = np.asarray(scores, float)
    grid = np.asarray(exponents, float)
    num_seeds, _, _, num_images = scores.shape
    rng = np.random.default_rng(seed)
    weights = image_weights(num_images, samples, rng)  # (B, N)
    draws = rng.integers(0, num_seeds, size=(samples, num_seeds))
    chosen = []
    for index in (low_index, high_index):
        per_seed = scores[:, index]  # (S, P, N)
        means = np.stack([per_seed[row].mean(axis=0) @ weights[i] for i, row in enumerate(draws)])
        chosen.append(grid[means.argmax(axis=1)])
    replicates = chosen[1] - chosen[0]
    point = [grid[scores[:, index].mean(axis=(0, 2)).argmax()] for index in (low_index, high_index)]
    low, high = np.quantile(replicates, [(1 - level) / 2, (1 + level) / 2])
    return Interval(float(point[1] - point[0]), float(low), float(high))


@dataclass(frozen=True)
class Convergence:
    """Whether a run's held-out figure stopped moving over the last quarter of training."""

    flat: bool
    change: float  # max - min of the figure over the checkpoints of the last quarter
    tolerance: float


def convergence(
    steps: Sequence[int], values: Sequence[float], *, total_steps: int, tolerance: float
) -> Convergence:
    """Flat when max - min of `values` at the checkpoints with step >= 3/4 of `total_steps`
    (at least two of them) is within `tolerance`."""
    tail = [v for s, v in zip(steps, values, strict=True) if s >= 0.75 * total_steps]
    if len(tail) < 2:
        return Convergence(False, float("nan"), tolerance)
    change = max(tail) - min(tail)
    return Convergence(change <= tolerance, float(change), tolerance)
