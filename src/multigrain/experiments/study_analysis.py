"""From the runs' per-image scores to the study's answers: intervals, verdicts, p*, curves.

Intervals: :mod:`~multigrain.experiments.statistics` (two-level bootstrap over seeds and
test images, 95 %). A verdict is :class:`~multigrain.experiments.statistics.Verdict`
against the sign of the paper's difference (:mod:`~multigrain.experiments.claims`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from multigrain.experiments.claims import CLAIMS, JOINT, Claim
from multigrain.experiments.results import Metric, RunResult, RunScores
from multigrain.experiments.statistics import (
    Convergence,
    Interval,
    Verdict,
    best_exponent_interval,
    convergence,
    difference_interval,
    verdict,
)
from multigrain.experiments.variants import VARIANTS, Scale, Variant


@dataclass(frozen=True)
class Comparison:
    claim: Claim
    joint: float  # mean over seeds and images
    other: float
    interval: Interval  # joint - other
    verdict: Verdict


@dataclass(frozen=True)
class GridAnswer:
    """RQ4 for one metric: mean (R, P) grid, p* per s, and the two tested statements."""

    metric: Metric
    means: np.ndarray  # (R, P)
    best_exponents: tuple[float, ...]  # p* per resolution
    exponent_shift: Interval  # p*(largest s) - p*(training s)
    exponent_verdict: Verdict
    best_resolution: int  # the best test resolution above the training one
    gain: Interval  # (best_resolution, its p*) - (training s, training p)
    gain_verdict: Verdict


@dataclass(frozen=True)
class WhiteningAnswer:
    copy_map: float
    copy_map_whitened: float
    retrieval: Interval  # whitened - raw copy mAP
    retrieval_verdict: Verdict
    top1: float
    top1_stored: float  # top-1 read from the stored whitened descriptor
    top1_difference: Interval
    same_prediction: float  # smallest over seeds: share of images with the same top-1
    top1_verdict: Verdict  # agrees iff every prediction is the same (an exact claim)


@dataclass
class Analysis:
    scale: Scale
    runs: list[RunResult]
    comparisons: list[Comparison] = field(default_factory=list)
    grid: list[GridAnswer] = field(default_factory=list)
    whitening: WhiteningAnswer | None = None

    def convergence(self, run: RunResult, metric: Metric) -> Convergence:
        return convergence(
            [point.step for point in run.curve],
            [point.value(metric) for point in run.curve],
            total_steps=self.scale.steps,
            tolerance=self.scale.convergence_tolerance,
        )


def _stack(scores: list[RunScores], name: str) -> np.ndarray:
    return np.stack([getattr(s, name) for s in scores])


def analyse(
    scale: Scale, runs: list[RunResult], scores: dict[Variant, list[RunScores]]
) -> Analysis:
    """Every answer the finished runs allow (a comparison needs both variants)."""
    analysis = Analysis(scale, runs)
    samples = scale.bootstrap_samples
    for claim in CLAIMS:
        if not scores.get(JOINT) or not scores.get(claim.other):
            continue
        a = np.stack([s.metric(claim.metric) for s in scores[JOINT]])
        b = np.stack([s.metric(claim.metric) for s in scores[claim.other]])
        interval = difference_interval(a, b, samples=samples)
        analysis.comparisons.append(
            Comparison(claim, float(a.mean()), float(b.mean()), interval,
                       verdict(interval, claim.expected_sign))
        )  # fmt: skip
    if scores.get(JOINT):
        analysis.grid = [_grid(scale, scores[JOINT], metric) for metric in Metric]
        analysis.whitening = _whitening(scale, scores[JOINT], runs)
    return analysis


def _grid(scale: Scale, joint: list[RunScores], metric: Metric) -> GridAnswer:
    name = "grid_correct" if metric is Metric.TOP1 else "grid_reciprocal_rank"
    grid = _stack(joint, name)  # (S, R, P, N)
    exponents = scale.exponents
    means = grid.mean(axis=(0, 3))
    best = tuple(float(exponents[i]) for i in means.argmax(axis=1))
    shift = best_exponent_interval(
        grid, exponents, low_index=0, high_index=len(scale.resolutions) - 1,
        samples=scale.bootstrap_samples,
    )  # fmt: skip
    larger = means[1:]  # the claim is about test resolutions above the training one
    r_best, p_best = np.unravel_index(larger.argmax(), larger.shape)
    r_best += 1
    trained = exponents.index(JOINT.pooling_exponent)
    gain = difference_interval(  # both readings of the same joint models
        grid[:, r_best, p_best],
        grid[:, 0, trained],
        samples=scale.bootstrap_samples,
        paired_seeds=True,
    )
    return GridAnswer(
        metric, means, best, shift, verdict(shift, +1), scale.resolutions[int(r_best)],
        gain, verdict(gain, +1),
    )  # fmt: skip


def _whitening(scale: Scale, joint: list[RunScores], runs: list[RunResult]) -> WhiteningAnswer:
    samples = scale.bootstrap_samples
    raw, whitened = _stack(joint, "reciprocal_rank"), _stack(joint, "whitened_reciprocal_rank")
    top1, stored = _stack(joint, "correct"), _stack(joint, "whitened_correct")
    # two readings of the same joint models: seeds paired
    retrieval = difference_interval(whitened, raw, samples=samples, paired_seeds=True)
    same = min(
        r.same_prediction_whitened for r in runs
        if r.variant == JOINT.slug and r.same_prediction_whitened is not None
    )  # fmt: skip
    top1_difference = difference_interval(stored, top1, samples=samples, paired_seeds=True)
    return WhiteningAnswer(
        float(raw.mean()), float(whitened.mean()), retrieval, verdict(retrieval, +1),
        float(top1.mean()), float(stored.mean()), top1_difference, same,
        Verdict.AGREES if same == 1.0 else Verdict.DISAGREES,
    )  # fmt: skip


__all__ = ["VARIANTS", "Analysis", "Comparison", "GridAnswer", "WhiteningAnswer", "analyse"]
