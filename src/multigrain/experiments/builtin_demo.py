"""The main demo: the whole method on the built-in photos, with a report.

Steps (each resumes or reuses what an interrupted run left): build the built-in
benchmark from the installed Debian packages; train a ResNet-18 on its training part
(joint loss, repeated augmentations with copy-detection edits, the unlabelled photos as
extra instances); calibrate p* on the training photos for a larger test resolution;
fit PCA whitening on the training photos; index the held-out photos in FAISS and search
them with the copy queries; score the model, the untrained network and pHash on copy
detection, instances and classification; write ``report.html``/``report.md``/``report.json``.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from multigrain.data.datasets import ImageFolderImages
from multigrain.data.listing import list_images
from multigrain.data.sources import DatasetKind
from multigrain.evaluation.builtin import build_builtin_benchmark
from multigrain.evaluation.builtin.score import BuiltinResult, score_builtin, write_report
from multigrain.evaluation.heldout.compare import (
    compare_with_shipped,
    comparison_dicts,
    comparison_markdown,
)
from multigrain.evaluation.heldout.scoring import CopyScores
from multigrain.inference.calibrate import CalibrationResult, grid_search, plot_calibration
from multigrain.inference.embed import embed_in_memory
from multigrain.models import MultiGrain
from multigrain.models.checkpoint import model_from_checkpoint, model_identity
from multigrain.search.index import ImageIndex
from multigrain.search.index_store import load_index, save_index
from multigrain.search.whitening import Whitening, fit_whitening
from multigrain.training.config import Precision, Schedule, TrainConfig
from multigrain.training.loop import train

logger = logging.getLogger(__name__)

DEFAULT_DATA = Path("data/builtin")


@dataclass(frozen=True)
class DemoSettings:
    """What the demo trains and how it tests; the defaults fit ~15 minutes on 2 cores."""

    trunk: str = "resnet18"
    steps: int = 400
    batch_size: int = 48
    train_resolution: int = 128
    test_resolution: int = 224
    lr: float = 0.02
    warmup_epochs: float = 3.0  # without it the first steps blow up (loss 14 at step 10)
    augmentation: str = "copy"
    calibration_resolutions: tuple[int, ...] = (128, 160, 224, 288)
    calibration_exponents: tuple[float, ...] = (1.0, 2.0, 3.0, 4.0, 5.0, 6.0)
    whitening_dim: int = 128
    whitening_shrinkage: float = 0.1
    seed: int = 0
    workers: int = 1
    precision: str = "auto"  # inference: bf16 where the CPU/GPU runs it natively


@dataclass
class DemoSummary:
    output_dir: str
    data_root: str
    steps: int
    seconds: dict[str, float] = field(default_factory=dict)
    exponent: float = 3.0
    index_recall_at_1: float = 0.0
    headline: dict[str, dict[str, float]] = field(default_factory=dict)
    # copy detection on photo packages neither model trained on (corpus.compare)
    heldout_packages: list[dict[str, object]] = field(default_factory=list)

    def to_markdown(self) -> str:
        methods = list(self.headline)
        rows = [
            "| figure | " + " | ".join(methods) + " |",
            "|---|" + "---|" * len(methods),
        ]
        figures = list(dict.fromkeys(f for values in self.headline.values() for f in values))
        for figure in figures:
            cells = [
                f"{self.headline[m][figure]:.3f}" if figure in self.headline[m] else "—"
                for m in methods
            ]
            rows.append(f"| {figure} | " + " | ".join(cells) + " |")
        timing = ", ".join(f"{k} {v:.0f} s" for k, v in self.seconds.items())
        heldout = ""
        if self.heldout_packages:
            heldout = (
                "\n\nCopy detection on photo packages that neither model trained on "
                "(the shipped model's test packages):\n\n"
                + comparison_markdown([_scores(row) for row in self.heldout_packages])
            )
        return (
            f"{self.steps} training steps; p* = {self.exponent:g} at the test resolution; "
            f"FAISS index recall@1 for the copy queries: {self.index_recall_at_1:.3f}\n\n"
            + "\n".join(rows)
            + heldout
            + f"\n\ntime: {timing}"
        )


def _scores(row: dict[str, object]) -> CopyScores:
    values = {k: v for k, v in row.items() if k != "family_mean"}
    return CopyScores(**values)  # type: ignore[arg-type]


def headline_figures(result: BuiltinResult) -> dict[str, dict[str, float]]:
    """The figures a newcomer looks at first, per method."""
    headline: dict[str, dict[str, float]] = {}
    for row in result.copy_detection:
        if row.family != "all":
            continue
        values = headline.setdefault(row.method, {})
        values[f"copy mAP ({row.strength})"] = row.map
        if row.strength == "all":
            values["copy µAP"] = row.micro_ap
            values["copy µAP, normalised"] = row.micro_ap_normalised
    for method, scores in result.instances.items():
        headline.setdefault(method, {})["instance mAP"] = scores["map"]
    for method, top1 in result.classification.items():
        headline.setdefault(method, {})["held-out top-1"] = top1
    return headline


def run_builtin_demo(
    *,
    output_dir: Path,
    data_root: Path = DEFAULT_DATA,
    settings: DemoSettings | None = None,
    device: str = "cpu",
) -> DemoSummary:
    settings = settings or DemoSettings()
    output_dir.mkdir(parents=True, exist_ok=True)
    seconds: dict[str, float] = {}
    target = torch.device(device)

    start = time.perf_counter()
    if not (data_root / "manifest.json").exists():
        print(f"building the built-in benchmark in {data_root} ...", flush=True)
        build_builtin_benchmark(data_root, seed=0, overwrite=True)
    seconds["data"] = time.perf_counter() - start

    start = time.perf_counter()
    print("training ...", flush=True)
    result = train(_train_config(settings, data_root, output_dir / "train"), resume=True)
    seconds["train"] = time.perf_counter() - start
    model, classes = model_from_checkpoint(result.checkpoint)
    model = model.to(target).eval()

    start = time.perf_counter()
    print("calibrating p* ...", flush=True)
    calibration = _calibrate(model, data_root, settings, target)
    calibration.save(output_dir / "calibration.json")
    plot_calibration(calibration, output_dir / "calibration.png")
    exponent = calibration.best[settings.test_resolution]
    model.pool.set_p(exponent)
    seconds["calibrate"] = time.perf_counter() - start

    start = time.perf_counter()
    whitening = _fit_whitening(model, data_root, settings, target)
    whitening.save(output_dir / "whitening.pt")
    seconds["whiten"] = time.perf_counter() - start

    start = time.perf_counter()
    recall = _index_and_search(model, data_root, settings, target, output_dir / "index")
    seconds["index"] = time.perf_counter() - start

    start = time.perf_counter()
    print("evaluating the model, the untrained network and pHash ...", flush=True)
    evaluation, grid = score_builtin(
        model,
        data_root,
        model_name=model_identity(result.checkpoint),
        resolution=settings.test_resolution,
        device=target,
        classes=classes,
        whitening=whitening,
        seed=settings.seed,
        precision=settings.precision,
    )
    seconds["evaluate"] = time.perf_counter() - start

    start = time.perf_counter()
    print("comparing with the shipped model on the held-out photo packages ...", flush=True)
    heldout = compare_with_shipped(
        model, name="this demo's model (p*, whitening)", resolution=settings.test_resolution,
        whitening=whitening, device=target, heldout=data_root.parent / "heldout",
    )  # fmt: skip
    seconds["heldout"] = time.perf_counter() - start

    summary = DemoSummary(
        output_dir=str(output_dir),
        data_root=str(data_root),
        steps=result.steps,
        seconds=seconds,
        exponent=exponent,
        index_recall_at_1=recall,
        headline=headline_figures(evaluation),
        heldout_packages=comparison_dicts(heldout),
    )
    write_report(
        evaluation,
        output_dir,
        grid,
        calibration=calibration,
        title="multigrain demo: built-in photos",
        summary=summary.to_markdown(),
        extra=asdict(summary),
    )
    return summary


def _train_config(settings: DemoSettings, data_root: Path, output_dir: Path) -> TrainConfig:
    unlabelled = data_root / "train_unlabelled"
    return TrainConfig(
        dataset=DatasetKind.FOLDER,
        data_root=str(data_root / "train"),
        unlabelled_root=str(unlabelled) if unlabelled.is_dir() else None,
        augmentation=settings.augmentation,
        trunk=settings.trunk,
        input_size=settings.train_resolution,
        batch_size=settings.batch_size,
        num_repeats=3,
        classification_weight=0.5,
        max_steps=settings.steps,
        lr=settings.lr,
        warmup_epochs=settings.warmup_epochs,
        schedule=Schedule.COSINE,
        weight_decay=5e-4,
        precision=Precision.AUTO,
        num_workers=settings.workers,
        seed=settings.seed,
        output_dir=str(output_dir),
        checkpoint_every_steps=50,
    )


def _calibrate(
    model: MultiGrain, data_root: Path, settings: DemoSettings, device: torch.device
) -> CalibrationResult:
    """p* per resolution, by top-1 on the labelled training photos (never the held-out ones)."""
    resolutions = sorted({*settings.calibration_resolutions, settings.test_resolution})
    return grid_search(
        model,
        ImageFolderImages(data_root / "train"),
        resolutions=resolutions,
        exponents=settings.calibration_exponents,
        device=device,
    )


def _fit_whitening(
    model: MultiGrain, data_root: Path, settings: DemoSettings, device: torch.device
) -> Whitening:
    """PCA whitening of the L2-normalised descriptors of all training photos."""
    paths = list_images(data_root / "train")
    if (data_root / "train_unlabelled").is_dir():
        paths += list_images(data_root / "train_unlabelled")
    descriptors, _, _ = embed_in_memory(
        model,
        paths,
        resolution=settings.test_resolution,
        device=device,
        normalise=True,
        precision=settings.precision,
    )
    dim = min(settings.whitening_dim, len(descriptors) - 1, descriptors.shape[1])
    return fit_whitening(
        descriptors,
        dim=dim,
        shrinkage=settings.whitening_shrinkage,
        fitted_on={
            "images": str(data_root / "train"),
            "resolution": settings.test_resolution,
            "exponent": float(model.pool.p),
            "input": "normalised embedding",
        },
    )


def _index_and_search(
    model: MultiGrain,
    data_root: Path,
    settings: DemoSettings,
    device: torch.device,
    folder: Path,
) -> float:
    """Index the held-out reference photos (FAISS, exact), search the copy queries: recall@1."""
    from multigrain.data.standard import read_disc21

    copies = read_disc21(data_root / "copydetection")

    def embed(paths: list[Path]) -> tuple[torch.Tensor, list[str]]:
        descriptors, kept, _ = embed_in_memory(
            model, paths, resolution=settings.test_resolution, device=device,
            precision=settings.precision,
        )  # fmt: skip
        return descriptors, kept

    references, kept = embed(copies.references)
    index = ImageIndex.build(
        references.numpy(),
        kept,
        metadata={"resolution": settings.test_resolution, "exponent": float(model.pool.p)},
    )
    save_index(index, folder)
    queries, _ = embed(copies.queries)
    found = load_index(folder).search(queries.numpy(), 1)
    truth = dict(copies.ground_truth)
    hits = [
        str(copies.references[truth[q]]) == found.paths[q][0] for q in range(len(copies.queries))
    ]
    return float(np.mean(hits))


__all__ = ["DemoSettings", "DemoSummary", "headline_figures", "run_builtin_demo"]
