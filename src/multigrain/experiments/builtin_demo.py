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
from pathlib import Path

import numpy as np
import torch

from multigrain.data.datasets import ImageFolderImages
from multigrain.data.listing import list_images
from multigrain.data.standard import read_disc21
from multigrain.evaluation.builtin import build_builtin_benchmark
from multigrain.evaluation.builtin.report import write_report
from multigrain.evaluation.builtin.score import score_builtin
from multigrain.evaluation.heldout.compare import compare_with_shipped
from multigrain.evaluation.plots import plot_calibration
from multigrain.experiments.demo_settings import DemoSettings, demo_train_config
from multigrain.experiments.demo_summary import DemoSummary, StepSeconds, headline_figures
from multigrain.inference.calibrate import CalibrationResult, grid_search
from multigrain.inference.embed import embed_in_memory
from multigrain.inference.fast_trunk import fast_trunk_for, with_trunk
from multigrain.models import MultiGrain
from multigrain.models.checkpoint import model_from_checkpoint, model_identity
from multigrain.runtime.precision import resolve_inference_precision
from multigrain.search.descriptors import EmbeddingMetadata
from multigrain.search.index import ImageIndex
from multigrain.search.index_store import load_index, save_index
from multigrain.search.whitening import Whitening, WhiteningInput, fit_whitening
from multigrain.training.loop import train

logger = logging.getLogger(__name__)

DEFAULT_DATA = Path("data/builtin")


def run_builtin_demo(
    *,
    output_dir: Path,
    data_root: Path = DEFAULT_DATA,
    settings: DemoSettings | None = None,
    device: str = "cpu",
) -> DemoSummary:
    settings = settings or DemoSettings()
    output_dir.mkdir(parents=True, exist_ok=True)
    seconds = StepSeconds()
    target = torch.device(device)

    start = time.perf_counter()
    if not (data_root / "manifest.json").exists():
        print(f"building the built-in benchmark in {data_root} ...", flush=True)
        build_builtin_benchmark(data_root, seed=0, overwrite=True)
    seconds.data = time.perf_counter() - start

    start = time.perf_counter()
    print("training ...", flush=True)
    result = train(demo_train_config(settings, data_root, output_dir / "train"), resume=True)
    seconds.train = time.perf_counter() - start
    model, classes = model_from_checkpoint(result.checkpoint)
    model = model.to(target).eval()

    start = time.perf_counter()
    print("calibrating p* ...", flush=True)
    calibration = _calibrate(model, data_root, settings, target)
    calibration.save(output_dir / "calibration.json")
    plot_calibration(calibration, output_dir / "calibration.png")
    exponent = calibration.best[settings.test_resolution]
    model.pool.set_p(exponent)
    seconds.calibrate = time.perf_counter() - start

    start = time.perf_counter()
    whitening = _fit_whitening(model, data_root, settings, target)
    whitening.save(output_dir / "whitening.pt")
    seconds.whiten = time.perf_counter() - start

    start = time.perf_counter()
    model_name = model_identity(result.checkpoint)
    recall = _index_and_search(
        model, data_root, settings, target, output_dir / "index", model_name=model_name
    )
    seconds.index = time.perf_counter() - start

    start = time.perf_counter()
    print("evaluating the model, the untrained network and pHash ...", flush=True)
    evaluation, grid = score_builtin(
        model,
        data_root,
        model_name=model_name,
        resolution=settings.test_resolution,
        device=target,
        classes=classes,
        whitening=whitening,
        seed=settings.seed,
        precision=settings.precision,
    )
    seconds.evaluate = time.perf_counter() - start

    start = time.perf_counter()
    print("comparing with the shipped model on the held-out photo packages ...", flush=True)
    heldout = compare_with_shipped(
        model, name="this demo's model (p*, whitening)", resolution=settings.test_resolution,
        whitening=whitening, device=target, heldout=data_root.parent / "heldout",
    )  # fmt: skip
    seconds.heldout = time.perf_counter() - start

    summary = DemoSummary(
        output_dir=str(output_dir),
        data_root=str(data_root),
        steps=result.steps,
        seconds=seconds,
        exponent=exponent,
        index_recall_at_1=recall,
        headline=headline_figures(evaluation),
        heldout_packages=heldout,
    )
    write_report(
        evaluation,
        output_dir,
        grid,
        calibration=calibration,
        title="multigrain demo: built-in photos",
        summary=summary.to_markdown(),
        extra=summary.to_dict(),
    )
    return summary


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
    """PCA whitening of all training photos' embeddings, seen as l2n([e, 1]) (as ``whiten``
    fits: :class:`multigrain.search.whitening.WhiteningInput`)."""
    paths = list_images(data_root / "train")
    if (data_root / "train_unlabelled").is_dir():
        paths += list_images(data_root / "train_unlabelled")
    descriptors, _, _ = embed_in_memory(
        model,
        paths,
        resolution=settings.test_resolution,
        device=device,
        normalise=False,
        precision=settings.precision,
    )
    dim = min(settings.whitening_dim, len(descriptors) - 1, descriptors.shape[1])
    return fit_whitening(
        descriptors,
        dim=dim,
        shrinkage=settings.whitening_shrinkage,
        input=WhiteningInput.UNIT_WITH_ONE,
        fitted_on={
            "images": str(data_root / "train"),
            "resolution": settings.test_resolution,
            "exponent": float(model.pool.p),
            "input": "l2n([embedding, 1])",
        },
    )


def _index_and_search(
    model: MultiGrain,
    data_root: Path,
    settings: DemoSettings,
    device: torch.device,
    folder: Path,
    *,
    model_name: str,
) -> float:
    """Index the held-out reference photos (FAISS, exact), search the copy queries: recall@1."""
    copies = read_disc21(data_root / "copydetection")
    used = resolve_inference_precision(settings.precision, device)
    trunk = fast_trunk_for(model, used, device=device, resolution=settings.test_resolution)

    def embed(paths: list[Path]) -> tuple[torch.Tensor, list[str]]:
        descriptors, kept, _ = embed_in_memory(
            model, paths, resolution=settings.test_resolution, device=device,
            precision=used, trunk=trunk,
        )  # fmt: skip
        return descriptors, kept

    references, kept = embed(copies.references)
    metadata = EmbeddingMetadata(
        model=model_name,
        resolution=settings.test_resolution,
        exponent=float(model.pool.p),
        whitened=False,
        dim=int(references.shape[1]),
        precision=used.value,
    )
    metadata = with_trunk(metadata, trunk)  # int8: the quantised model's fingerprint
    index = ImageIndex.build(references.numpy(), kept, metadata=metadata)
    save_index(index, folder)
    queries, _ = embed(copies.queries)
    found = load_index(folder).search(queries.numpy(), 1)
    truth = dict(copies.ground_truth)
    hits = [
        str(copies.references[truth[q]]) == found.paths[q][0] for q in range(len(copies.queries))
    ]
    return float(np.mean(hits))


__all__ = [
    "DemoSettings",
    "DemoSummary",
    "demo_train_config",
    "headline_figures",
    "run_builtin_demo",
]
