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
from multigrain.experiments.variants import VARIANTS
from multigrain.runtime.atomic import atomic_write_text
from multigrain.runtime.errors import MultiGrainError


def _interval(i: Interval) -> str:
    return f"{i.difference:+.3f} [{i.low:+.3f}, {i.high:+.3f}]"


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
            f"| {c.joint:.3f} | {c.other:.3f} | {_interval(c.interval)} | {c.claim.paper} "
            f"| {c.verdict.value} |"
        )
    for g in analysis.grid:
        best = ", ".join(
            f"{s}: {p:g}" for s, p in zip(analysis.scale.resolutions, g.best_exponents, strict=True)
        )
        lines.append(
            f"| RQ4 | p*(s) | {g.metric.value} | p* by s: {best} | | p*(largest s) − p*(training "
            f"s) {_interval(g.exponent_shift)} | {RQ4_BEST_EXPONENT[g.metric]} "
            f"| {g.exponent_verdict.value} |"
        )
        lines.append(
            f"| RQ4 | s={analysis.scale.resolutions[0]}, p=3 | {g.metric.value} | best s > "
            f"training: {g.best_resolution} | | {_interval(g.gain)} | {RQ4_GAIN[g.metric]} "
            f"| {g.gain_verdict.value} |"
        )
    w = analysis.whitening
    if w is not None:
        lines.append(
            f"| whitening | raw descriptor | copy mAP | {w.copy_map_whitened:.3f} | "
            f"{w.copy_map:.3f} | {_interval(w.retrieval)} | {WHITENING_RETRIEVAL} "
            f"| {w.retrieval_verdict.value} |"
        )
        lines.append(
            f"| whitening | model's top-1 | top-1 from the stored vector | {w.top1_stored:.3f} | "
            f"{w.top1:.3f} | {_interval(w.top1_difference)}; same prediction on "
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


def verdict_cells(document: dict[str, Any]) -> dict[str, tuple[dict[str, float], str]]:
    """Every answer of an experiments.json: its name -> (interval, verdict)."""
    cells = {
        f"{c['question']} joint vs {c['other']}, {c['metric']}": (c["difference"], c["verdict"])
        for c in document["comparisons"]
    }
    for g in document["rq4"]:
        cells[f"RQ4 p*(largest s) − p*(training s), {g['metric']}"] = (
            g["exponent_shift"], g["exponent_verdict"]
        )  # fmt: skip
        cells[f"RQ4 best larger s vs training s, {g['metric']}"] = (g["gain"], g["gain_verdict"])
    w = document.get("whitening")
    if w:
        cells["whitening: whitened − raw, copy mAP"] = (w["retrieval"], w["retrieval_verdict"])
        cells["whitening: top-1 from the stored vector − model's"] = (
            w["top1_difference"], w["top1_verdict"]
        )  # fmt: skip
    return cells


def _flat_count(document: dict[str, Any]) -> str:
    rows = document.get("convergence")
    if rows is None:
        return "not recorded (report written before convergence was stored)"
    flat = sum(1 for r in rows if r["top1_flat"] and r["copy_map_flat"])
    return f"{flat} of {len(rows)} runs flat on both figures"


def against_section(
    document: dict[str, Any], others: Sequence[tuple[dict[str, Any], str]]
) -> list[str]:
    """This study's answers beside other studies' (e.g. the same design on fewer steps),
    shortest schedule first, and each run's final figures at every length."""
    studies = sorted([*others, (document, "this study")], key=lambda s: s[0]["scale"]["steps"])
    cells = [verdict_cells(d) for d, _ in studies]
    steps = [d["scale"]["steps"] for d, _ in studies]
    flat = "; ".join(f"{d['scale']['steps']} steps: {_flat_count(d)}" for d, _ in studies)
    names = ", ".join(f"{name} ({d['scale']['steps']} steps)" for d, name in studies)
    lines = [
        f"## Against {', '.join(name for _, name in others)}",
        "",
        f"The same answers from each study, shortest schedule first: {names}. Convergence "
        f"(≤ {document['scale']['convergence_tolerance']} over the last quarter): {flat}.",
        "",
        "| answer | "
        + " | ".join(f"{n} steps [95 % CI] | verdict" for n in steps)
        + " | verdict changed |",
        "|---|" + "---|---|" * len(studies) + "---|",
    ]
    order = list(cells[-1]) + [n for c in cells[:-1] for n in c if n not in cells[-1]]
    for name in dict.fromkeys(order):
        row, verdicts = [], []
        for source in cells:
            if name in source:
                interval, verdict = source[name]
                row += [_interval(Interval(**interval)), verdict]
                verdicts.append(verdict)
            else:
                row += ["—", "—"]
        changed = "—" if len(verdicts) < len(cells) else "yes" if len(set(verdicts)) > 1 else "no"
        lines.append(f"| {name} | " + " | ".join(row) + f" | {changed} |")
    return lines + ["", *_final_figures(studies, steps)]


def _final_figures(studies: list[tuple[dict[str, Any], str]], steps: list[int]) -> list[str]:
    """Each run's end-of-training figures and flatness at every schedule length."""
    found: list[dict[tuple[str, int], tuple[float, float, str]]] = []
    for document, _ in studies:
        flat = {
            (c["variant"], c["seed"]): c["top1_flat"] and c["copy_map_flat"]
            for c in document.get("convergence") or []
            if "variant" in c
        }
        found.append(
            {
                (r["variant"], r["seed"]): (
                    r["top1"], r["copy_map"], _yes_no(flat.get((r["variant"], r["seed"])))
                )
                for r in document.get("runs", [])
            }
        )  # fmt: skip
    lengths = " / ".join(str(n) for n in steps)
    lines = [
        f"Each run's held-out figures at the end of training, at {lengths} steps, and whether "
        "its last quarter was flat on both:",
        "",
        f"| run | top-1 at {lengths} | copy mAP at {lengths} | flat at {lengths} |",
        "|---|---|---|---|",
    ]
    for variant, seed in dict.fromkeys(key for runs in reversed(found) for key in runs):
        values = [runs.get((variant, seed)) for runs in found]
        columns = [
            " / ".join("—" if v is None else f"{v[0]:.3f}" for v in values),
            " / ".join("—" if v is None else f"{v[1]:.3f}" for v in values),
            " / ".join("—" if v is None else v[2] for v in values),
        ]
        lines.append(f"| {variant} seed {seed} | " + " | ".join(columns) + " |")
    return lines


def _yes_no(value: bool | None) -> str:
    return "?" if value is None else "yes" if value else "no"


def read_study(folder: Path) -> dict[str, Any]:
    """The experiments.json of a study folder, or an error saying how to make it."""
    path = folder / "experiments.json"
    if not path.is_file():
        raise MultiGrainError(
            f"{path}: no report to compare with: run `multigrain experiments -o {folder} "
            "--finished-only` first"
        )
    document: dict[str, Any] = json.loads(path.read_text())
    return document


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
        f"{scale.steps} steps x {scale.batch_size}; {scale.test_per_class * 10} test images; "
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
