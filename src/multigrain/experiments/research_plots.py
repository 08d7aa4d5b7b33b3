"""The study's plots: learning curves of every run, and the RQ4 grid."""

from __future__ import annotations

from pathlib import Path

from multigrain.experiments.results import Metric
from multigrain.experiments.study_analysis import Analysis
from multigrain.experiments.variants import VARIANTS
from multigrain.runtime.atomic import atomic_write_bytes


def _save(figure: object, path: Path) -> Path:
    import io

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90)  # type: ignore[attr-defined]
    return atomic_write_bytes(path, buffer.getvalue())


def _figure(width: float, height: float) -> object:
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # lazy: start-up time
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height))
    FigureCanvasAgg(figure)
    return figure


def plot_curves(analysis: Analysis, path: Path) -> Path:
    """One column per variant, a row per figure: held-out value vs step, a line per seed;
    the last quarter of training shaded."""
    figure = _figure(3 * len(VARIANTS), 5.5)
    for column, variant in enumerate(VARIANTS):
        runs = [r for r in analysis.runs if r.variant == variant.slug]
        for row, metric in enumerate(Metric):
            axes = figure.add_subplot(2, len(VARIANTS), row * len(VARIANTS) + column + 1)  # type: ignore[attr-defined]
            for run in runs:
                steps = [p.step for p in run.curve]
                axes.plot(steps, [p.value(metric) for p in run.curve], marker=".",
                          label=f"seed {run.seed}")  # fmt: skip
            axes.axvspan(0.75 * analysis.scale.steps, analysis.scale.steps, color="#eee")
            axes.set_title(f"{variant.short_name}", fontsize=8)
            axes.set_ylabel(metric.value, fontsize=8)
            axes.set_xlabel("step", fontsize=8)
            axes.tick_params(labelsize=7)
            if runs and column == 0:
                axes.legend(fontsize=6)
    figure.tight_layout()  # type: ignore[attr-defined]
    return _save(figure, path)


def plot_grid(analysis: Analysis, path: Path) -> Path:
    """RQ4: each figure against the test exponent p, a line per test resolution s."""
    figure = _figure(10, 4)
    for column, answer in enumerate(analysis.grid):
        axes = figure.add_subplot(1, len(analysis.grid), column + 1)  # type: ignore[attr-defined]
        for s, row in zip(analysis.scale.resolutions, answer.means, strict=True):
            axes.plot(analysis.scale.exponents, row, marker="o", label=f"s={s}")
        axes.set_xlabel("test exponent p")
        axes.set_ylabel(answer.metric.value)
        axes.set_title(f"RQ4: {answer.metric.value} (joint, mean over seeds)", fontsize=9)
        axes.legend(fontsize=7)
    figure.tight_layout()  # type: ignore[attr-defined]
    return _save(figure, path)
