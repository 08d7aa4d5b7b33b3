"""Test-time subcommands: embed, calibrate, whiten, classify, export."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import torch
import typer

from multigrain.cli.app import app, echo, parse_enum, parse_list
from multigrain.inference.embed import DEFAULT_PRECISION, DEFAULT_SHARD_SIZE
from multigrain.inference.prepare import PreparedModel, calibration_path, load_whitening
from multigrain.inference.prepare import prepare_model as prepare_model_source
from multigrain.models import MultiGrain
from multigrain.runtime.errors import MultiGrainError
from multigrain.runtime.precision import InferencePrecision
from multigrain.search.whitening import Whitening

PRECISION_HELP = (
    "auto (bf16 where the CPU/GPU runs it natively, else fp32) | fp32 | bf16 | fp16 (CUDA) | "
    "int8 (CPU, onnxruntime, calibrated on the images; opt-in: costs accuracy)"
)
WORKERS_HELP = "decoding processes (default: 1 on a CPU with >= 2 cores, up to 8 with CUDA)"
MODEL_HELP = "model bundle folder or weights file [default: the built-in model]"
RESOLUTION_HELP = "longest image side s [default: the bundle's, or 500 for a weights file]"


def prepare(
    checkpoint: Path | None,
    resolution: int | None,
    exponent: float | None,
    device: torch.device,
    *,
    whitening: Path | None = None,
    use_bundle_whitening: bool = True,
) -> PreparedModel:
    """The model and its settings (model_source.prepare_model); prints its notes."""
    prepared = prepare_model_source(
        checkpoint, resolution=resolution, exponent=exponent, whitening=whitening,
        use_bundle_whitening=use_bundle_whitening, device=device,
    )  # fmt: skip
    for note in prepared.notes:
        typer.echo(note, err=True)
    return prepared


def prepare_model(
    checkpoint: Path | None, resolution: int | None, exponent: float | None, device: torch.device
) -> MultiGrain:
    """Load weights, set p: --exponent, else the calibrated p* for this s, else the model's."""
    return prepare(checkpoint, resolution, exponent, device, use_bundle_whitening=False).model


@app.command()
def embed(
    inputs: Annotated[str, typer.Argument(help="folder (recursive), glob pattern or file list")],
    output: Annotated[Path, typer.Option("--output", "-o", help="output folder")],
    checkpoint: Annotated[Path | None, typer.Option("--checkpoint", "-c", help=MODEL_HELP)] = None,
    resolution: Annotated[
        int | None, typer.Option("--resolution", "-s", help=RESOLUTION_HELP)
    ] = None,
    exponent: Annotated[
        float | None,
        typer.Option("--exponent", "-p", help="GeM exponent p* (default: the model's)"),
    ] = None,
    batch_size: Annotated[
        int | None, typer.Option(help="images per forward [default: 16 on CPU, 64 on CUDA]")
    ] = None,
    shard_size: Annotated[
        int, typer.Option(help="descriptors per output shard")
    ] = DEFAULT_SHARD_SIZE,
    workers: Annotated[int | None, typer.Option(help=WORKERS_HELP)] = None,
    precision: Annotated[str, typer.Option(help=PRECISION_HELP)] = DEFAULT_PRECISION.value,
    device: Annotated[str, typer.Option()] = "auto",
    max_pixels: Annotated[int | None, typer.Option(help="refuse larger images")] = None,
    whitening: Annotated[
        Path | None,
        typer.Option(help="whitening file from `multigrain whiten` [default: the bundle's]"),
    ] = None,
    bundle_whitening: Annotated[
        bool, typer.Option(help="apply the bundle's whitening (at its s and p*)")
    ] = True,
    resume: Annotated[bool, typer.Option(help="skip images a previous run already did")] = False,
) -> None:
    """Embed an image collection: L2-normalised descriptors at longest side s, exponent p*.

    Exit status: 0 when every image was embedded, 3 when the job finished but some
    images could not be read (listed in OUTPUT/failures-r*.tsv), 2 on a usage error.
    """
    from multigrain.data.images import DEFAULT_MAX_PIXELS
    from multigrain.data.inference_loading import default_num_workers
    from multigrain.data.listing import list_images
    from multigrain.inference.embed import embed_collection
    from multigrain.inference.store import EmbeddingMetadata
    from multigrain.runtime.distributed import init_distributed, shutdown_distributed
    from multigrain.runtime.precision import resolve_inference_precision

    context = init_distributed(device)
    try:
        paths = list_images(inputs)
        used = resolve_inference_precision(precision, context.device)
        prepared = prepare(
            checkpoint, resolution, exponent, context.device, whitening=whitening,
            use_bundle_whitening=bundle_whitening,
        )  # fmt: skip
        model, transform = prepared.model, prepared.whitening
        metadata = EmbeddingMetadata(
            model=prepared.identity,
            resolution=prepared.resolution,
            exponent=float(model.pool.p),
            whitened=transform is not None,
            dim=transform.output_dim if transform is not None else model.embedding_dim,
            precision=used.value,  # what ran, not what was asked: "auto" -> "bf16" or "fp32"
            bundle=prepared.source,
            threshold=prepared.threshold,
        )
        report = embed_collection(
            model,
            paths,
            output_dir=output,
            metadata=metadata,
            context=context,
            batch_size=batch_size,
            shard_size=shard_size,
            num_workers=default_num_workers(context.device) if workers is None else workers,
            precision=used,
            whitening=transform.apply if transform is not None else None,
            resume=resume,
            max_pixels=max_pixels or DEFAULT_MAX_PIXELS,
        )
    finally:
        shutdown_distributed()
    if context.is_main:
        echo(
            f"embedded {report.num_embedded} images ({report.num_already_done} already done) "
            f"in {report.seconds:.1f} s, {report.images_per_second:.1f} images/s, "
            f"{metadata.precision} -> {output}"
        )
        source = f"bundle {prepared.source}" if prepared.source else f"weights {checkpoint}"
        echo(
            f"model: {prepared.identity} ({source}), s={metadata.resolution}, "
            f"p*={metadata.exponent:g}, whitening {'on' if metadata.whitened else 'off'}"
        )
    for failure in report.failures:
        typer.echo(f"skipped {failure.path}: {failure.reason}", err=True)
    if report.failures:
        raise typer.Exit(3)


@app.command()
def calibrate(
    checkpoint: Annotated[Path, typer.Option("--checkpoint", "-c", help="model weights file")],
    data: Annotated[str | None, typer.Option(help="labelled held-out images (ImageFolder)")] = None,
    dataset: Annotated[str, typer.Option(help="folder | file-list | fashion-mnist")] = "folder",
    file_list: Annotated[str | None, typer.Option()] = None,
    resolutions: Annotated[str, typer.Option(help="s values to try")] = "224,320,500",
    exponents: Annotated[str, typer.Option(help="p values to try (grid)")] = "1,2,3,4,5,6",
    method: Annotated[str, typer.Option(help="grid | learned")] = "grid",
    num_images: Annotated[int, typer.Option(help="labelled images used")] = 500,
    output: Annotated[
        Path | None, typer.Option(help="default: CHECKPOINT.calibration.json")
    ] = None,
    precision: Annotated[
        str, typer.Option(help="auto (bf16 where native, else fp32) | fp32 | bf16 | fp16")
    ] = "auto",
    device: Annotated[str, typer.Option()] = "auto",
) -> None:
    """Choose p* for each test resolution s: a grid scored by top-1, or p learned by SGD."""
    from multigrain.data.sources import DatasetKind, open_heldout_images
    from multigrain.inference.calibrate import grid_search, learn_exponents, plot_calibration
    from multigrain.models.weights import load_model
    from multigrain.runtime.distributed import resolve_device
    from multigrain.runtime.precision import autocast_dtype
    from multigrain.training.config import Precision

    if method not in ("grid", "learned"):
        raise MultiGrainError(f"--method {method!r} is not one of: grid, learned")
    model = load_model(checkpoint).model
    images = open_heldout_images(
        parse_enum(DatasetKind, dataset, "--dataset"), data_root=data, file_list=file_list
    )
    indices = _spread(len(images), num_images)
    sizes = parse_list(resolutions, "--resolutions")
    target = resolve_device(device)
    dtype = autocast_dtype(parse_enum(Precision, precision, "--precision"), target)
    if method == "grid":
        result = grid_search(
            model, images, resolutions=sizes, exponents=parse_list(exponents, "--exponents", float),
            indices=indices, device=target, autocast_dtype=dtype,
        )  # fmt: skip
    else:
        result = learn_exponents(
            model, images, resolutions=sizes, indices=indices, device=target, autocast_dtype=dtype
        )
    destination = output or calibration_path(checkpoint)
    result.save(destination)
    plot = plot_calibration(result, destination.with_suffix(".png"))
    echo("| s | p | top-1 |\n|---|---|---|")
    for row in result.table:
        mark = " (p*)" if result.best.get(row.resolution) == row.exponent else ""
        echo(f"| {row.resolution} | {row.exponent:g}{mark} | {row.top1:.4f} |")
    echo(f"p* per s: {result.best}; s* = {result.best_resolution}; saved {destination}, {plot}")


def _spread(total: int, count: int) -> list[int]:
    """`count` indices spread evenly over range(total) (classes are often stored in runs)."""
    if count >= total:
        return list(range(total))
    return sorted({round(i * (total - 1) / max(count - 1, 1)) for i in range(count)})


@app.command()
def whiten(
    inputs: Annotated[str, typer.Argument(help="images to fit on: folder, glob or file list")],
    checkpoint: Annotated[Path, typer.Option("--checkpoint", "-c", help="model weights file")],
    output: Annotated[Path, typer.Option("--output", "-o", help="whitening file to write")],
    resolution: Annotated[int, typer.Option("--resolution", "-s")] = 500,
    exponent: Annotated[float | None, typer.Option("--exponent", "-p")] = None,
    dim: Annotated[int | None, typer.Option(help="keep this many components")] = None,
    power: Annotated[float, typer.Option(help="eigenvalue power: 0.5 whitens, 0 rotates")] = 0.5,
    shrinkage: Annotated[float, typer.Option(help="x mean eigenvalue added to each")] = 0.0,
    batch_size: Annotated[int, typer.Option()] = 32,
    workers: Annotated[int | None, typer.Option(help=WORKERS_HELP)] = None,
    precision: Annotated[str, typer.Option(help=PRECISION_HELP)] = "auto",
    device: Annotated[str, typer.Option()] = "auto",
) -> None:
    """Fit PCA whitening on the embeddings of a separate image set (same s and p*).

    Fitted on the raw embeddings the classifier reads, so that `classify --whitening`
    (the whitening folded into the classifier) keeps every top-1 prediction.
    """
    from multigrain.data.inference_loading import default_num_workers
    from multigrain.data.listing import list_images
    from multigrain.inference.embed import embed_in_memory
    from multigrain.models.checkpoint import model_identity
    from multigrain.runtime.distributed import resolve_device
    from multigrain.runtime.precision import resolve_inference_precision
    from multigrain.search.whitening import fit_whitening

    target = resolve_device(device)
    used = resolve_inference_precision(precision, target)
    model = prepare_model(checkpoint, resolution, exponent, target)
    embeddings, paths, failures = embed_in_memory(
        model, list_images(inputs), resolution=resolution, device=target,
        batch_size=batch_size, normalise=False, precision=used,
        num_workers=default_num_workers(target) if workers is None else workers,
    )  # fmt: skip
    for failure in failures:
        typer.echo(f"skipped {failure.path}: {failure.reason}", err=True)
    whitening = fit_whitening(
        embeddings, dim=dim, power=power, shrinkage=shrinkage,
        fitted_on={
            "images": str(inputs), "model": model_identity(checkpoint),
            "resolution": resolution, "exponent": float(model.pool.p), "input": "raw embedding",
            "precision": used.value,
        },
    )  # fmt: skip
    whitening.save(output)
    echo(
        f"whitening {whitening.input_dim} -> {whitening.output_dim} fitted on {len(paths)} "
        f"images at s={resolution}, p={float(model.pool.p):g}; saved {output}"
    )


class WhitenedClassifier(torch.nn.Module):
    """The classifier with the whitening folded in: raw embedding -> whitened -> logits."""

    def __init__(self, classifier: torch.nn.Linear, whitening: Whitening) -> None:
        from multigrain.search.whitening import fold_into_classifier

        super().__init__()
        self.whitening = whitening
        self.folded = fold_into_classifier(classifier, whitening)

    def forward(self, embedding: torch.Tensor) -> torch.Tensor:
        whitened = self.whitening.transform_unnormalised(embedding.double()).float()
        return self.folded(whitened)


@app.command()
def classify(
    inputs: Annotated[str, typer.Argument(help="folder, glob, file list or one image")],
    checkpoint: Annotated[Path | None, typer.Option("--checkpoint", "-c", help=MODEL_HELP)] = None,
    resolution: Annotated[
        int | None,
        typer.Option("--resolution", "-s", help="[default: the bundle's s, or 224]"),
    ] = None,
    exponent: Annotated[float | None, typer.Option("--exponent", "-p")] = None,
    top_k: Annotated[int, typer.Option()] = 5,
    whitening: Annotated[
        Path | None, typer.Option(help="classify through folded whitening")
    ] = None,
    json_out: Annotated[bool, typer.Option("--json", help="one JSON object per line")] = False,
    batch_size: Annotated[int, typer.Option()] = 32,
    workers: Annotated[int | None, typer.Option(help=WORKERS_HELP)] = None,
    precision: Annotated[str, typer.Option(help=PRECISION_HELP)] = "auto",
    device: Annotated[str, typer.Option()] = "auto",
) -> None:
    """Top-k classes with probabilities; class names come from the checkpoint."""
    from multigrain.data.inference_loading import default_num_workers
    from multigrain.data.listing import list_images
    from multigrain.inference.bundle import is_bundle
    from multigrain.inference.classify import classify_images
    from multigrain.runtime.distributed import resolve_device
    from multigrain.runtime.precision import resolve_inference_precision

    target = resolve_device(device)
    used = resolve_inference_precision(precision, target)
    if resolution is None and checkpoint is not None and not is_bundle(checkpoint):
        resolution = 224  # a bare weights file: the training resolution of ImageNet models
    prepared = prepare(
        checkpoint, resolution, exponent, target, whitening=whitening, use_bundle_whitening=False
    )
    model, classes = prepared.model, prepared.classes
    if prepared.whitening is not None:
        model.classifier = WhitenedClassifier(  # type: ignore[assignment]
            model.classifier, prepared.whitening
        )
    predictions = classify_images(
        model, list_images(inputs), classes=classes, resolution=prepared.resolution, top_k=top_k,
        device=target, precision=used, batch_size=batch_size,
        num_workers=default_num_workers(target) if workers is None else workers,
    )  # fmt: skip
    for prediction in predictions:
        if json_out:
            echo(json.dumps(prediction.__dict__))
        else:
            best = ", ".join(
                f"{label} {score:.3f}"
                for label, score in zip(prediction.labels, prediction.scores, strict=True)
            )
            echo(f"{prediction.path}: {best}")


@app.command()
def export(
    checkpoint: Annotated[Path, typer.Option("--checkpoint", "-c", help="model weights file")],
    output: Annotated[Path, typer.Option("--output", "-o", help=".onnx or .pt (TorchScript)")],
    exponent: Annotated[float | None, typer.Option("--exponent", "-p")] = None,
    example_size: Annotated[int, typer.Option(help="trace size; H and W stay dynamic")] = 224,
) -> None:
    """Export the embedding model (images -> embedding, logits) to ONNX or TorchScript."""
    from multigrain.inference.export import export_onnx, export_torchscript

    model = prepare_model(checkpoint, example_size, exponent, torch.device("cpu"))
    if output.suffix == ".onnx":
        export_onnx(model, output, example_size=example_size)
    elif output.suffix in (".pt", ".ts", ".torchscript"):
        export_torchscript(model, output, example_size=example_size)
    else:
        raise MultiGrainError(f"--output {output}: use a .onnx (ONNX) or .pt (TorchScript) name")
    echo(f"exported {output} (p = {float(model.pool.p):g}; dynamic batch, height and width)")


@app.command()
def evaluate(
    benchmark: Annotated[
        str,
        typer.Option(
            help="imagenet | holidays | copydays | ukbench | roxford5k | rparis6k | disc21"
        ),
    ],
    root: Annotated[Path, typer.Option(help="the benchmark's folder, as distributed")],
    checkpoint: Annotated[Path, typer.Option("--checkpoint", "-c", help="model weights file")],
    resolution: Annotated[int, typer.Option("--resolution", "-s")] = 500,
    exponent: Annotated[float | None, typer.Option("--exponent", "-p")] = None,
    whitening: Annotated[Path | None, typer.Option(help="whitening file (retrieval)")] = None,
    difficulty: Annotated[str, typer.Option(help="revisitop: easy | medium | hard")] = "medium",
    upright: Annotated[bool, typer.Option(help="Holidays: apply the rotation list")] = True,
    distractors: Annotated[Path | None, typer.Option(help="Copydays: distractor folder")] = None,
    output: Annotated[Path | None, typer.Option(help="write the result as JSON")] = None,
    report: Annotated[
        Path | None, typer.Option(help="builtin: folder for report.md/.json/.html and plots")
    ] = None,
    batch_size: Annotated[int, typer.Option()] = 32,
    workers: Annotated[int | None, typer.Option(help=WORKERS_HELP)] = None,
    precision: Annotated[str, typer.Option(help=PRECISION_HELP)] = "auto",
    device: Annotated[str, typer.Option()] = "auto",
) -> None:
    """Score a model on a standard benchmark with its exact protocol (JSON + markdown)."""
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
    from multigrain.models.checkpoint import model_identity
    from multigrain.runtime.atomic import atomic_write_text
    from multigrain.runtime.distributed import resolve_device
    from multigrain.runtime.precision import resolve_inference_precision

    target = resolve_device(device)
    used = resolve_inference_precision(precision, target)
    if benchmark == "builtin":
        _evaluate_builtin(
            root, checkpoint, resolution, exponent, target, used, report, output, whitening
        )  # fmt: skip
        return
    name = parse_enum(BenchmarkName, benchmark, "--benchmark")
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
    from multigrain.inference.calibrate import CalibrationResult
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
    output: Annotated[Path, typer.Option("--output", "-o", help="folder to create")] = Path(
        "data/builtin"
    ),
    seed: Annotated[int, typer.Option()] = 0,
    max_pool: Annotated[int, typer.Option(help="at most this many source photos")] = 400,
    overwrite: Annotated[bool, typer.Option()] = False,
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
