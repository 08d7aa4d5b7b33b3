"""Benchmark subcommands: `evaluate` a model with a benchmark's protocol, `build-benchmark`."""

from __future__ import annotations

import json
from contextlib import nullcontext
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from multigrain.cli.app import app, echo
from multigrain.cli.loading import (
    DeviceOption,
    ExponentOption,
    PrecisionOption,
    WorkersOption,
    prepare_model,
)
from multigrain.cli.outputs import file_option, folder_option, removed_on_failure
from multigrain.runtime.precision_kinds import InferencePrecision

if TYPE_CHECKING:  # imported in the commands, so that `multigrain --help` stays torch-free
    import torch


class EvaluationBenchmark(str, Enum):
    """What `evaluate --benchmark` scores: a standard benchmark or the built-in photos.

    The standard ones mirror :class:`~multigrain.data.standard.BenchmarkName` (spelled out,
    not imported, so that `multigrain --help` does not load the readers; a test checks that
    the two agree).
    """

    IMAGENET = "imagenet"
    HOLIDAYS = "holidays"
    COPYDAYS = "copydays"
    UKBENCH = "ukbench"
    ROXFORD5K = "roxford5k"
    RPARIS6K = "rparis6k"
    DISC21 = "disc21"
    BUILTIN = "builtin"  # `multigrain build-benchmark`


@app.command()
def evaluate(
    benchmark: Annotated[
        EvaluationBenchmark, typer.Option(help="a standard benchmark, or the built-in photos")
    ],
    root: Annotated[Path, typer.Option(help="the benchmark's folder, as distributed")],
    checkpoint: Annotated[Path, typer.Option("--checkpoint", "-c", help="model weights file")],
    resolution: Annotated[
        int, typer.Option("--resolution", "-s", min=1, help="longest image side s")
    ] = 500,
    exponent: ExponentOption = None,
    whitening: Annotated[Path | None, typer.Option(help="whitening file (retrieval)")] = None,
    difficulty: Annotated[str, typer.Option(help="revisitop: easy | medium | hard")] = "medium",
    upright: Annotated[bool, typer.Option(help="Holidays: apply the rotation list")] = True,
    distractors: Annotated[Path | None, typer.Option(help="Copydays: distractor folder")] = None,
    output: Annotated[
        Path | None,
        typer.Option(callback=file_option(".json"), help="write the result to this JSON file"),
    ] = None,
    report: Annotated[
        Path | None,
        typer.Option(
            callback=folder_option("for the report"),
            help="builtin: folder for report.md/.json/.html and plots",
        ),
    ] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="images per forward")] = 32,
    workers: WorkersOption = None,
    precision: PrecisionOption = InferencePrecision.AUTO,
    device: DeviceOption = "auto",
) -> None:
    """Score a model on a standard benchmark with its exact protocol (JSON + markdown)."""
    # imported here, not at the top: they load torch (start-up time of `multigrain --help`)
    import torch.nn.functional as F

    from multigrain.data.inference_loading import default_num_workers
    from multigrain.data.standard import READERS, BenchmarkName
    from multigrain.data.standard.types import ClassificationBenchmark, CopyDetectionBenchmark
    from multigrain.evaluation.standard import (
        EvaluationSettings,
        evaluate_classification,
        evaluate_copy_detection,
        evaluate_retrieval,
    )
    from multigrain.inference.prepare import load_whitening
    from multigrain.models.checkpoint import model_identity
    from multigrain.runtime.atomic import atomic_write_text
    from multigrain.runtime.distributed import resolve_device
    from multigrain.runtime.precision import resolve_inference_precision

    target = resolve_device(device)
    used = resolve_inference_precision(precision, target)
    if benchmark is EvaluationBenchmark.BUILTIN:
        with removed_on_failure(report) if report is not None else nullcontext():
            _evaluate_builtin(
                root, checkpoint, resolution, exponent, target, used, report, output, whitening
            )  # fmt: skip
        return
    name = BenchmarkName(benchmark.value)
    options: dict[str, object] = {}
    if name in (BenchmarkName.ROXFORD5K, BenchmarkName.RPARIS6K):
        options["difficulty"] = difficulty
    elif name is BenchmarkName.HOLIDAYS:
        options["upright"] = upright
    elif name is BenchmarkName.COPYDAYS and distractors is not None:
        options["distractors"] = distractors
    bench = READERS[name](root, **options)
    model = prepare_model(checkpoint, resolution, exponent, target)
    transform = load_whitening(whitening, model) if whitening else None
    settings = EvaluationSettings(
        model=model_identity(checkpoint), resolution=resolution, exponent=float(model.pool.p),
        whitened=transform is not None, device=str(target), batch_size=batch_size,
        num_workers=default_num_workers(target) if workers is None else workers,
        precision=used.value,
    )  # fmt: skip

    def describe(embeddings: torch.Tensor) -> torch.Tensor:
        if transform is not None:
            return transform.apply(embeddings)
        return F.normalize(embeddings, dim=1)

    if isinstance(bench, ClassificationBenchmark):
        result = evaluate_classification(model, bench, settings)
    elif isinstance(bench, CopyDetectionBenchmark):
        result = evaluate_copy_detection(model, bench, settings, describe)
    else:
        result = evaluate_retrieval(model, bench, settings, describe)
    echo(result.to_markdown())
    if output is not None:
        atomic_write_text(output, result.to_json())


def _evaluate_builtin(
    root: Path, checkpoint: Path, resolution: int, exponent: float | None,
    target: torch.device, precision: InferencePrecision, report: Path | None,
    output: Path | None, whitening: Path | None = None,
) -> None:  # fmt: skip
    from dataclasses import asdict

    from multigrain.evaluation.builtin.score import evaluate_builtin
    from multigrain.inference.calibration_result import CalibrationResult
    from multigrain.inference.prepare import calibration_path, load_whitening
    from multigrain.models.checkpoint import model_identity
    from multigrain.models.weights import load_model
    from multigrain.runtime.atomic import atomic_write_text

    classes = load_model(checkpoint).classes
    model = prepare_model(checkpoint, resolution, exponent, target)
    stored = calibration_path(checkpoint)
    calibration = CalibrationResult.load(stored) if stored.exists() else None
    result = evaluate_builtin(
        model, root, model_name=model_identity(checkpoint), resolution=resolution,
        device=target, classes=classes, report=report, precision=precision,
        calibration=calibration,
        whitening=load_whitening(whitening, model) if whitening is not None else None,
    )  # fmt: skip
    echo(result.to_markdown() + f"\n\nprecision: {precision.value}")
    if output is not None:
        values = {**asdict(result), "precision": precision.value}
        atomic_write_text(output, json.dumps(values, indent=2))
    if report is not None:
        echo(f"report: {report / 'report.html'}")


@app.command("build-benchmark")
def build_benchmark(
    output: Annotated[
        Path,
        typer.Option(
            "--output",
            "-o",
            callback=folder_option("for the benchmark"),
            help="folder to create",
        ),
    ] = Path("data/builtin"),
    seed: Annotated[int, typer.Option(min=0, help="seed of the photo choice and the copies")] = 0,
    max_pool: Annotated[int, typer.Option(min=1, help="at most this many source photos")] = 400,
    overwrite: Annotated[bool, typer.Option(help="replace a non-empty output folder")] = False,
) -> None:
    """Build the built-in benchmark of real photos from installed Debian packages."""
    from multigrain.evaluation.builtin import build_builtin_benchmark

    manifest = build_builtin_benchmark(output, seed=seed, max_pool=max_pool, overwrite=overwrite)
    counts = ", ".join(f"{key} {value}" for key, value in vars(manifest.counts).items())
    photos = sum(manifest.per_package.values())
    echo(
        f"built {output} in {manifest.build_seconds:.0f} s from {photos} photos ({counts}); "
        f"sources and licences in {output / 'manifest.json'}"
    )
