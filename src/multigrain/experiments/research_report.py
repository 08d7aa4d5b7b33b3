"""The research experiments' report: experiments.json, .md (tables, verdicts), plots, .html."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from multigrain.evaluation.plots import Bar, plot_experiment
from multigrain.evaluation.report import write_html
from multigrain.experiments.results import DatasetResults, GridPoint, Metric
from multigrain.experiments.variants import VARIANTS, Question, Scale
from multigrain.runtime.atomic import atomic_write_text

PAPER = {
    Question.RQ1: "Paper (ImageNet, ResNet-50): the joint loss keeps top-1 close to "
    "classification only and gives retrieval far better than classification only.",
    Question.RQ2: "Paper: repeated augmentations (m=3) improve both top-1 and retrieval at the "
    "same number of images seen.",
    Question.RQ3: "Paper: training with GeM p=3 gives better retrieval than average pooling "
    "(p=1) at a similar top-1.",
    Question.RQ4: "Paper: at a larger test resolution s the best p* grows; top-1 at s=500 with "
    "p* beats s=224 with the training p.",
}


def verdicts(result: DatasetResults) -> list[str]:
    """Plain statements of what this run measured, question by question."""
    summary = result.summary()
    joint = summary[VARIANTS[0]]
    lines = []
    for variant in VARIANTS[1:]:
        values = summary[variant]
        parts = []
        for metric in (result.dataset.top1, Metric.COPY_MAP):
            ours, theirs = joint[metric], values[metric]
            delta = ours.mean - theirs.mean
            spread = max(ours.spread, theirs.spread)
            verdict = (
                "within the seed spread"
                if abs(delta) <= spread
                else ("higher" if delta > 0 else "lower")
            )
            parts.append(
                f"{metric.value} {ours.mean:.3f} vs {theirs.mean:.3f} ({verdict} "
                f"for the joint model)"
            )
        question = variant.question.value
        lines.append(f"{question}: joint vs {variant.name}: " + "; ".join(parts) + ".")
    if result.grid:
        best: dict[int, GridPoint] = {}
        for point in result.grid:
            if point.resolution not in best or point.top1 > best[point.resolution].top1:
                best[point.resolution] = point
        lines.append(
            "RQ4: best p by top-1 per s: "
            + ", ".join(
                f"s={s}: p*={pt.exponent:g} (top-1 {pt.top1:.3f})" for s, pt in best.items()
            )
            + "."
        )
    if result.whitening is not None:
        w = result.whitening
        lines.append(
            f"Whitening: copy mAP {w.copy_map:.3f} -> {w.copy_map_whitened:.3f}; "
            f"top-1 {w.top1:.3f} -> {w.top1_folded:.3f} after folding."
        )
    return lines


def tables(result: DatasetResults, scale: Scale) -> str:
    """The markdown section of one dataset: variants, the RQ4 grid, whitening, verdicts."""
    summary = result.summary()
    metrics = list(next(iter(summary.values())))
    lines = [
        f"## {result.dataset.value}",
        "",
        f"Seeds {list(scale.seeds)}; mean ± spread (max − min over seeds).",
        "",
        "| question | variant | " + " | ".join(m.value for m in metrics) + " |",
        "|---|---|" + "---|" * len(metrics),
    ]
    for variant, values in summary.items():
        cells = " | ".join(f"{values[m].mean:.3f} ± {values[m].spread:.3f}" for m in metrics)
        lines.append(f"| {variant.question.value} | {variant.name} | {cells} |")
    if result.grid:
        lines += ["", "RQ4 (joint model, seed 0): top-1 / copy mAP per test s and p", ""]
        exponents = sorted({pt.exponent for pt in result.grid})
        lines.append("| s | " + " | ".join(f"p={p:g}" for p in exponents) + " |")
        lines.append("|---|" + "---|" * len(exponents))
        for s in sorted({pt.resolution for pt in result.grid}):
            row = {pt.exponent: pt for pt in result.grid if pt.resolution == s}
            lines.append(
                f"| {s} | "
                + " | ".join(f"{row[p].top1:.3f} / {row[p].retrieval_map:.3f}" for p in exponents)
                + " |"
            )
    if result.whitening is not None:
        lines += ["", "| whitening | value |", "|---|---|"]
        lines += [f"| {k} | {v:.3f} |" for k, v in result.whitening.labelled().items()]
    lines += ["", "Measured:", ""] + [f"- {line}" for line in verdicts(result)]
    return "\n".join(lines)


def _plot(result: DatasetResults, path: Path) -> Path:
    summary = result.summary()
    metrics = list(next(iter(summary.values())))
    bars = {
        metric.value: [
            Bar(variant.short_name, values[metric].mean, values[metric].spread)
            for variant, values in summary.items()
        ]
        for metric in metrics
    }
    curves: dict[float, list[tuple[int, float]]] = {}
    for point in result.grid:
        curves.setdefault(point.exponent, []).append((point.resolution, point.top1))
    return plot_experiment(path, dataset=result.dataset.value, bars=bars, top1_curves=curves)


def write_report(results: list[DatasetResults], folder: Path, scale: Scale) -> Path:
    """folder/experiments.json, experiments.md, one PNG per dataset and experiments.html."""
    folder.mkdir(parents=True, exist_ok=True)
    document = {"scale": asdict(scale), "results": [r.to_dict() for r in results]}
    atomic_write_text(folder / "experiments.json", json.dumps(document, indent=2))
    sections = [tables(result, scale) for result in results]
    claims = "\n".join(f"- {q.value}: {text}" for q, text in PAPER.items())
    markdown = "# multigrain experiments\n\n" + "\n\n".join(sections)
    markdown += "\n\n## What the paper reports\n\n" + claims + "\n"
    atomic_write_text(folder / "experiments.md", markdown)
    plots = [_plot(result, folder / f"{result.dataset.value}.png") for result in results]
    return write_html(
        folder / "experiments.html",
        title="multigrain experiments",
        markdown_tables=sections + [claims],
        plots=plots,
        grid=[],
    )
