"""Test-time settings fitted on images: `calibrate` (p* per resolution s), `whiten` (PCA)."""

from __future__ import annotations

from collections.abc import Sequence
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from multigrain.cli.app import app, comma_list, echo
from multigrain.cli.loading import (
    DeviceOption,
    ExponentOption,
    PrecisionOption,
    WorkersOption,
    prepare_model,
)
from multigrain.cli.outputs import file_option
from multigrain.data.kinds import DatasetKind
from multigrain.runtime.precision_kinds import InferencePrecision


class CalibrationMethod(str, Enum):
    """How `calibrate` chooses p* (SPEC: cross-validated grid, or p learned by SGD)."""

    GRID = "grid"
    LEARNED = "learned"


@app.command()
def calibrate(
    checkpoint: Annotated[Path, typer.Option("--checkpoint", "-c", help="model weights file")],
    data: Annotated[str | None, typer.Option(help="labelled held-out images (ImageFolder)")] = None,
    dataset: Annotated[DatasetKind, typer.Option(help="layout of the held-out data")] = (
        DatasetKind.FOLDER
    ),
    file_list: Annotated[
        str | None, typer.Option(help="text file of 'path label' lines (--dataset file-list)")
    ] = None,
    resolutions: Annotated[
        Sequence[int],
        typer.Option(
            parser=comma_list(int, at_least=1),
            metavar="S,...",
            help="s values to try (each >= 1)",
        ),
    ] = (224, 320, 500),
    exponents: Annotated[
        Sequence[float],
        typer.Option(
            parser=comma_list(float, above=0.0),
            metavar="P,...",
            help="p values to try (grid; each > 0)",
        ),
    ] = (1.0, 2.0, 3.0, 4.0, 5.0, 6.0),
    method: Annotated[
        CalibrationMethod, typer.Option(help="grid (top-1 of each p) | learned (SGD on p)")
    ] = CalibrationMethod.GRID,
    num_images: Annotated[int, typer.Option(min=1, help="labelled images used")] = 500,
    output: Annotated[
        Path | None,
        typer.Option(
            callback=file_option(".json"),
            help="JSON file to write (and a .png plot beside it) [default: "
            "CHECKPOINT.calibration.json]",
        ),
    ] = None,
    precision: Annotated[
        InferencePrecision,
        typer.Option(help="auto (bf16 where native, else fp32) | fp32 | bf16 | fp16"),
    ] = InferencePrecision.AUTO,
    device: DeviceOption = "auto",
) -> None:
    """Choose p* for each test resolution s: a grid scored by top-1, or p learned by SGD."""
    # imported here, not at the top: they load torch (start-up time of `multigrain --help`)
    from multigrain.data.sources import open_heldout_images
    from multigrain.evaluation.plots import plot_calibration
    from multigrain.inference.calibrate import grid_search, learn_exponents
    from multigrain.inference.prepare import calibration_path
    from multigrain.models.weights import load_model
    from multigrain.runtime.distributed import resolve_device

    model = load_model(checkpoint).model
    images = open_heldout_images(dataset, data_root=data, file_list=file_list)
    indices = _spread(len(images), num_images)
    sizes = list(resolutions)
    target = resolve_device(device)
    if method is CalibrationMethod.GRID:
        result = grid_search(
            model, images, resolutions=sizes, exponents=list(exponents),
            indices=indices, device=target, precision=precision,
        )  # fmt: skip
    else:
        result = learn_exponents(
            model, images, resolutions=sizes, indices=indices, device=target, precision=precision
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
    output: Annotated[
        Path,
        typer.Option(
            "--output", "-o", callback=file_option(), help="whitening file to write (e.g. w.pt)"
        ),
    ],
    resolution: Annotated[
        int, typer.Option("--resolution", "-s", min=1, help="longest image side s")
    ] = 500,
    exponent: ExponentOption = None,
    dim: Annotated[int | None, typer.Option(min=1, help="keep this many components")] = None,
    power: Annotated[
        float, typer.Option(min=0.0, max=1.0, help="eigenvalue power: 0.5 whitens, 0 rotates")
    ] = 0.5,
    shrinkage: Annotated[
        float, typer.Option(min=0.0, help="x mean eigenvalue added to each")
    ] = 0.0,
    batch_size: Annotated[int, typer.Option(min=1, help="images per forward")] = 32,
    workers: WorkersOption = None,
    precision: PrecisionOption = InferencePrecision.AUTO,
    device: DeviceOption = "auto",
) -> None:
    """Fit PCA whitening on the embeddings of a separate image set (same s and p*).

    The PCA sees each embedding e as l2n([e, 1]), as the authors' did: normalised first
    (better copy detection on the built-in benchmark than raw e), with the 1 carrying the
    classifier's bias, so that `classify --whitening` and the stored descriptors keep every
    top-1 prediction.
    """
    # imported here, not at the top: they load torch (start-up time of `multigrain --help`)
    from multigrain.data.inference_loading import default_num_workers
    from multigrain.data.listing import list_images, printable_path
    from multigrain.inference.embed import embed_in_memory
    from multigrain.models.checkpoint import model_identity
    from multigrain.runtime.distributed import resolve_device
    from multigrain.runtime.precision import resolve_inference_precision
    from multigrain.search.whitening import WhiteningInput, fit_whitening

    target = resolve_device(device)
    # auto: a float precision, the same on every machine, for what is fitted and stored
    used = resolve_inference_precision(precision, target, float_only=True)
    model = prepare_model(checkpoint, resolution, exponent, target)
    embeddings, paths, failures = embed_in_memory(
        model, list_images(inputs), resolution=resolution, device=target,
        batch_size=batch_size, normalise=False, precision=used,
        num_workers=default_num_workers(target) if workers is None else workers,
    )  # fmt: skip
    for failure in failures:
        typer.echo(f"skipped {printable_path(failure.path)}: {failure.reason}", err=True)
    whitening = fit_whitening(
        embeddings, dim=dim, power=power, shrinkage=shrinkage,
        input=WhiteningInput.UNIT_WITH_ONE,
        fitted_on={
            "images": str(inputs), "model": model_identity(checkpoint),
            "resolution": resolution, "exponent": float(model.pool.p),
            "input": "l2n([embedding, 1])", "precision": used.value,
        },
    )  # fmt: skip
    whitening.save(output)
    echo(
        f"whitening {whitening.input_dim} -> {whitening.output_dim} fitted on {len(paths)} "
        f"images at s={resolution}, p={float(model.pool.p):g}; saved {output}"
    )
