"""Standard benchmarks with their exact protocols (SPEC §5), on any MultiGrain model.

Retrieval: database and queries embedded at longest side s and exponent p (queries cropped
to their box for revisitop, images turned upright for Holidays when the rotation list is
used), optionally whitened, ranked by cosine similarity, scored by the benchmark's
protocol: mAP with junk removed and the trapezoid rule (Holidays, Copydays, revisitop, the
query itself being junk where it is also a database image), mP@k for revisitop, the N-S
score for UKBench. Copy detection: µAP and recall at 90 % precision over one global list
of (query, reference, score) pairs. Classification: top-1/top-5 at (s, p), no crop.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from multigrain.data.standard.types import (
    Box,
    ClassificationBenchmark,
    CopyDetectionBenchmark,
    RetrievalBenchmark,
)
from multigrain.inference.embed import embed_in_memory
from multigrain.metrics import (
    mean_average_precision,
    micro_average_precision,
    recall_at_precision,
    revisitop_precision_at_k,
    top_k_accuracies,
    ukbench_score,
)
from multigrain.models import MultiGrain
from multigrain.runtime.errors import MultiGrainError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class EvaluationSettings:
    model: str  # identity of the weights
    resolution: int
    exponent: float
    whitened: bool
    device: str = "cpu"
    batch_size: int = 32
    num_workers: int = 0
    precision: str = "fp32"  # the inference precision run (resolved: never "auto")


@dataclass
class EvaluationResult:
    benchmark: str
    protocol: str
    metrics: dict[str, float]
    settings: EvaluationSettings
    num_queries: int
    num_database: int
    failures: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    def to_markdown(self) -> str:
        head = "| benchmark | protocol | " + " | ".join(self.metrics) + " |"
        rule = "|---|---|" + "---|" * len(self.metrics)
        values = " | ".join(f"{value:.4f}" for value in self.metrics.values())
        s = self.settings
        return (
            f"{head}\n{rule}\n| {self.benchmark} | {self.protocol} | {values} |\n\n"
            f"model {s.model}, s = {s.resolution}, p = {s.exponent:g}, "
            f"whitening {'on' if s.whitened else 'off'}, {s.precision}; {self._sizes()}"
        )

    def _sizes(self) -> str:
        if self.protocol == "classification":
            return f"{self.num_queries} images"
        return f"{self.num_queries} queries, {self.num_database} database images"


Describe = Callable[[torch.Tensor], torch.Tensor]  # raw (N, D) -> descriptors (N, d)


class _Adjust:
    """Picklable per-image change after decoding: upright rotation, then crop box."""

    def __init__(self, rotations: list[int], boxes: list[Box | None]) -> None:
        self.rotations = rotations
        self.boxes = boxes

    def __call__(self, index: int, image: Image.Image) -> Image.Image:
        if self.rotations[index]:
            image = image.rotate(-self.rotations[index], expand=True)  # PIL turns anticlockwise
        box = self.boxes[index]
        if box is not None:
            x1, y1, x2, y2 = box
            image = image.crop((round(x1), round(y1), round(x2), round(y2)))
        return image


def _describe(
    model: MultiGrain,
    paths: list[Path],
    settings: EvaluationSettings,
    describe: Describe,
    failures: list[str],
    adjust: _Adjust | None = None,
) -> torch.Tensor:
    embeddings, kept, failed = embed_in_memory(
        model, paths, resolution=settings.resolution, device=torch.device(settings.device),
        batch_size=settings.batch_size, num_workers=settings.num_workers, normalise=False,
        adjust=adjust, progress=True, precision=settings.precision,
    )  # fmt: skip
    failures.extend(f"{f.path}: {f.reason}" for f in failed)
    if len(kept) != len(paths):
        # an unreadable image would shift every index of the ground truth: refuse
        raise MultiGrainError(
            f"{len(paths) - len(kept)} benchmark images could not be read "
            f"(first: {failed[0].path}: {failed[0].reason}): the benchmark copy is damaged"
        )
    return describe(embeddings)


def evaluate_retrieval(
    model: MultiGrain, bench: RetrievalBenchmark, settings: EvaluationSettings, describe: Describe
) -> EvaluationResult:
    """Rank the database for every query by cosine similarity and score per the protocol."""
    start, failures = time.perf_counter(), []  # type: ignore[var-annotated]
    rotation_of = bench.rotations or {}
    database = _describe(
        model, bench.database, settings, describe, failures,
        _Adjust([rotation_of.get(p.name, 0) for p in bench.database], [None] * len(bench.database))
        if rotation_of else None,
    )  # fmt: skip
    queries = _describe(
        model, bench.queries, settings, describe, failures,
        _Adjust([rotation_of.get(p.name, 0) for p in bench.queries], bench.query_boxes),
    )  # fmt: skip
    rankings = torch.argsort(queries @ database.T, dim=1, descending=True).numpy()
    metrics: dict[str, float] = {}
    if bench.protocol == "ukbench":
        groups = np.arange(len(bench.database)) // 4
        query_index = np.array([q if q is not None else -1 for q in bench.query_in_database])
        metrics["ns_score"] = ukbench_score(rankings, groups, query_index)
    else:
        metrics["map"] = mean_average_precision(rankings, bench.positives, bench.junk)
        if bench.protocol.startswith("revisitop"):
            precisions = revisitop_precision_at_k(rankings, bench.positives, bench.junk)
            for k, value in precisions.items():
                metrics[f"mp@{k}"] = value
    return EvaluationResult(
        bench.name, bench.protocol, metrics, settings, len(bench.queries), len(bench.database),
        failures, time.perf_counter() - start,
    )  # fmt: skip


def evaluate_copy_detection(
    model: MultiGrain,
    bench: CopyDetectionBenchmark,
    settings: EvaluationSettings,
    describe: Describe,
    *,
    neighbours: int = 10,
) -> EvaluationResult:
    """µAP and recall at 90 % precision over each query's `neighbours` best references."""
    start, failures = time.perf_counter(), []  # type: ignore[var-annotated]
    references = bench.references + bench.distractors
    reference_descriptors = _describe(model, references, settings, describe, failures)
    query_descriptors = _describe(model, bench.queries, settings, describe, failures)
    similarity = query_descriptors @ reference_descriptors.T
    k = min(neighbours, similarity.shape[1])
    scores, indices = similarity.topk(k, dim=1)
    truth = set(bench.ground_truth)
    pairs = [(q, int(r)) for q in range(len(bench.queries)) for r in indices[q]]
    is_positive = np.array([pair in truth for pair in pairs])
    flat_scores = scores.flatten().numpy()
    recall, threshold = recall_at_precision(flat_scores, is_positive, len(truth), 0.9)
    metrics = {
        "micro_ap": micro_average_precision(flat_scores, is_positive, len(truth)),
        "recall@p90": recall,
        "threshold@p90": threshold,
    }
    return EvaluationResult(
        bench.name, "copy-detection", metrics, settings, len(bench.queries), len(references),
        failures, time.perf_counter() - start,
    )  # fmt: skip


def evaluate_classification(
    model: MultiGrain, bench: ClassificationBenchmark, settings: EvaluationSettings
) -> EvaluationResult:
    """Top-1 and top-5 of the model's classifier at longest side s and exponent p."""
    start, failures = time.perf_counter(), []  # type: ignore[var-annotated]
    if model.num_classes != len(bench.classes):
        raise MultiGrainError(
            f"the model has {model.num_classes} classes but {bench.name} has "
            f"{len(bench.classes)}: evaluate a model trained on these classes"
        )
    embeddings = _describe(model, bench.images, settings, lambda e: e, failures)
    with torch.no_grad():
        logits = model.classifier(embeddings.to(next(model.parameters()).device)).float().cpu()
    accuracies = top_k_accuracies(logits, torch.as_tensor(bench.labels), ks=(1, 5))
    metrics = {f"top{k}": value for k, value in accuracies.items()}
    return EvaluationResult(
        bench.name, "classification", metrics, settings, len(bench.images), 0, failures,
        time.perf_counter() - start,
    )  # fmt: skip
