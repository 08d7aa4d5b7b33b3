"""What the research experiments measured, per dataset, and its form in experiments.json."""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass, field
from enum import Enum
from typing import Any

from multigrain.experiments.variants import Variant


class Metric(str, Enum):
    """A figure measured for every variant and seed; the value is its name in the report."""

    HELDOUT_TOP1 = "held-out top-1"  # the built-in photos' held-out labelled photos
    TEST_TOP1 = "test top-1"  # Fashion-MNIST's test split
    COPY_MAP = "copy mAP"


class ExperimentDataset(str, Enum):
    BUILTIN = "builtin"
    FASHION_MNIST = "fashion-mnist"

    @property
    def top1(self) -> Metric:
        """The classification figure measured on this dataset."""
        return Metric.HELDOUT_TOP1 if self is ExperimentDataset.BUILTIN else Metric.TEST_TOP1


@dataclass
class Measurement:
    variant: Variant
    seed: int
    metrics: dict[Metric, float]

    def to_dict(self) -> dict[str, Any]:
        return {
            "variant": self.variant.name,
            "question": self.variant.question.value,
            "seed": self.seed,
            "metrics": {metric.value: value for metric, value in self.metrics.items()},
        }


@dataclass
class GridPoint:
    """RQ4: the joint model tested at resolution s with GeM exponent p."""

    resolution: int
    exponent: float
    top1: float
    retrieval_map: float


@dataclass(frozen=True)
class SeedSpread:
    """A figure over seeds: the mean and the spread (max - min)."""

    mean: float
    spread: float


@dataclass(frozen=True)
class WhiteningCheck:
    """Copy mAP without/with whitening; top-1 before/after folding it into the classifier."""

    copy_map: float
    copy_map_whitened: float
    top1: float
    top1_folded: float  # must equal top1: folding is exact

    def labelled(self) -> dict[str, float]:
        """The figures by their names in the report (and experiments.json)."""
        return {
            "copy mAP": self.copy_map,
            "copy mAP, whitened": self.copy_map_whitened,
            "held-out top-1": self.top1,
            "held-out top-1, whitening folded": self.top1_folded,
        }


@dataclass
class DatasetResults:
    dataset: ExperimentDataset
    measurements: list[Measurement] = field(default_factory=list)
    grid: list[GridPoint] = field(default_factory=list)
    whitening: WhiteningCheck | None = None

    def summary(self) -> dict[Variant, dict[Metric, SeedSpread]]:
        """variant -> metric -> mean and spread over seeds, variants in measurement order."""
        table: dict[Variant, dict[Metric, list[float]]] = {}
        for m in self.measurements:
            for metric, value in m.metrics.items():
                table.setdefault(m.variant, {}).setdefault(metric, []).append(value)
        return {
            variant: {
                metric: SeedSpread(statistics.fmean(values), max(values) - min(values))
                for metric, values in metrics.items()
            }
            for variant, metrics in table.items()
        }

    def to_dict(self) -> dict[str, Any]:
        """The object stored for this dataset in experiments.json."""
        return {
            "dataset": self.dataset.value,
            "measurements": [m.to_dict() for m in self.measurements],
            "grid": [asdict(point) for point in self.grid],
            "whitening": self.whitening.labelled() if self.whitening is not None else {},
        }
