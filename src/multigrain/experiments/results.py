"""What one run of the research study measured, stored beside its checkpoint.

``result.json`` (figures, curve, convergence) is written last, so its presence marks a
finished run; ``scores.npz`` holds the per-image scores the intervals are drawn from.
"""

from __future__ import annotations

import io
import json
from dataclasses import asdict, dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

import numpy as np

from multigrain.runtime.atomic import atomic_write_bytes, atomic_write_text

RESULT_NAME = "result.json"
SCORES_NAME = "scores.npz"


class Metric(str, Enum):
    """A figure measured for every run; the value is its name in the report."""

    TOP1 = "test top-1"
    COPY_MAP = "copy mAP"


@dataclass(frozen=True)
class CurvePoint:
    """The held-out figures (on the curve images) of the checkpoint after `step` steps."""

    step: int
    top1: float
    copy_map: float

    def value(self, metric: Metric) -> float:
        return self.top1 if metric is Metric.TOP1 else self.copy_map


@dataclass
class RunScores:
    """Per-image scores on the test images at the training s and p (and, for the reference
    variant, the RQ4 grid and the whitening check)."""

    correct: np.ndarray  # (N,)
    reciprocal_rank: np.ndarray  # (N,)
    grid_correct: np.ndarray | None = None  # (R, P, N_grid)
    grid_reciprocal_rank: np.ndarray | None = None  # (R, P, N_grid)
    whitened_correct: np.ndarray | None = None  # (N,) top-1 of the stored whitened vector
    whitened_reciprocal_rank: np.ndarray | None = None  # (N,)

    def metric(self, metric: Metric) -> np.ndarray:
        return self.correct if metric is Metric.TOP1 else self.reciprocal_rank

    def save(self, path: Path) -> Path:
        arrays = {name: value for name, value in vars(self).items() if value is not None}
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        return atomic_write_bytes(path, buffer.getvalue())

    @classmethod
    def load(cls, path: Path) -> RunScores:
        with np.load(path) as stored:
            return cls(**{name: stored[name] for name in stored.files})


@dataclass
class RunResult:
    """One variant x seed: its summary figures, learning curve and training cost."""

    variant: str  # Variant.slug
    seed: int
    steps: int
    train_seconds: float
    top1: float
    copy_map: float
    curve: list[CurvePoint] = field(default_factory=list)
    same_prediction_whitened: float | None = None  # reference variant only
    # the curve, test, grid and whitening scoring, summed over the sessions it took (results
    # written before the sum counted only the last session's: a resumed scoring shows less)
    score_seconds: float | None = None
    schedule: str = "cosine"  # Scale.schedule (results written before it were cosine)

    def save(self, folder: Path) -> Path:
        return atomic_write_text(folder / RESULT_NAME, json.dumps(asdict(self), indent=1))

    @classmethod
    def load(cls, folder: Path) -> RunResult:
        values: dict[str, Any] = json.loads((folder / RESULT_NAME).read_text())
        values["curve"] = [CurvePoint(**point) for point in values["curve"]]
        return cls(**values)
