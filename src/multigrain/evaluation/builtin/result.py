"""The scores of the built-in benchmark: per method, copy detection, instances, classes."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from enum import Enum
from typing import Any

from multigrain.metrics.copy_families import BreakdownRow, breakdown_table


class Method(str, Enum):
    """What describes the images; the value is the name in tables and report.json."""

    PHASH = "phash"
    UNTRAINED = "untrained"
    TRAINED = "trained"
    #: The control: the untrained network's descriptors after a whitening fitted the same way.
    UNTRAINED_WHITENED = "untrained+whitening"
    #: The model's descriptors after its whitening.
    WHITENED = "trained+whitening"

    @property
    def network(self) -> Method:
        """The network whose descriptors this method reads (itself, or before whitening)."""
        return {
            Method.WHITENED: Method.TRAINED,
            Method.UNTRAINED_WHITENED: Method.UNTRAINED,
        }.get(self, self)


@dataclass(frozen=True)
class InstanceScores:
    """Instance retrieval (4 views of each held-out photo, UKBench protocol)."""

    map: float  # each view a query, the other 3 its positives, itself excluded
    ns_score: float  # mean number of the 4 views in the top 4 (itself included), of 4


@dataclass
class BuiltinResult:
    """Every figure of one run of the built-in benchmark.

    ``copy_detection`` rows name their method by ``Method.value``; ``instances`` and
    ``classification`` (held-out top-1; empty when the model was not trained on the
    built-in classes) are keyed by :class:`Method`.
    """

    model: str
    resolution: int
    exponent: float
    copy_detection: list[BreakdownRow]
    instances: dict[Method, InstanceScores]
    classification: dict[Method, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The JSON object stored under ``"result"`` in report.json (methods by name)."""
        payload = asdict(self)
        payload["instances"] = {m.value: asdict(s) for m, s in self.instances.items()}
        payload["classification"] = {m.value: t for m, t in self.classification.items()}
        return payload

    def to_markdown(self) -> str:
        parts = [
            f"model {self.model}, s = {self.resolution}, p = {self.exponent:g}",
            "### Copy detection, mAP\n\n" + breakdown_table(self.copy_detection, metric="map"),
            "### Copy detection, µAP\n\n" + breakdown_table(self.copy_detection, metric="micro_ap"),
            "### Copy detection, µAP with score normalisation (background: training photos)\n\n"
            + breakdown_table(self.copy_detection, metric="micro_ap_normalised"),
            "### Instances (4 views of each held-out photo)\n\n"
            "| method | mAP | N-S |\n|---|---|---|\n"
            + "\n".join(
                f"| {m.value} | {v.map:.3f} | {v.ns_score:.3f} |" for m, v in self.instances.items()
            ),
        ]
        if self.classification:
            parts.append(
                "### Classification, held-out labelled photos\n\n| method | top-1 |\n|---|---|\n"
                + "\n".join(f"| {m.value} | {v:.3f} |" for m, v in self.classification.items())
            )
        return "\n\n".join(parts)
