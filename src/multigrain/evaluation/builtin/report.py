"""The built-in benchmark's report folder: report.json, report.md, the plots, report.html."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import torch

from multigrain.evaluation.builtin.result import BuiltinResult
from multigrain.evaluation.plots import plot_breakdown, plot_calibration
from multigrain.evaluation.report import GridRow, write_html
from multigrain.inference.calibrate import CalibrationResult
from multigrain.runtime.atomic import atomic_write_text


def query_grid(
    queries: torch.Tensor, references: torch.Tensor, query_paths: list[Path],
    reference_paths: list[Path], truth: list[int], families: list[str], strengths: list[str],
    *, count: int = 12, top: int = 5,
) -> list[GridRow]:  # fmt: skip
    """The report's grid: ``count`` queries, the strongest distortions first and one per
    family before any family repeats, each with its ``top`` best references.

    queries (Q, D), references (R, D): unit descriptors; ``truth[q]`` is the reference
    query q was made from.
    """
    order = sorted(range(len(truth)), key=lambda q: (strengths[q] != "strong", families[q]))
    chosen, seen = [], set()
    for q in order:
        if families[q] not in seen:
            chosen.append(q)
            seen.add(families[q])
    chosen = (chosen + [q for q in order if q not in chosen])[:count]
    scores, indices = (queries[chosen] @ references.T).topk(min(top, len(reference_paths)), dim=1)
    return [
        GridRow(
            query=query_paths[q],
            caption=f"{families[q]} ({strengths[q]})",
            results=[reference_paths[int(i)] for i in indices[row]],
            scores=[float(s) for s in scores[row]],
            correct=[int(i) == truth[q] for i in indices[row]],
        )  # fmt: skip
        for row, q in enumerate(chosen)
    ]


def write_report(
    result: BuiltinResult, folder: Path, grid: list[GridRow],
    *, calibration: CalibrationResult | None = None, title: str = "multigrain: built-in benchmark",
    summary: str = "", extra: Mapping[str, object] | None = None,
) -> Path:  # fmt: skip
    """folder/report.json, report.md, copy_map.png (+ calibration.png) and report.html.

    ``summary`` (markdown) goes above the detailed tables; ``extra`` (a JSON object) is
    stored in the JSON next to the result (under ``"summary"``).
    """
    folder.mkdir(parents=True, exist_ok=True)
    document: dict[str, object] = {"result": result.to_dict()}
    if extra is not None:
        document["summary"] = dict(extra)
    atomic_write_text(folder / "report.json", json.dumps(document, indent=2))
    markdown = result.to_markdown()
    tables = [summary, markdown] if summary else [markdown]
    atomic_write_text(folder / "report.md", f"# {title}\n\n" + "\n\n".join(tables) + "\n")
    plots = [plot_breakdown(result.copy_detection, folder / "copy_map.png")]
    if calibration is not None:
        plots.append(plot_calibration(calibration, folder / "calibration.png"))
    return write_html(
        folder / "report.html", title=title, markdown_tables=tables, plots=plots, grid=grid,
    )  # fmt: skip
