"""The model a test-time command runs, and the option help texts those commands share."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from multigrain.cli.app import greater_than
from multigrain.runtime.precision_kinds import InferencePrecision

if TYPE_CHECKING:  # imported in `prepare`, so that `multigrain COMMAND --help` stays torch-free
    import torch

    from multigrain.inference.prepare import PreparedModel
    from multigrain.models import MultiGrain

PRECISION_HELP = (
    "auto (int8 on a CPU with VNNI and no AMX; else bf16 where the CPU/GPU runs it natively; "
    "else fp32) | fp32 | bf16 | fp16 (CUDA) | int8 (CPU, onnxruntime)"
)
WORKERS_HELP = "decoding processes [default: one per core, at most 8; CUDA: cores - 1]"
MODEL_HELP = "model bundle folder or weights file [default: the built-in model]"
RESOLUTION_HELP = "longest image side s [default: the bundle's, or 500 for a weights file]"

#: Options every model-running command shares.
WorkersOption = Annotated[int | None, typer.Option(min=0, help=WORKERS_HELP)]
PrecisionOption = Annotated[InferencePrecision, typer.Option(help=PRECISION_HELP)]
DeviceOption = Annotated[str, typer.Option(help="auto | cpu | cuda | cuda:N")]

#: The test-time GeM exponent option every model-running command takes.
ExponentOption = Annotated[
    float | None,
    typer.Option(
        "--exponent",
        "-p",
        callback=greater_than(0.0),
        help="GeM exponent p* > 0 [default: the bundle's, else calibrated for s, else the model's]",
    ),
]


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
    # imported here, not at the top: loads torch (start-up time of `multigrain --help`)
    from multigrain.inference.prepare import prepare_model as prepare_model_source

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
