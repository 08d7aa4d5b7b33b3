"""Plain results of the benchmark readers: what to index, what to query, what counts as a hit."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

Box = tuple[float, float, float, float]


@dataclass(frozen=True)
class RetrievalBenchmark:
    """An instance-retrieval benchmark scored by mAP (or the UKBench N-S score).

    `positives[q]` and `junk[q]` are integer arrays of indices into `database`; junk images
    are removed from the ranking before scoring. `query_boxes[q]` is the crop box
    (x1, y1, x2, y2) in original pixels, or None for a full-image query.
    `query_in_database[q]` is the database index of the query image itself when it is also a
    database image (Holidays, UKBench), else None. `rotations` maps an image file name to the
    clockwise rotation in degrees that makes it upright (Holidays), or None when not applied.
    """

    name: str
    database: list[Path]
    queries: list[Path]
    query_boxes: list[Box | None]
    positives: list[np.ndarray]
    junk: list[np.ndarray]
    query_in_database: list[int | None]
    rotations: dict[str, int] | None
    protocol: str

    def describe(self) -> str:
        """One line: name, protocol, sizes and the mean number of positives per query."""
        mean_positives = float(np.mean([len(p) for p in self.positives])) if self.positives else 0.0
        rotated = f", {len(self.rotations)} rotated" if self.rotations else ""
        return (
            f"{self.name} ({self.protocol}): {len(self.queries)} queries, "
            f"{len(self.database)} database images, "
            f"{mean_positives:.2f} positives/query{rotated}"
        )


@dataclass(frozen=True)
class CopyDetectionBenchmark:
    """A copy-detection benchmark scored by µAP over (query, reference) pairs.

    `ground_truth` holds (query index, reference index) pairs; queries without a pair have no
    copy in `references`. `background` images serve for score normalisation; `distractors`
    are extra references that are never a match.
    """

    name: str
    queries: list[Path]
    references: list[Path]
    ground_truth: list[tuple[int, int]]
    background: list[Path] = field(default_factory=list)
    distractors: list[Path] = field(default_factory=list)

    def describe(self) -> str:
        """One line: name, sizes and how many queries have a copy."""
        matched = len({q for q, _ in self.ground_truth})
        return (
            f"{self.name}: {len(self.queries)} queries ({matched} with a copy), "
            f"{len(self.references)} references, {len(self.ground_truth)} ground-truth pairs, "
            f"{len(self.background)} background, {len(self.distractors)} distractors"
        )


@dataclass(frozen=True)
class ClassificationBenchmark:
    """Labelled images: `labels[i]` is the index into `classes` of `images[i]`."""

    name: str
    images: list[Path]
    labels: np.ndarray
    classes: list[str]

    def describe(self) -> str:
        """One line: name, number of images and classes."""
        return f"{self.name}: {len(self.images)} images, {len(self.classes)} classes"
