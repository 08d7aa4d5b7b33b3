"""Readers that turn standard benchmark folders, as downloaded, into plain dataclasses."""

from __future__ import annotations

from collections.abc import Callable
from enum import Enum
from typing import Any

from multigrain.data.standard.copydays import read_copydays
from multigrain.data.standard.disc21 import read_disc21
from multigrain.data.standard.holidays import read_holidays
from multigrain.data.standard.imagenet import read_imagenet_val
from multigrain.data.standard.revisitop import read_revisitop
from multigrain.data.standard.safe_pickle import load_safe_pickle
from multigrain.data.standard.types import (
    ClassificationBenchmark,
    CopyDetectionBenchmark,
    RetrievalBenchmark,
)
from multigrain.data.standard.ukbench import read_ukbench


class BenchmarkName(str, Enum):
    """The standard benchmarks this package reads."""

    IMAGENET = "imagenet"
    HOLIDAYS = "holidays"
    COPYDAYS = "copydays"
    UKBENCH = "ukbench"
    ROXFORD5K = "roxford5k"
    RPARIS6K = "rparis6k"
    DISC21 = "disc21"


Benchmark = RetrievalBenchmark | CopyDetectionBenchmark | ClassificationBenchmark


def _read_roxford5k(root: Any, **options: Any) -> RetrievalBenchmark:
    return read_revisitop(root, "roxford5k", **options)


def _read_rparis6k(root: Any, **options: Any) -> RetrievalBenchmark:
    return read_revisitop(root, "rparis6k", **options)


# Each reader takes the dataset root first, then its own keyword options
# (revisitop needs difficulty=).
READERS: dict[BenchmarkName, Callable[..., Benchmark]] = {
    BenchmarkName.IMAGENET: read_imagenet_val,
    BenchmarkName.HOLIDAYS: read_holidays,
    BenchmarkName.COPYDAYS: read_copydays,
    BenchmarkName.UKBENCH: read_ukbench,
    BenchmarkName.ROXFORD5K: _read_roxford5k,
    BenchmarkName.RPARIS6K: _read_rparis6k,
    BenchmarkName.DISC21: read_disc21,
}

__all__ = [
    "READERS",
    "BenchmarkName",
    "ClassificationBenchmark",
    "CopyDetectionBenchmark",
    "RetrievalBenchmark",
    "load_safe_pickle",
    "read_copydays",
    "read_disc21",
    "read_holidays",
    "read_imagenet_val",
    "read_revisitop",
    "read_ukbench",
]
