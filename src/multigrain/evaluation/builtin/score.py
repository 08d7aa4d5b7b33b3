"""The built-in benchmark of real photos, scored for a model and its baselines in one run.

Parts (built by `multigrain build-benchmark`): copy detection (held-out photos and their
AugLy copies, DISC21 layout plus `queries.csv` naming each query's transform family and
strength), instances (4 views of each held-out photo, UKBench layout) and classification
(held-out labelled photos). Methods: the model, the same architecture untrained, and a
perceptual hash (pHash) for the image-only parts; with a whitening, the model whitened and,
as its control, the untrained network whitened the same way (fitted on its own descriptors of
the same training photos), so that the gain of training is not confused with the gain of
whitening.
"""

from __future__ import annotations

import csv
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from multigrain.data.listing import list_images
from multigrain.data.standard import read_disc21, read_ukbench
from multigrain.evaluation.report import GridRow, plot_breakdown, write_html
from multigrain.inference.calibrate import CalibrationResult, plot_calibration
from multigrain.inference.embed import embed_in_memory
from multigrain.metrics import mean_average_precision, top_k_accuracy, ukbench_score
from multigrain.metrics.copy_families import BreakdownRow, breakdown_table, copy_detection_breakdown
from multigrain.models import MultiGrain
from multigrain.runtime.atomic import atomic_write_text
from multigrain.runtime.errors import MultiGrainError
from multigrain.runtime.precision import InferencePrecision
from multigrain.search.score_norm import background_similarity
from multigrain.search.whitening import Whitening

#: Method name of the model's descriptors after whitening.
WHITENED = "trained+whitening"
#: The control: the untrained network's descriptors after a whitening fitted the same way.
UNTRAINED_WHITENED = "untrained+whitening"


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
    model: MultiGrain, paths: list[Path], resolution: int, device: torch.device,
    precision: InferencePrecision | str = InferencePrecision.FP32,
) -> torch.Tensor:  # fmt: skip
    embeddings, kept, failures = embed_in_memory(
        model, paths, resolution=resolution, device=device, normalise=True, progress=True,
        precision=precision,
    )  # fmt: skip
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
    calibration: CalibrationResult | None = None,
    whitening: Whitening | None = None,
    seed: int = 0,
    precision: InferencePrecision | str = InferencePrecision.FP32,
) -> BuiltinResult:
    """Score `model`, the untrained network and pHash on every part of the benchmark.

    With ``report`` the report is written there; ``calibration`` (the model's p*/s
    table, if calibrated) adds its plot to it. ``whitening`` (fitted on the model's
    L2-normalised descriptors at this s and p) adds the method ``trained+whitening`` and its
    control ``untrained+whitening`` (see :func:`control_whitening`).
    Both networks run at ``precision`` (multigrain.runtime.precision; int8 calibrates on each
    image set it embeds).
    """
    result, grid = score_builtin(
        model, root, model_name=model_name, resolution=resolution, device=device,
        classes=classes, whitening=whitening, seed=seed, precision=precision,
    )  # fmt: skip
    if report is not None:
        write_report(result, report, grid, calibration=calibration)
    return result


def score_builtin(
    model: MultiGrain,
    root: Path,
    *,
    model_name: str,
    resolution: int,
    device: torch.device,
    classes: list[str] | None = None,
    whitening: Whitening | None = None,
    seed: int = 0,
    precision: InferencePrecision | str = InferencePrecision.FP32,
) -> tuple[BuiltinResult, list[GridRow]]:
    """The scores of :func:`evaluate_builtin` and the report's query grid, nothing written."""
    from multigrain.evaluation.builtin.phash import phash_descriptors

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

    computed: dict[tuple[str, str], torch.Tensor] = {}

    def describe(method: str, part: str, paths: list[Path]) -> torch.Tensor:
        if (method, part) not in computed:
            if method == "phash":
                descriptors = torch.from_numpy(phash_descriptors(paths)).float()
                computed[method, part] = F.normalize(descriptors, dim=1)
            elif method == WHITENED:
                assert whitening is not None
                computed[method, part] = whitening.apply(describe("trained", part, paths))
            elif method == UNTRAINED_WHITENED:
                assert control is not None
                computed[method, part] = control.apply(describe("untrained", part, paths))
            else:
                network = model if method == "trained" else untrained
                computed[method, part] = _network_descriptors(
                    network, paths, resolution, device, precision
                )
        return computed[method, part]

    background_paths = list_images(root / "train")
    if (root / "train_unlabelled").is_dir():
        background_paths += list_images(root / "train_unlabelled")
    rows: list[BreakdownRow] = []
    instance_scores: dict[str, dict[str, float]] = {}
    grid: list[GridRow] = []
    methods = ["phash", "untrained", "trained"]
    control = None
    if whitening is not None:
        control = control_whitening(
            whitening, describe("untrained", "background", background_paths)
        )
        methods += [UNTRAINED_WHITENED, WHITENED]
    for method in methods:
        queries = describe(method, "queries", copies.queries)
        references = describe(method, "references", copies.references)
        background = describe(method, "background", background_paths)
        offsets = background_similarity(queries.numpy(), background.numpy())
        rows += copy_detection_breakdown(
            queries, references, truth, families=families, strengths=strengths, method=method,
            score_offsets=offsets,
        )  # fmt: skip
        if method == "trained":
            grid = _grid(queries, references, copies.queries, copies.references, truth,
                         families, strengths)  # fmt: skip
        views = describe(method, "instances", instances.database)
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
        _classification(model, untrained, root, classes, resolution, device, precision),
    )  # fmt: skip
    return result, grid


def control_whitening(whitening: Whitening, descriptors: torch.Tensor) -> Whitening:
    """A whitening fitted on other ``descriptors`` as ``whitening`` was: same d, power, shrinkage.

    The built-in evaluation fits it on the untrained network's descriptors of the training
    photos (the set the demo fits the model's whitening on), as a control for the model's.
    """
    from multigrain.search.whitening import fit_whitening

    settings = whitening.fitted_on
    dim = min(whitening.output_dim, len(descriptors) - 1, descriptors.shape[1])
    return fit_whitening(
        descriptors,
        dim=dim,
        power=float(settings.get("power", 0.5)),
        shrinkage=float(settings.get("shrinkage", 0.0)),
        fitted_on={"input": "control: other descriptors, fitted as the model's whitening"},
    )


def _classification(
    model: MultiGrain, untrained: MultiGrain, root: Path, classes: list[str] | None,
    resolution: int, device: torch.device,
    precision: InferencePrecision | str = InferencePrecision.FP32,
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
            network, images.paths, resolution=resolution, device=device, normalise=False,
            precision=precision,
        )  # fmt: skip
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


def write_report(
    result: BuiltinResult, folder: Path, grid: list[GridRow],
    *, calibration: CalibrationResult | None = None, title: str = "multigrain: built-in benchmark",
    summary: str = "", extra: dict[str, object] | None = None,
) -> Path:  # fmt: skip
    """folder/report.json, report.md, copy_map.png (+ calibration.png) and report.html.

    ``summary`` (markdown) goes above the detailed tables; ``extra`` is stored in the JSON
    next to the result (under ``"summary"``).
    """
    folder.mkdir(parents=True, exist_ok=True)
    document: dict[str, object] = {"result": asdict(result)}
    if extra is not None:
        document["summary"] = extra
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
