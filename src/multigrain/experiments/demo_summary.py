"""What the built-in demo reports first: its headline figures, timings and comparisons."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from enum import Enum
from typing import Any

from multigrain.evaluation.builtin.result import BuiltinResult, Method
from multigrain.evaluation.heldout.compare import comparison_dicts, comparison_markdown
from multigrain.evaluation.heldout.scoring import CopyScores
from multigrain.metrics.copy_families import ALL


class Headline(str, Enum):
    """A figure of the headline table; the value is its row name (and JSON key)."""

    COPY_MAP = "copy mAP (all)"
    COPY_MAP_LIGHT = "copy mAP (light)"
    COPY_MAP_MEDIUM = "copy mAP (medium)"
    COPY_MAP_STRONG = "copy mAP (strong)"
    COPY_MICRO_AP = "copy µAP"
    COPY_MICRO_AP_NORMALISED = "copy µAP, normalised"
    INSTANCE_MAP = "instance mAP"
    HELDOUT_TOP1 = "held-out top-1"

    @classmethod
    def copy_map(cls, strength: str) -> Headline:
        """The copy mAP over the queries of one distortion strength (or all of them)."""
        return cls(f"copy mAP ({strength})")


#: method -> figure -> value; a method has only the figures that apply to it.
HeadlineTable = dict[Method, dict[Headline, float]]


@dataclass
class StepSeconds:
    """Wall-clock seconds of each step of the demo."""

    data: float = 0.0
    train: float = 0.0
    calibrate: float = 0.0
    whiten: float = 0.0
    index: float = 0.0
    evaluate: float = 0.0
    heldout: float = 0.0


@dataclass
class DemoSummary:
    output_dir: str
    data_root: str
    steps: int
    seconds: StepSeconds = field(default_factory=StepSeconds)
    exponent: float = 3.0
    index_recall_at_1: float = 0.0
    headline: HeadlineTable = field(default_factory=dict)
    # copy detection on photo packages neither model trained on (corpus.compare)
    heldout_packages: list[CopyScores] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """The JSON object stored under ``"summary"`` in report.json."""
        payload = asdict(self)
        payload["headline"] = {
            method.value: {figure.value: value for figure, value in values.items()}
            for method, values in self.headline.items()
        }
        payload["heldout_packages"] = comparison_dicts(self.heldout_packages)
        return payload

    def to_markdown(self) -> str:
        methods = list(self.headline)
        rows = [
            "| figure | " + " | ".join(m.value for m in methods) + " |",
            "|---|" + "---|" * len(methods),
        ]
        figures = list(dict.fromkeys(f for values in self.headline.values() for f in values))
        for figure in figures:
            cells = [
                f"{self.headline[m][figure]:.3f}" if figure in self.headline[m] else "—"
                for m in methods
            ]
            rows.append(f"| {figure.value} | " + " | ".join(cells) + " |")
        timing = ", ".join(f"{k} {v:.0f} s" for k, v in asdict(self.seconds).items())
        heldout = ""
        if self.heldout_packages:
            heldout = (
                "\n\nCopy detection on photo packages that neither model trained on "
                "(the shipped model's test packages):\n\n"
                + comparison_markdown(self.heldout_packages)
            )
        return (
            f"{self.steps} training steps; p* = {self.exponent:g} at the test resolution; "
            f"FAISS index recall@1 for the copy queries: {self.index_recall_at_1:.3f}\n\n"
            + "\n".join(rows)
            + heldout
            + f"\n\ntime: {timing}"
        )


def headline_figures(result: BuiltinResult) -> HeadlineTable:
    """The figures a newcomer looks at first, per method."""
    headline: HeadlineTable = {}
    for row in result.copy_detection:
        if row.family != ALL:
            continue
        values = headline.setdefault(Method(row.method), {})
        values[Headline.copy_map(row.strength)] = row.map
        if row.strength == ALL:
            values[Headline.COPY_MICRO_AP] = row.micro_ap
            values[Headline.COPY_MICRO_AP_NORMALISED] = row.micro_ap_normalised
    for method, scores in result.instances.items():
        headline.setdefault(method, {})[Headline.INSTANCE_MAP] = scores.map
    for method, top1 in result.classification.items():
        headline.setdefault(method, {})[Headline.HELDOUT_TOP1] = top1
    return headline
