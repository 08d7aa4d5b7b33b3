"""The paper's research questions at small scale, on the built-in photos and Fashion-MNIST.

- RQ1: lambda = 1 (classification only), 0 (retrieval only), 0.5 (joint): does one
  embedding serve both jobs?
- RQ2: repeated augmentations m = 3 vs m = 1, with the same number of images seen.
- RQ3: GeM exponent during training p = 3 vs p = 1 (average pooling).
- RQ4: test resolution s x pooling exponent p: classification top-1 and copy-retrieval
  mAP of the joint model; does a larger p recover accuracy at larger s?
- Whitening on/off for retrieval, and classification unchanged after folding it into
  the classifier.

Every variant trains with the same steps, batch size and seeds; each figure is the mean
over seeds with the spread (max - min). Finished runs are reused, so an interrupted run
resumes. ``--quick`` runs everything at toy size (it checks the pipeline, not the claims).
The variants and scales: variants.py; the results: results.py; the report:
research_report.py. Every model embeds through the fast trunk of the forward path, in
fp32 (probe, builtin_maps).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from multigrain.data.sources import DatasetKind, open_heldout_images
from multigrain.evaluation.builtin import build_builtin_benchmark
from multigrain.evaluation.probe import probe
from multigrain.experiments.builtin_maps import BuiltinMaps, whitening_check
from multigrain.experiments.demo_settings import demo_train_config
from multigrain.experiments.research_report import write_report
from multigrain.experiments.results import (
    DatasetResults,
    ExperimentDataset,
    GridPoint,
    Measurement,
    Metric,
)
from multigrain.experiments.variants import FULL, QUICK, VARIANTS, Scale, Variant
from multigrain.models import MultiGrain
from multigrain.models.checkpoint import model_from_checkpoint
from multigrain.runtime.errors import MultiGrainError
from multigrain.training.config import Precision, Schedule, TrainConfig
from multigrain.training.loop import train

logger = logging.getLogger(__name__)

DATASETS = tuple(dataset.value for dataset in ExperimentDataset)


# --------------------------------------------------------------------------- training


def _train_builtin(
    variant: Variant, seed: int, scale: Scale, data_root: Path, folder: Path
) -> MultiGrain:
    config = demo_train_config(replace(scale.builtin, seed=seed), data_root, folder)
    config = replace(
        config,
        classification_weight=variant.classification_weight,
        num_repeats=variant.num_repeats,
        pooling_exponent=variant.pooling_exponent,
        checkpoint_every_steps=None,
        progress=False,
    )
    return _train(config)


def _train_fashion(variant: Variant, seed: int, scale: Scale, folder: Path) -> MultiGrain:
    config = TrainConfig(
        dataset=DatasetKind.FASHION_MNIST,
        trunk="resnet18",
        small_input=True,  # CIFAR-style stem: a 4x4 last map at 32 px, not 1x1
        input_size=32,
        batch_size=scale.fashion_batch,
        num_repeats=variant.num_repeats,
        classification_weight=variant.classification_weight,
        pooling_exponent=variant.pooling_exponent,
        max_steps=scale.fashion_steps,
        # the paper's 0.2 per 512 images, scaled to the batch; without the warm-up (60 steps
        # at the full scale) or at lr 0.1 the small-input stem did not learn (loss stuck at
        # ln 10 for classification only)
        lr=0.02,
        warmup_epochs=0.02,
        schedule=Schedule.COSINE,
        weight_decay=5e-4,
        precision=Precision.AUTO,
        seed=seed,
        output_dir=str(folder),
        progress=False,
    )
    return _train(config)


def _train(config: TrainConfig) -> MultiGrain:
    result = train(config, resume=True)
    model, _ = model_from_checkpoint(result.checkpoint)
    return model.eval()


# --------------------------------------------------------------------------- measuring


def _measure_builtin(
    model: MultiGrain, data_root: Path, scale: Scale
) -> tuple[dict[Metric, float], BuiltinMaps]:
    maps = BuiltinMaps.extract(model, data_root, scale.builtin.test_resolution)
    top1, copy_map = maps.scores(model, float(model.pool.p))
    return {Metric.HELDOUT_TOP1: top1, Metric.COPY_MAP: copy_map}, maps


def _measure_fashion(model: MultiGrain, scale: Scale, input_size: int = 32) -> dict[Metric, float]:
    result = probe(
        model,
        open_heldout_images(DatasetKind.FASHION_MNIST),
        input_size=input_size,
        num_images=scale.fashion_images,
    )
    return {Metric.TEST_TOP1: result.top1, Metric.COPY_MAP: result.copy_map}


# --------------------------------------------------------------------------- running


def run_experiments(
    *,
    output_dir: Path,
    data_root: Path = Path("data/builtin"),
    scale: Scale = FULL,
    datasets: Sequence[ExperimentDataset | str] = tuple(ExperimentDataset),
) -> list[DatasetResults]:
    """Train every variant x seed on each dataset, measure, write the report."""
    chosen = [_dataset(name) for name in datasets]
    results = []
    for dataset in chosen:
        if dataset is ExperimentDataset.BUILTIN and not (data_root / "manifest.json").exists():
            build_builtin_benchmark(data_root, seed=0, overwrite=True)
        results.append(_run_dataset(dataset, output_dir / dataset.value, data_root, scale))
        write_report(results, output_dir, scale)
    return results


def _dataset(name: ExperimentDataset | str) -> ExperimentDataset:
    try:
        return ExperimentDataset(name)
    except ValueError:
        raise MultiGrainError(f"unknown dataset {name!r}: use {', '.join(DATASETS)}") from None


def _run_dataset(
    dataset: ExperimentDataset, folder: Path, data_root: Path, scale: Scale
) -> DatasetResults:
    results = DatasetResults(dataset)
    reference: MultiGrain | None = None
    reference_maps: BuiltinMaps | None = None
    for variant in VARIANTS:
        for seed in scale.seeds:
            run = folder / variant.slug / f"seed{seed}"
            print(f"[{dataset.value}] {variant.name}, seed {seed}", flush=True)
            maps: BuiltinMaps | None = None
            if dataset is ExperimentDataset.BUILTIN:
                model = _train_builtin(variant, seed, scale, data_root, run)
                metrics, maps = _measure_builtin(model, data_root, scale)
            else:
                model = _train_fashion(variant, seed, scale, run)
                metrics = _measure_fashion(model, scale)
            results.measurements.append(Measurement(variant, seed, metrics))
            if reference is None:
                reference, reference_maps = model, maps
    assert reference is not None
    if dataset is ExperimentDataset.BUILTIN:
        assert reference_maps is not None
        results.grid = _builtin_grid(reference, data_root, scale, reference_maps)
        results.whitening = whitening_check(reference, data_root, scale.builtin, reference_maps)
    else:
        results.grid = _fashion_grid(reference, scale)
    return results


def _builtin_grid(
    model: MultiGrain, data_root: Path, scale: Scale, cached: BuiltinMaps
) -> list[GridPoint]:
    """RQ4 on the built-in photos; ``cached``: the model's maps at the test resolution."""
    points = []
    for s in scale.resolutions:
        maps = (
            cached
            if s == scale.builtin.test_resolution
            else BuiltinMaps.extract(model, data_root, s)
        )
        for p in scale.exponents:
            top1, copy_map = maps.scores(model, p)
            points.append(GridPoint(s, p, top1, copy_map))
    return points


def _fashion_grid(model: MultiGrain, scale: Scale) -> list[GridPoint]:
    points = []
    trained_p = float(model.pool.p)
    for s in scale.fashion_resolutions:
        for p in scale.exponents:
            model.pool.set_p(p)
            m = _measure_fashion(model, scale, input_size=s)
            points.append(GridPoint(s, p, m[Metric.TEST_TOP1], m[Metric.COPY_MAP]))
    model.pool.set_p(trained_p)
    return points


__all__ = ["DATASETS", "FULL", "QUICK", "Scale", "Variant", "VARIANTS", "run_experiments"]
