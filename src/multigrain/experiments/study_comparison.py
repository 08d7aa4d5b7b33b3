"""A study's answers beside other studies' (the same design on other schedule lengths or
another schedule): each answer's interval and verdict in every study, and each run's final
figures."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from multigrain.experiments.statistics import Interval
from multigrain.runtime.errors import MultiGrainError
from multigrain.training.config import Schedule


def interval_text(i: Interval) -> str:
    return f"{i.difference:+.3f} [{i.low:+.3f}, {i.high:+.3f}]"


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


def schedule_text(schedule: str) -> str:
    """Scale.schedule in words."""
    if schedule == Schedule.COSINE.value:
        return "learning rate: cosine to 0"
    return "learning rate: the paper's steps, x 0.1 after 1/4, 1/2 and 3/4 of the steps"


def _schedule(document: dict[str, Any]) -> str:
    """A report's schedule (the reports of the first studies do not record theirs: cosine)."""
    return str(document["scale"].get("schedule", Schedule.COSINE.value))


def study_label(document: dict[str, Any]) -> str:
    """A study's name in the tables: its length, and its schedule unless cosine."""
    schedule = _schedule(document)
    steps = f"{document['scale']['steps']} steps"
    return steps if schedule == Schedule.COSINE.value else f"{steps}, {schedule} lr"


def _order(document: dict[str, Any]) -> tuple[int, bool]:
    return document["scale"]["steps"], _schedule(document) != Schedule.COSINE.value


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
    shortest schedule first (cosine before step at one length), and each run's final
    figures in every study."""
    studies = sorted([*others, (document, "this study")], key=lambda s: _order(s[0]))
    cells = [verdict_cells(d) for d, _ in studies]
    labels = [study_label(d) for d, _ in studies]
    flat = "; ".join(
        f"{label}: {_flat_count(d)}" for label, (d, _) in zip(labels, studies, strict=True)
    )
    names = ", ".join(f"{name} ({label})" for label, (_, name) in zip(labels, studies, strict=True))
    lines = [
        f"## Against {', '.join(name for _, name in others)}",
        "",
        f"The same answers from each study, shortest schedule first: {names}. Convergence "
        f"(≤ {document['scale']['convergence_tolerance']} over the last quarter): {flat}.",
        "",
        "| answer | "
        + " | ".join(f"{label} [95 % CI] | verdict" for label in labels)
        + " | verdict changed |",
        "|---|" + "---|---|" * len(studies) + "---|",
    ]
    order = list(cells[-1]) + [n for c in cells[:-1] for n in c if n not in cells[-1]]
    for name in dict.fromkeys(order):
        row, verdicts = [], []
        for source in cells:
            if name in source:
                interval, verdict = source[name]
                row += [interval_text(Interval(**interval)), verdict]
                verdicts.append(verdict)
            else:
                row += ["—", "—"]
        changed = "—" if len(verdicts) < len(cells) else "yes" if len(set(verdicts)) > 1 else "no"
        lines.append(f"| {name} | " + " | ".join(row) + f" | {changed} |")
    return lines + ["", *_final_figures(studies, labels)]


def _final_figures(studies: list[tuple[dict[str, Any], str]], labels: list[str]) -> list[str]:
    """Each run's end-of-training figures and flatness in every study."""
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
    if all(_schedule(d) == Schedule.COSINE.value for d, _ in studies):  # say "steps" once
        lengths = " / ".join(str(d["scale"]["steps"]) for d, _ in studies)
        named = f"{lengths} steps"
    else:
        lengths = named = " / ".join(labels)
    lines = [
        f"Each run's held-out figures at the end of training, at {named}, and whether "
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
