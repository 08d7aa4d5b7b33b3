"""Every plot the reports draw, as PNG files: matplotlib's object API, no pyplot.

No global state and no display: each function builds a ``Figure`` on an Agg canvas, saves
it to memory and writes the file atomically, so a report folder never holds half a PNG.
Matplotlib is imported inside each function: it costs a second at start-up and only the
report writers need it.
"""

from __future__ import annotations

import io
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from multigrain.evaluation.heldout.select import CurvePoint
from multigrain.inference.calibrate import CalibrationResult
from multigrain.metrics.copy_families import ALL, BreakdownRow
from multigrain.runtime.atomic import atomic_write_bytes

if TYPE_CHECKING:
    from matplotlib.figure import Figure


@dataclass(frozen=True)
class Bar:
    """One horizontal bar: a mean over seeds with its spread (max - min)."""

    label: str
    mean: float
    spread: float


def _new_figure(width: float, height: float, dpi: int = 100) -> Figure:
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # lazy: start-up time
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=dpi)
    FigureCanvasAgg(figure)
    return figure


def _save(figure: Figure, path: str | os.PathLike[str], **options: Any) -> Path:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", **options)
    return atomic_write_bytes(Path(path), buffer.getvalue())


def plot_breakdown(rows: Sequence[BreakdownRow], path: Path, *, metric: str = "map") -> Path:
    """Grouped bars: `metric` per transform family (all strengths), one bar per method."""
    chosen = [r for r in rows if r.strength == ALL and r.family != ALL]
    families = list(dict.fromkeys(r.family for r in chosen))
    methods = list(dict.fromkeys(r.method for r in chosen))
    value = {(r.method, r.family): getattr(r, metric) for r in chosen}
    figure = _new_figure(max(6.0, 0.9 * len(families) + 4), 4.0)
    axes = figure.add_subplot(1, 1, 1)
    width = 0.8 / max(len(methods), 1)
    for offset, method in enumerate(methods):
        xs = [i + offset * width for i in range(len(families))]
        axes.bar(xs, [value.get((method, f), 0.0) for f in families], width, label=method)
    axes.set_xticks([i + 0.4 - width / 2 for i in range(len(families))], families, rotation=30)
    axes.set_ylabel(metric)
    axes.set_ylim(0, 1)
    axes.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
    axes.set_title(f"copy detection: {metric} per transform family")
    figure.tight_layout()
    return _save(figure, path, dpi=100, bbox_inches="tight")  # keep the legend


def plot_calibration(result: CalibrationResult, path: str | os.PathLike[str]) -> Path:
    """PNG of top-1 (%) against p, one line per s, p* circled (the paper's figure)."""
    figure = _new_figure(6, 4)
    axes = figure.add_subplot()
    for s in sorted({row.resolution for row in result.table}):
        rows = sorted((r for r in result.table if r.resolution == s), key=lambda r: r.exponent)
        (line,) = axes.plot(
            [r.exponent for r in rows], [100 * r.top1 for r in rows], marker=".", label=f"s={s}"
        )
        best = result.best[s]
        axes.plot(
            [best],
            [100 * result.top1(s, best)],
            marker="o",
            markersize=10,
            fillstyle="none",
            color=line.get_color(),
        )
    axes.set_xlabel("pooling exponent p")
    axes.set_ylabel("top-1 accuracy (%)")
    axes.set_title(f"calibration ({result.method}), s*={result.best_resolution}")
    axes.legend()
    axes.grid(alpha=0.3)
    return _save(figure, path)


def plot_curve(points: Sequence[CurvePoint], path: Path, *, title: str) -> Path:
    """Validation mAP / µAP / mean family mAP against training steps, as a PNG."""
    figure = _new_figure(7, 4, dpi=110)
    axes = figure.add_subplot()
    steps = [p.step for p in points]
    axes.plot(steps, [p.map for p in points], "o-", label="mAP")
    axes.plot(steps, [p.micro_ap for p in points], "s--", label="µAP")
    axes.plot(steps, [p.family_mean for p in points], "^:", label="mean of family mAPs")
    axes.set_xlabel("training step")
    axes.set_ylabel("validation copy detection")
    axes.set_title(title)
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    return _save(figure, path)


def plot_experiment(
    path: Path,
    *,
    dataset: str,
    bars: Mapping[str, Sequence[Bar]],
    top1_curves: Mapping[float, Sequence[tuple[int, float]]],
) -> Path:
    """One panel of variant bars per metric, then top-1 against the test resolution s.

    ``bars``: metric -> one :class:`Bar` per variant; ``top1_curves``: pooling exponent p
    -> (s, top-1) points, one line per p (RQ4).
    """
    figure = _new_figure(12, 4, dpi=90)
    panels = len(bars) + 1
    for column, (metric, values) in enumerate(bars.items()):
        axes = figure.add_subplot(1, panels, column + 1)
        axes.barh(
            range(len(values)),
            [bar.mean for bar in values],
            xerr=[bar.spread / 2 for bar in values],
            color="#4a7",
        )
        axes.set_yticks(range(len(values)), [bar.label for bar in values], fontsize=7)
        axes.set_title(f"{dataset}: {metric}", fontsize=9)
        axes.set_xlim(0, 1)
    axes = figure.add_subplot(1, panels, panels)
    for p, points in sorted(top1_curves.items()):
        ordered = sorted(points)
        axes.plot([s for s, _ in ordered], [t for _, t in ordered], marker="o", label=f"p={p:g}")
    axes.set_xlabel("test resolution s")
    axes.set_ylabel("top-1")
    axes.set_title("RQ4: top-1 vs s", fontsize=9)
    axes.legend(fontsize=7)
    figure.tight_layout()
    return _save(figure, path, dpi=90)
