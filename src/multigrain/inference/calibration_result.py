"""The outcome of a calibration of s* and p* (SPEC §4): the table, the choices, the file."""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from multigrain.runtime.atomic import atomic_write_bytes
from multigrain.runtime.errors import MultiGrainError


@dataclass(frozen=True)
class CalibrationRow:
    """Top-1 accuracy (fraction in [0, 1]) at test resolution s and pooling exponent p."""

    resolution: int
    exponent: float
    top1: float


@dataclass
class CalibrationResult:
    """The outcome of a calibration.

    Attributes:
        table: one row per evaluated (s, p).
        best: p* per resolution s: the exponent of highest top-1 at that s; ties go to the
            smallest p (the one closest to average pooling).
        best_resolution: s* = the s whose top-1 at p* is highest; ties go to the smallest s
            (the cheapest).
        method: ``"grid"`` (cross-validation) or ``"learned"`` (gradient descent on p).
        num_images: number of images scored.
    """

    table: list[CalibrationRow]
    best: dict[int, float]
    best_resolution: int
    method: str
    num_images: int = 0
    metadata: dict[str, str | int | float] = field(default_factory=dict)

    @classmethod
    def from_table(
        cls, table: list[CalibrationRow], *, method: str, num_images: int
    ) -> CalibrationResult:
        """Pick p* per s and s* from ``table`` with the tie rules above."""
        if not table:
            raise MultiGrainError("empty calibration table: give at least one s and one p")
        winners: dict[int, CalibrationRow] = {}
        for row in sorted(table, key=lambda r: (r.resolution, r.exponent)):
            current = winners.get(row.resolution)
            if current is None or row.top1 > current.top1:
                winners[row.resolution] = row
        best_row = max(sorted(winners.values(), key=lambda r: r.resolution), key=lambda r: r.top1)
        return cls(
            table=list(table),
            best={s: row.exponent for s, row in winners.items()},
            best_resolution=best_row.resolution,
            method=method,
            num_images=num_images,
        )

    def top1(self, resolution: int, exponent: float) -> float:
        """The table's top-1 at (s, p); MultiGrainError if that pair was not evaluated."""
        for row in self.table:
            if row.resolution == resolution and math.isclose(row.exponent, exponent):
                return row.top1
        raise MultiGrainError(f"(s={resolution}, p={exponent}) is not in the calibration table")

    def to_json(self) -> str:
        """A JSON document; JSON object keys are strings, so ``best`` is keyed by str(s)."""
        payload = asdict(self)
        payload["best"] = {str(s): p for s, p in self.best.items()}
        return json.dumps(payload, indent=2)

    @classmethod
    def from_json(cls, text: str) -> CalibrationResult:
        """Inverse of :meth:`to_json`."""
        try:
            payload: dict[str, Any] = json.loads(text)
            return cls(
                table=[
                    CalibrationRow(int(r["resolution"]), float(r["exponent"]), float(r["top1"]))
                    for r in payload["table"]
                ],
                best={int(s): float(p) for s, p in payload["best"].items()},
                best_resolution=int(payload["best_resolution"]),
                method=str(payload["method"]),
                num_images=int(payload.get("num_images", 0)),
                metadata=dict(payload.get("metadata", {})),
            )
        except (ValueError, KeyError, TypeError, AttributeError) as error:
            raise MultiGrainError(
                f"not a calibration result ({error!r}): expected the JSON written by "
                "CalibrationResult.save"
            ) from error

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write :meth:`to_json` to ``path`` atomically."""
        return atomic_write_bytes(Path(path), self.to_json().encode("utf-8"))

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> CalibrationResult:
        """Read a file written by :meth:`save`."""
        path = Path(path)
        if not path.is_file():
            raise MultiGrainError(f"calibration file {path} does not exist: run a calibration")
        return cls.from_json(path.read_text(encoding="utf-8"))
