"""The built-in benchmark of real photos, scored for a model and its baselines in one run.

Parts (built by `multigrain build-benchmark`): copy detection (held-out photos and their
AugLy copies, DISC21 layout plus `queries.csv` naming each query's transform family and
strength), instances (4 views of each held-out photo, UKBench layout) and classification
(held-out labelled photos). Methods: the model, the same architecture untrained, and a
perceptual hash (pHash) for the image-only parts.
"""

from __future__ import annotations

import csv
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from multigrain.atomic import atomic_write_text
from multigrain.benchmarks_std import read_disc21, read_ukbench
from multigrain.collection import list_images
from multigrain.copy_breakdown import BreakdownRow, breakdown_table, copy_detection_breakdown
from multigrain.embed import embed_in_memory
from multigrain.errors import MultiGrainError
from multigrain.metrics import mean_average_precision, top_k_accuracy, ukbench_score
from multigrain.models import MultiGrain
from multigrain.report import GridRow, plot_breakdown, write_html
from multigrain.score_norm import background_similarity


@dataclass
class BuiltinResult:
    model: str
    resolution: int
    exponent: float
    copy_detection: list[BreakdownRow]
    instances: dict[str, dict[str, float]]  # method -> {"map", "ns_score"}
    classification: dict[str, float] = field(default_factory=dict)  # method -> top-1

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
                f"| {m} | {v['map']:.3f} | {v['ns_score']:.3f} |" for m, v in self.instances.items()
            ),
        ]
        if self.classification:
            parts.append(
                "### Classification, held-out labelled photos\n\n| method | top-1 |\n|---|---|\n"
                + "\n".join(f"| {m} | {v:.3f} |" for m, v in self.classification.items())
            )
        return "\n\n".join(parts)


def _read_query_table(path: Path) -> tuple[list[str], list[str]]:
    if not path.exists():
        raise MultiGrainError(f"{path} is missing: rebuild with `multigrain build-benchmark`")
    with open(path, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    return [row["family"] for row in rows], [row["strength"] for row in rows]


def _network_descriptors(
    model: MultiGrain, paths: list[Path], resolution: int, device: torch.device
) -> torch.Tensor:
    embeddings, kept, failures = embed_in_memory(
        model, paths, resolution=resolution, device=device, normalise=True, progress=True
    )
    if failures:
        raise MultiGrainError(
            f"unreadable benchmark image {failures[0].path}: {failures[0].reason}"
        )
    return embeddings


def evaluate_builtin(
    model: MultiGrain,
    root: Path,
    *,
    model_name: str,
    resolution: int,
    device: torch.device,
    classes: list[str] | None = None,
    report: Path | None = None,
    seed: int = 0,
) -> BuiltinResult:
    """Score `model`, the untrained network and pHash on every part of the benchmark."""
    from multigrain.builtin.phash import phash_descriptors

    copies = read_disc21(root / "copydetection")
    families, strengths = _read_query_table(root / "copydetection" / "queries.csv")
    if len(families) != len(copies.queries):
        raise MultiGrainError(f"{root}/copydetection/queries.csv does not match queries/")
    reference_of = dict(copies.ground_truth)
    truth = [reference_of[q] for q in range(len(copies.queries))]
    instances = read_ukbench(root / "instances")
    torch.manual_seed(seed)
    untrained = MultiGrain(
        trunk=model.trunk_name,
        num_classes=model.num_classes,
        pooling_exponent=float(model.pool.p),
        small_input=model.small_input,
    )
    untrained.to(device).eval()

    def describe(method: str, paths: list[Path]) -> torch.Tensor:
        if method == "phash":
            return F.normalize(torch.from_numpy(phash_descriptors(paths)).float(), dim=1)
        network = model if method == "trained" else untrained
        return _network_descriptors(network, paths, resolution, device)

    background_paths = list_images(root / "train")
    if (root / "train_unlabelled").is_dir():
        background_paths += list_images(root / "train_unlabelled")
    rows: list[BreakdownRow] = []
    instance_scores: dict[str, dict[str, float]] = {}
    grid: list[GridRow] = []
    for method in ("phash", "untrained", "trained"):
        queries = describe(method, copies.queries)
        references = describe(method, copies.references)
        offsets = background_similarity(queries.numpy(), describe(method, background_paths).numpy())
        rows += copy_detection_breakdown(
            queries, references, truth, families=families, strengths=strengths, method=method,
            score_offsets=offsets,
        )  # fmt: skip
        if method == "trained":
            grid = _grid(queries, references, copies.queries, copies.references, truth,
                         families, strengths)  # fmt: skip
        views = describe(method, instances.database)
        rankings = torch.argsort(views @ views.T, dim=1, descending=True).numpy()
        groups = np.arange(len(instances.database)) // 4
        own = [np.array([q]) for q in range(len(instances.database))]
        positives = [np.setdiff1d(np.flatnonzero(groups == groups[q]), [q]) for q in own]
        instance_scores[method] = {
            "map": mean_average_precision(rankings, positives, own),
            "ns_score": ukbench_score(rankings, groups, np.arange(len(groups))),
        }
    result = BuiltinResult(
        model_name, resolution, float(model.pool.p), rows, instance_scores,
        _classification(model, untrained, root, classes, resolution, device),
    )  # fmt: skip
    if report is not None:
        write_report(result, report, grid)
    return result


def _classification(
    model: MultiGrain, untrained: MultiGrain, root: Path, classes: list[str] | None,
    resolution: int, device: torch.device,
) -> dict[str, float]:  # fmt: skip
    from multigrain.data.datasets import ImageFolderImages

    folder = root / "heldout_classes"
    if not folder.is_dir() or not classes:
        return {}
    images = ImageFolderImages(folder)
    if list(images.classes) != list(classes):
        return {}  # the model was not trained on the built-in classes
    labels = torch.as_tensor(images.labels)
    scores = {}
    for name, network in (("untrained", untrained), ("trained", model)):
        embeddings, _, _ = embed_in_memory(
            network, images.paths, resolution=resolution, device=device, normalise=False
        )
        with torch.no_grad():
            logits = network.classifier(embeddings.to(device)).cpu()
        scores[name] = top_k_accuracy(logits, labels, 1)
    return scores


def _grid(
    queries: torch.Tensor, references: torch.Tensor, query_paths: list[Path],
    reference_paths: list[Path], truth: list[int], families: list[str], strengths: list[str],
    *, count: int = 12, top: int = 5,
) -> list[GridRow]:  # fmt: skip
    """The strongest-distortion queries first, one per family, with their best results."""
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


def write_report(result: BuiltinResult, folder: Path, grid: list[GridRow]) -> Path:
    """folder/report.json, report.md, copy_map.png and report.html."""
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(folder / "report.json", json.dumps(asdict(result), indent=2))
    markdown = result.to_markdown()
    atomic_write_text(folder / "report.md", "# Built-in benchmark\n\n" + markdown + "\n")
    plot = plot_breakdown(result.copy_detection, folder / "copy_map.png")
    return write_html(
        folder / "report.html", title="multigrain: built-in benchmark",
        markdown_tables=[markdown], plot=plot, grid=grid,
    )  # fmt: skip
