"""The `classify` subcommand: top-k classes of images, optionally through folded whitening."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from multigrain.cli.app import app, echo
from multigrain.cli.loading import (
    MODEL_HELP,
    DeviceOption,
    ExponentOption,
    PrecisionOption,
    WorkersOption,
    prepare,
)
from multigrain.runtime.precision_kinds import InferencePrecision


@app.command()
def classify(
    inputs: Annotated[str, typer.Argument(help="folder, glob, file list or one image")],
    checkpoint: Annotated[Path | None, typer.Option("--checkpoint", "-c", help=MODEL_HELP)] = None,
    resolution: Annotated[
        int | None,
        typer.Option(
            "--resolution",
            "-s",
            min=1,
            help="longest image side s [default: the bundle's s, or 224]",
        ),
    ] = None,
    exponent: ExponentOption = None,
    top_k: Annotated[int, typer.Option(min=1, help="classes shown per image")] = 5,
    whitening: Annotated[
        Path | None, typer.Option(help="classify through folded whitening")
    ] = None,
    json_out: Annotated[bool, typer.Option("--json", help="one JSON object per line")] = False,
    batch_size: Annotated[int, typer.Option(min=1, help="images per forward")] = 32,
    workers: WorkersOption = None,
    precision: PrecisionOption = InferencePrecision.AUTO,
    device: DeviceOption = "auto",
) -> None:
    """Top-k classes with probabilities; class names come from the checkpoint."""
    # imported here, not at the top: they load torch (start-up time of `multigrain --help`)
    from multigrain.cli.whitened import WhitenedClassifier
    from multigrain.data.inference_loading import default_num_workers
    from multigrain.data.listing import list_images, printable_path
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
            echo(f"{printable_path(prediction.path)}: {best}")
