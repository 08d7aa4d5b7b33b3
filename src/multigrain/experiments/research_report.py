"""The study's report: experiments.json, experiments.md, two plots, experiments.html."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from multigrain.evaluation.report import write_html
from multigrain.experiments.claims import (
    RQ4_BEST_EXPONENT,
    RQ4_GAIN,
    WHITENING_RETRIEVAL,
    WHITENING_TOP1,
)
from multigrain.experiments.research_plots import plot_curves, plot_grid
from multigrain.experiments.results import Metric
from multigrain.experiments.statistics import Interval
from multigrain.experiments.study_analysis import Analysis
from multigrain.experiments.study_comparison import (
    against_section,
    interval_text,
    read_study,
    schedule_text,
    verdict_cells,
)
from multigrain.experiments.variants import VARIANTS
from multigrain.runtime.atomic import atomic_write_text


def _variants_table(analysis: Analysis) -> list[str]:
    lines = [
        "| variant | seeds | test top-1 (mean ± spread) | copy mAP (mean ± spread) |",
        "|---|---|---|---|",
    ]
    for variant in VARIANTS:
        runs = [r for r in analysis.runs if r.variant == variant.slug]
        if not runs:
            continue
        cells = []
        for values in ([r.top1 for r in runs], [r.copy_map for r in runs]):
            mean = sum(values) / len(values)
            cells.append(f"{mean:.3f} ± {max(values) - min(values):.3f}")
        lines.append(f"| {variant.name} | {len(runs)} | {cells[0]} | {cells[1]} |")
    return lines


def _answers(analysis: Analysis) -> list[str]:
    lines = [
        "| question | joint vs | figure | joint | other | joint − other [95 % CI] | paper "
        "| verdict |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for c in analysis.comparisons:
        lines.append(
            f"| {c.claim.question.value} | {c.claim.other.short_name} | {c.claim.metric.value} "
            f"| {c.joint:.3f} | {c.other:.3f} | {interval_text(c.interval)} | {c.claim.paper} "
            f"| {c.verdict.value} |"
        )
    for g in analysis.grid:
        best = ", ".join(
            f"{s}: {p:g}" for s, p in zip(analysis.scale.resolutions, g.best_exponents, strict=True)
        )
        lines.append(
            f"| RQ4 | p*(s) | {g.metric.value} | p* by s: {best} | | p*(largest s) − p*(training "
            f"s) {interval_text(g.exponent_shift)} | {RQ4_BEST_EXPONENT[g.metric]} "
            f"| {g.exponent_verdict.value} |"
        )
        lines.append(
            f"| RQ4 | s={analysis.scale.resolutions[0]}, p=3 | {g.metric.value} | best s > "
            f"training: {g.best_resolution} | | {interval_text(g.gain)} | {RQ4_GAIN[g.metric]} "
            f"| {g.gain_verdict.value} |"
        )
    w = analysis.whitening
    if w is not None:
        lines.append(
            f"| whitening | raw descriptor | copy mAP | {w.copy_map_whitened:.3f} | "
            f"{w.copy_map:.3f} | {interval_text(w.retrieval)} | {WHITENING_RETRIEVAL} "
            f"| {w.retrieval_verdict.value} |"
        )
        lines.append(
            f"| whitening | model's top-1 | top-1 from the stored vector | {w.top1_stored:.3f} | "
            f"{w.top1:.3f} | {interval_text(w.top1_difference)}; same prediction on "
            f"{w.same_prediction:.2%} of images (worst seed) | {WHITENING_TOP1} "
            f"| {w.top1_verdict.value} |"
        )
    return lines


def _grid_tables(analysis: Analysis) -> list[str]:
    lines: list[str] = []
    exponents = analysis.scale.exponents
    for g in analysis.grid:
        lines += [
            "",
            f"RQ4, {g.metric.value} (joint models, mean over seeds, first "
            f"{analysis.scale.grid_images} test images):",
            "",
            "| s | " + " | ".join(f"p={p:g}" for p in exponents) + " |",
            "|---|" + "---|" * len(exponents),
        ]
        for s, row in zip(analysis.scale.resolutions, g.means, strict=True):
            lines.append(f"| {s} | " + " | ".join(f"{v:.3f}" for v in row) + " |")
    return lines


def _convergence_table(analysis: Analysis) -> list[str]:
    lines = [
        f"Convergence: max − min of each held-out figure over the checkpoints of the last "
        f"quarter of training ≤ {analysis.scale.convergence_tolerance} (first "
        f"{analysis.scale.curve_images} test images).",
        "",
        "| run | top-1 change | flat | copy mAP change | flat | training s | scoring s |",
        "|---|---|---|---|---|---|---|",
    ]
    for run in analysis.runs:
        top1 = analysis.convergence(run, Metric.TOP1)
        copy = analysis.convergence(run, Metric.COPY_MAP)
        lines.append(
            f"| {run.variant} seed {run.seed} | {top1.change:.3f} | {'yes' if top1.flat else 'no'}"
            f" | {copy.change:.3f} | {'yes' if copy.flat else 'no'} | {run.train_seconds:.0f} | "
            f"{run.score_seconds or float('nan'):.0f} |"
        )
    return lines


def _document(analysis: Analysis) -> dict[str, Any]:
    return {
        "scale": asdict(analysis.scale),
        "runs": [asdict(run) for run in analysis.runs],
        "convergence": [
            {
                "variant": run.variant,
                "seed": run.seed,
                **{
                    f"{key}_{part}": getattr(analysis.convergence(run, metric), part)
                    for key, metric in (("top1", Metric.TOP1), ("copy_map", Metric.COPY_MAP))
                    for part in ("change", "flat")
                },
            }
            for run in analysis.runs
        ],
        "comparisons": [
            {
                "question": c.claim.question.value,
                "other": c.claim.other.name,
                "metric": c.claim.metric.value,
                "joint": c.joint,
                "other_value": c.other,
                "difference": asdict(c.interval),
                "paper": c.claim.paper,
                "verdict": c.verdict.value,
            }
            for c in analysis.comparisons
        ],
        "rq4": [
            {
                "metric": g.metric.value,
                "means": g.means.tolist(),
                "best_exponents": list(g.best_exponents),
                "exponent_shift": asdict(g.exponent_shift),
                "exponent_verdict": g.exponent_verdict.value,
                "best_resolution": g.best_resolution,
                "gain": asdict(g.gain),
                "gain_verdict": g.gain_verdict.value,
            }
            for g in analysis.grid
        ],
        "whitening": (
            {
                key: (
                    asdict(value) if isinstance(value, Interval) else getattr(value, "value", value)
                )
                for key, value in vars(analysis.whitening).items()
            }
            if analysis.whitening is not None
            else None
        ),
    }


def write_report(analysis: Analysis, folder: Path, *, against: Sequence[Path] = ()) -> Path:
    """folder/experiments.json, experiments.md, curves.png, rq4.png and experiments.html.

    ``against``: other study folders (each with its experiments.json) whose answers are
    set beside these, in a section of the report and under "against" in the JSON.
    """
    folder.mkdir(parents=True, exist_ok=True)
    document = _document(analysis)
    others = [(read_study(other), f"`{other}`") for other in against]
    if others:
        document["against"] = [
            {"folder": str(path), "cells": verdict_cells(other)}
            for path, (other, _) in zip(against, others, strict=True)
        ]
    atomic_write_text(folder / "experiments.json", json.dumps(document, indent=1))
    scale = analysis.scale
    intro = (
        f"Seeds {list(scale.seeds)}; {scale.train_per_class * 10} training images seen for "
        f"{scale.steps} steps x {scale.batch_size} ({schedule_text(scale.schedule)}); "
        f"{scale.test_per_class * 10} test images; "
        "95 % intervals: two-level bootstrap over seeds and test images (paired)."
    )
    sections = [
        "\n".join(["# multigrain experiments", "", intro, "", *_variants_table(analysis)]),
        "\n".join(["## Answers", "", *_answers(analysis), *_grid_tables(analysis)]),
        "\n".join(["## Convergence", "", *_convergence_table(analysis)]),
    ]
    if others:
        sections.append("\n".join(against_section(document, others)))
    atomic_write_text(folder / "experiments.md", "\n\n".join(sections) + "\n")
    plots = [plot_curves(analysis, folder / "curves.png")]
    if analysis.grid:
        plots.append(plot_grid(analysis, folder / "rq4.png"))
    return write_html(
        folder / "experiments.html",
        title="multigrain experiments",
        markdown_tables=sections,
        plots=plots,
        grid=[],
    )
