"""The `export` subcommand: the embedding model as ONNX or TorchScript."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from multigrain.cli.app import app, echo
from multigrain.cli.loading import ExponentOption, prepare_model
from multigrain.cli.outputs import file_option
from multigrain.runtime.errors import MultiGrainError


@app.command()
def export(
    checkpoint: Annotated[Path, typer.Option("--checkpoint", "-c", help="model weights file")],
    output: Annotated[
        Path,
        typer.Option(
            "--output",
            "-o",
            callback=file_option(".onnx", ".pt", ".ts", ".torchscript"),
            help=".onnx or .pt (TorchScript)",
        ),
    ],
    exponent: ExponentOption = None,
    example_size: Annotated[
        int, typer.Option(min=1, help="trace size; H and W stay dynamic")
    ] = 224,
) -> None:
    """Export the embedding model (images -> embedding, logits) to ONNX or TorchScript."""
    # imported here, not at the top: they load torch (start-up time of `multigrain --help`)
    import torch

    from multigrain.inference.export import export_onnx, export_torchscript

    model = prepare_model(checkpoint, example_size, exponent, torch.device("cpu"))
    if output.suffix == ".onnx":
        export_onnx(model, output, example_size=example_size)
    elif output.suffix in (".pt", ".ts", ".torchscript"):
        export_torchscript(model, output, example_size=example_size)
    else:
        raise MultiGrainError(f"--output {output}: use a .onnx (ONNX) or .pt (TorchScript) name")
    echo(f"exported {output} (p = {float(model.pool.p):g}; dynamic batch, height and width)")
