"""The built-in benchmark of real photos, scored for a model and its baselines in one run.

Parts (built by `multigrain build-benchmark`): copy detection (held-out photos and their
AugLy copies, DISC21 layout plus `queries.csv` naming each query's transform family and
strength), instances (4 views of each held-out photo, UKBench layout) and classification
(held-out labelled photos). Methods (:class:`Method`): the model, the same architecture
untrained, and a perceptual hash (pHash) for the image-only parts; with a whitening, the
model whitened and, as its control, the untrained network whitened the same way (fitted on
its own descriptors of the same training photos), so that the gain of training is not
confused with the gain of whitening. Both networks embed through THE forward path
(inference.embed). The result: result.py; the report folder: report.py.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from multigrain.data.datasets import ImageFolderImages
from multigrain.data.listing import list_images
from multigrain.data.standard import read_disc21, read_ukbench
from multigrain.evaluation.builtin.phash import phash_descriptors
from multigrain.evaluation.builtin.report import query_grid, write_report
from multigrain.evaluation.builtin.result import BuiltinResult, InstanceScores, Method
from multigrain.evaluation.report import GridRow
from multigrain.inference.calibrate import CalibrationResult
from multigrain.inference.embed import embed_in_memory
from multigrain.metrics import mean_average_precision, top_k_accuracy, ukbench_score
from multigrain.metrics.copy_families import BreakdownRow, copy_detection_breakdown
from multigrain.models import MultiGrain
from multigrain.runtime.errors import MultiGrainError
from multigrain.runtime.precision import InferencePrecision
from multigrain.search.score_norm import background_similarity
from multigrain.search.whitening import Whitening, fit_whitening

#: Method name of the model's descriptors after whitening.
WHITENED = Method.WHITENED
#: The control: the untrained network's descriptors after a whitening fitted the same way.
UNTRAINED_WHITENED = Method.UNTRAINED_WHITENED


def _read_query_table(path: Path) -> tuple[list[str], list[str]]:
    if not path.exists():
        raise MultiGrainError(f"{path} is missing: rebuild with `multigrain build-benchmark`")
    with open(path, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    return [row["family"] for row in rows], [row["strength"] for row in rows]


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
    Both networks run at ``precision`` (multigrain.runtime.precision).
    """
    result, grid = score_builtin(
        model, root, model_name=model_name, resolution=resolution, device=device,
        classes=classes, whitening=whitening, seed=seed, precision=precision,
    )  # fmt: skip
    if report is not None:
        write_report(result, report, grid, calibration=calibration)
    return result


class _Describer:
    """Unit descriptors (N, d) of each method for each part of the benchmark, computed once."""

    def __init__(
        self, networks: dict[Method, MultiGrain], resolution: int, device: torch.device,
        precision: InferencePrecision | str,
    ) -> None:  # fmt: skip
        self.networks, self.resolution, self.device = networks, resolution, device
        self.precision = precision
        self.whitenings: dict[Method, Whitening] = {}
        self.computed: dict[tuple[Method, str], torch.Tensor] = {}

    def __call__(self, method: Method, part: str, paths: list[Path]) -> torch.Tensor:
        if (method, part) not in self.computed:
            self.computed[method, part] = self._describe(method, part, paths)
        return self.computed[method, part]

    def raw(self, method: Method, part: str, paths: list[Path]) -> torch.Tensor:
        """(N, D) raw GeM embeddings of a network method, computed once (a whitening
        takes them, as ``embed`` hands them over; the plain descriptor normalises them)."""
        if (method, f"{part}:raw") not in self.computed:
            embeddings, _, failures = embed_in_memory(
                self.networks[method], paths, resolution=self.resolution, device=self.device,
                normalise=False, progress=True, precision=self.precision,
            )  # fmt: skip
            if failures:
                first = failures[0]
                raise MultiGrainError(f"unreadable benchmark image {first.path}: {first.reason}")
            self.computed[method, f"{part}:raw"] = embeddings
        return self.computed[method, f"{part}:raw"]

    def _describe(self, method: Method, part: str, paths: list[Path]) -> torch.Tensor:
        if method is Method.PHASH:
            return F.normalize(torch.from_numpy(phash_descriptors(paths)).float(), dim=1)
        if method in self.whitenings:
            return self.whitenings[method].apply(self.raw(method.network, part, paths))
        return F.normalize(self.raw(method, part, paths), dim=1)


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
    networks = {Method.TRAINED: model, Method.UNTRAINED: untrained}
    describe = _Describer(networks, resolution, device, precision)

    background_paths = list_images(root / "train")
    if (root / "train_unlabelled").is_dir():
        background_paths += list_images(root / "train_unlabelled")
    rows: list[BreakdownRow] = []
    instance_scores: dict[Method, InstanceScores] = {}
    grid: list[GridRow] = []
    methods = [Method.PHASH, Method.UNTRAINED, Method.TRAINED]
    if whitening is not None:
        control = control_whitening(
            whitening, describe.raw(Method.UNTRAINED, "background", background_paths)
        )
        describe.whitenings = {Method.UNTRAINED_WHITENED: control, Method.WHITENED: whitening}
        methods += [Method.UNTRAINED_WHITENED, Method.WHITENED]
    for method in methods:
        queries = describe(method, "queries", copies.queries)
        references = describe(method, "references", copies.references)
        background = describe(method, "background", background_paths)
        offsets = background_similarity(queries.numpy(), background.numpy())
        rows += copy_detection_breakdown(
            queries, references, truth, families=families, strengths=strengths,
            method=method.value, score_offsets=offsets,
        )  # fmt: skip
        if method is Method.TRAINED:
            grid = query_grid(queries, references, copies.queries, copies.references, truth,
                              families, strengths)  # fmt: skip
        views = describe(method, "instances", instances.database)
        instance_scores[method] = _instance_scores(views)
    result = BuiltinResult(
        model_name, resolution, float(model.pool.p), rows, instance_scores,
        _classification(networks, root, classes, resolution, device, precision),
    )  # fmt: skip
    return result, grid


def _instance_scores(views: torch.Tensor) -> InstanceScores:
    """views (4 G, d) unit descriptors, 4 consecutive views per photo -> mAP and N-S score."""
    rankings = torch.argsort(views @ views.T, dim=1, descending=True).numpy()
    groups = np.arange(len(views)) // 4
    own = [np.array([q]) for q in range(len(views))]
    positives = [np.setdiff1d(np.flatnonzero(groups == groups[q]), [q]) for q in own]
    return InstanceScores(
        map=mean_average_precision(rankings, positives, own),
        ns_score=ukbench_score(rankings, groups, np.arange(len(groups))),
    )


def control_whitening(whitening: Whitening, descriptors: torch.Tensor) -> Whitening:
    """A whitening fitted on other ``descriptors`` (raw embeddings) as ``whitening`` was:
    same input map, d, power, shrinkage and constant coordinate.

    The built-in evaluation fits it on the untrained network's descriptors of the training
    photos (the set the demo fits the model's whitening on), as a control for the model's.
    """
    settings = whitening.fitted_on
    dim = min(whitening.kept_dim, len(descriptors) - 1, descriptors.shape[1])
    return fit_whitening(
        descriptors,
        dim=dim,
        power=float(settings.get("power", 0.5)),
        shrinkage=float(settings.get("shrinkage", 0.0)),
        fitted_on={"input": "control: other descriptors, fitted as the model's whitening"},
        constant=whitening.constant > 0,
        input=whitening.input,
    )


def _classification(
    networks: dict[Method, MultiGrain], root: Path, classes: list[str] | None,
    resolution: int, device: torch.device, precision: InferencePrecision | str,
) -> dict[Method, float]:  # fmt: skip
    """Held-out top-1 of the untrained and the trained network; {} without those classes."""
    folder = root / "heldout_classes"
    if not folder.is_dir() or not classes:
        return {}
    images = ImageFolderImages(folder)
    if list(images.classes) != list(classes):
        return {}  # the model was not trained on the built-in classes
    labels = torch.as_tensor(images.labels)
    scores = {}
    for method in (Method.UNTRAINED, Method.TRAINED):
        network = networks[method]
        embeddings, _, _ = embed_in_memory(
            network, images.paths, resolution=resolution, device=device, normalise=False,
            precision=precision,
        )  # fmt: skip
        with torch.no_grad():
            logits = network.classifier(embeddings.to(device)).cpu()
        scores[method] = top_k_accuracy(logits, labels, 1)
    return scores


__all__ = [
    "UNTRAINED_WHITENED",
    "WHITENED",
    "BuiltinResult",
    "InstanceScores",
    "Method",
    "control_whitening",
    "evaluate_builtin",
    "score_builtin",
    "write_report",
]
