"""The `embed` subcommand: descriptors of an image collection, sharded, resumable, torchrun."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from multigrain.cli.app import app, echo
from multigrain.cli.loading import (
    MODEL_HELP,
    RESOLUTION_HELP,
    DeviceOption,
    ExponentOption,
    PrecisionOption,
    WorkersOption,
    prepare,
)
from multigrain.cli.outputs import first_missing, folder_option, remove_created
from multigrain.inference.embed_defaults import DEFAULT_PRECISION, DEFAULT_SHARD_SIZE
from multigrain.runtime.interrupts import Interrupted, interruptible

if TYPE_CHECKING:
    from multigrain.runtime.distributed import DistributedContext


@app.command()
def embed(
    inputs: Annotated[str, typer.Argument(help="folder (recursive), glob pattern or file list")],
    output: Annotated[
        Path,
        typer.Option(
            "--output",
            "-o",
            help="output folder (descriptors.npy, paths.jsonl, metadata.json)",
            callback=folder_option("to hold the descriptors"),
        ),
    ],
    checkpoint: Annotated[Path | None, typer.Option("--checkpoint", "-c", help=MODEL_HELP)] = None,
    resolution: Annotated[
        int | None, typer.Option("--resolution", "-s", min=1, help=RESOLUTION_HELP)
    ] = None,
    exponent: ExponentOption = None,
    batch_size: Annotated[
        int | None,
        typer.Option(min=1, help="images per forward [default: 16 on CPU, 64 on CUDA]"),
    ] = None,
    shard_size: Annotated[
        int, typer.Option(min=1, help="descriptors per output shard")
    ] = DEFAULT_SHARD_SIZE,
    workers: WorkersOption = None,
    precision: PrecisionOption = DEFAULT_PRECISION,
    device: DeviceOption = "auto",
    max_pixels: Annotated[
        int | None, typer.Option(min=1, help="refuse larger images [default: 178956970]")
    ] = None,
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
    images could not be read (listed in OUTPUT/failures-r*.jsonl), 2 on a usage error,
    130 / 143 when interrupted (SIGINT / SIGTERM; --resume continues).
    """
    created = first_missing(output)  # removed if the job fails before writing anything
    context: DistributedContext | None = None
    paths: list[Path] | None = None
    try:
        with interruptible():
            # imported here, not at the top: they load torch (start-up of `multigrain --help`)
            from multigrain.data.images import DEFAULT_MAX_PIXELS
            from multigrain.data.inference_loading import default_num_workers
            from multigrain.data.listing import list_images, printable_path
            from multigrain.inference.embed import embed_collection
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
                metadata = prepared.embedding_metadata(used)  # what ran: auto -> int8, bf16 or fp32
                report = embed_collection(
                    model, paths, output_dir=output, metadata=metadata, context=context,
                    batch_size=batch_size, shard_size=shard_size,
                    num_workers=default_num_workers(context.device) if workers is None else workers,
                    precision=used, whitening=transform.apply if transform is not None else None,
                    resume=resume, max_pixels=max_pixels or DEFAULT_MAX_PIXELS,
                )  # fmt: skip
            finally:
                shutdown_distributed()
    except Interrupted as interrupt:  # one line: what is saved, how to go on; no traceback
        remove_created(created, keep="*.npz")
        if context is None or context.is_main:
            typer.echo(interrupted_line(interrupt.name, output, paths), err=True)
        # sys.exit, not typer.Exit: main() adds its generic line to a returned 130
        sys.exit(interrupt.exit_status)
    except BaseException:
        remove_created(created, keep="*.npz")  # shards: work a rerun continues from
        raise
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
        typer.echo(f"skipped {printable_path(failure.path)}: {failure.reason}", err=True)
    if report.failures:
        raise typer.Exit(3)


def interrupted_line(signal_name: str, output: Path, paths: list[Path] | None) -> str:
    """What an interrupted `embed` says: how much of the job is saved, how to go on."""
    from multigrain.inference.store import count_done

    if paths is None:
        return f"interrupted ({signal_name}) before any image was read: run the command again"
    done = count_done(output, (str(path) for path in paths))
    if not done:
        return f"interrupted ({signal_name}) before any image was saved: run the command again"
    return (
        f"interrupted ({signal_name}): {done} of {len(paths)} images are done and saved in "
        f"{output}; run the same command with --resume to finish the job"
    )
