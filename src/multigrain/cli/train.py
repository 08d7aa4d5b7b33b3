"""Training subcommands: `train` a model, `probe` a trained checkpoint on held-out images."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated

import typer

from multigrain.cli.app import app, comma_list, echo, greater_than, parse_enum
from multigrain.cli.outputs import folder_option
from multigrain.data.kinds import AugmentationKind, DatasetKind
from multigrain.runtime.precision_kinds import Precision


@app.command()
def train(
    data: Annotated[
        str | None,
        typer.Option(
            help="ImageFolder root; image root for --file-list; "
            "Fashion-MNIST folder for --dataset fashion-mnist"
        ),
    ] = None,
    dataset: Annotated[DatasetKind, typer.Option(help="layout of the training data")] = (
        DatasetKind.FOLDER
    ),
    file_list: Annotated[str | None, typer.Option(help="text file of 'path label' lines")] = None,
    limit: Annotated[
        int | None, typer.Option(min=1, help="use only the first N training images")
    ] = None,
    unlabelled: Annotated[
        str | None,
        typer.Option(help="extra images without labels (folder/glob/list): instances only"),
    ] = None,
    output_dir: Annotated[
        str,
        typer.Option(
            "--output-dir",
            "-o",
            callback=folder_option("for the run"),
            help="folder for checkpoints, snapshots and the log",
        ),
    ] = "runs/train",
    # a string checked by TrainConfig.validate, whose error names the valid trunks
    trunk: Annotated[str, typer.Option(help="resnet18|34|50|101|152")] = "resnet50",
    small_input: Annotated[
        bool, typer.Option(help="3x3 stem without max-pool for 28-64 px images")
    ] = False,
    standardise_input: Annotated[
        bool, typer.Option(help="standardise each image's colour channels before the trunk")
    ] = False,
    input_size: Annotated[int, typer.Option(min=8, help="training crop side in pixels")] = 224,
    augmentation: Annotated[AugmentationKind, typer.Option(help="training augmentation")] = (
        AugmentationKind.FULL
    ),
    batch_size: Annotated[
        int, typer.Option(min=1, help="images per optimiser step, all processes together")
    ] = 504,
    # --repeats and --lambda: ranges checked by TrainConfig.validate (tests/test_cli.py)
    repeats: Annotated[int, typer.Option(help="repeated augmentations m (>= 1)")] = 3,
    lambda_: Annotated[
        float, typer.Option("--lambda", help="weight of the classification loss, in [0, 1]")
    ] = 0.5,
    pooling_exponent: Annotated[
        float,
        typer.Option(
            "--pooling-exponent",
            "-p",
            callback=greater_than(0.0),
            help="GeM exponent p during training (> 0)",
        ),
    ] = 3.0,
    global_sampling: Annotated[
        bool, typer.Option(help="margin loss on the batch gathered over ranks")
    ] = False,
    epochs: Annotated[
        int, typer.Option(min=0, help="training epochs (>= 1 unless --max-steps is given)")
    ] = 120,
    max_steps: Annotated[
        int | None, typer.Option(min=1, help="stop after N optimiser steps")
    ] = None,
    lr: Annotated[
        float, typer.Option(callback=greater_than(0.0), help="SGD learning rate (> 0)")
    ] = 0.2,
    momentum: Annotated[float, typer.Option(min=0.0, max=1.0, help="SGD momentum")] = 0.9,
    weight_decay: Annotated[float, typer.Option(min=0.0, help="SGD weight decay")] = 1e-4,
    # a string, so that a bad value is a one-line MultiGrainError (tests/test_cli.py)
    schedule: Annotated[str, typer.Option(help="step | cosine")] = "step",
    lr_steps: Annotated[
        Sequence[int],
        typer.Option(
            parser=comma_list(int, at_least=0),
            metavar="EPOCH,...",
            help="epochs where lr is multiplied by --lr-gamma",
        ),
    ] = (30, 60, 90),
    lr_gamma: Annotated[
        float,
        typer.Option(callback=greater_than(0.0), help="lr factor at each of --lr-steps (> 0)"),
    ] = 0.1,
    warmup_epochs: Annotated[
        float, typer.Option(min=0.0, help="epochs of linear lr warm-up (fractions allowed)")
    ] = 0.0,
    beta_lr_factor: Annotated[
        float, typer.Option(min=0.0, help="learning rate of beta relative to --lr")
    ] = 1.0,
    grad_accum: Annotated[int, typer.Option(min=1, help="micro-batches per optimiser step")] = 1,
    precision: Annotated[Precision, typer.Option(help="autocast dtype")] = Precision.AUTO,
    channels_last: Annotated[
        bool, typer.Option(help="channels-last memory layout (faster convolutions)")
    ] = True,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda")] = "auto",
    workers: Annotated[int, typer.Option(min=0, help="data-loading processes")] = 0,
    seed: Annotated[int, typer.Option(min=0, help="seed of sampling and augmentation")] = 0,
    checkpoint_every: Annotated[int, typer.Option(min=1, help="epochs between checkpoints")] = 1,
    checkpoint_every_steps: Annotated[
        int | None, typer.Option(min=1, help="also write the checkpoint every N steps")
    ] = None,
    keep_every_steps: Annotated[
        int | None, typer.Option(min=1, help="also keep snapshots/step-N.pt every N steps")
    ] = None,
    log_every: Annotated[int, typer.Option(min=1, help="steps between log lines")] = 10,
    resume: Annotated[bool, typer.Option(help="continue from OUTPUT_DIR/checkpoint.pt")] = False,
    overwrite: Annotated[
        bool,
        typer.Option(
            "--overwrite",
            help="replace a run already in OUTPUT_DIR (its checkpoint, log and snapshots)",
        ),
    ] = False,
) -> None:
    """Train a MultiGrain model (joint classification + margin loss, repeated augmentations).

    Ctrl-C (SIGINT) or SIGTERM finishes the step under way, writes the checkpoint and exits
    with status 130 or 143; run the same command with --resume to continue.
    """
    # imported here, not at the top: `multigrain --help` must not load the training stack
    from multigrain.training.config import Schedule, TrainConfig
    from multigrain.training.interrupt import TrainingInterrupted
    from multigrain.training.loop import train as run_training

    config = TrainConfig(
        dataset=dataset,
        data_root=data,
        file_list=file_list,
        limit=limit,
        unlabelled_root=unlabelled,
        augmentation=augmentation.value,
        trunk=trunk,
        small_input=small_input,
        standardise_input=standardise_input,
        pooling_exponent=pooling_exponent,
        input_size=input_size,
        batch_size=batch_size,
        num_repeats=repeats,
        classification_weight=lambda_,
        beta_lr_factor=beta_lr_factor,
        global_sampling=global_sampling,
        epochs=epochs,
        max_steps=max_steps,
        lr=lr,
        momentum=momentum,
        weight_decay=weight_decay,
        schedule=parse_enum(Schedule, schedule, "--schedule"),
        lr_steps=[float(epoch) for epoch in lr_steps],
        lr_gamma=lr_gamma,
        warmup_epochs=warmup_epochs,
        grad_accum_steps=grad_accum,
        precision=precision,
        channels_last=channels_last,
        device=device,
        num_workers=workers,
        seed=seed,
        output_dir=output_dir,
        checkpoint_every=checkpoint_every,
        checkpoint_every_steps=checkpoint_every_steps,
        keep_every_steps=keep_every_steps,
        log_every=log_every,
    )
    from multigrain.runtime.distributed import shutdown_distributed

    try:
        result = run_training(config, resume=resume, overwrite=overwrite)
    except TrainingInterrupted as stop:
        typer.echo(f"interrupted: {stop}", err=True)
        # sys.exit, not typer.Exit: main() adds its generic line to a returned 130
        sys.exit(stop.exit_status)
    finally:
        # under torchrun: a gloo group left to the interpreter's exit can abort the process
        # ("terminate called without an active exception", SIGABRT) after a finished run
        shutdown_distributed()
    if result.history:
        last = result.history[-1]
        echo(
            f"trained {result.steps} steps: loss {last.loss:.4f} (classification "
            f"{last.classification:.4f}, margin {last.margin:.4f}), beta {last.beta:.3f}; "
            f"checkpoint {result.checkpoint}"
        )


@app.command()
def probe(
    checkpoint: Annotated[Path, typer.Argument(help="checkpoint written by `multigrain train`")],
    dataset: Annotated[DatasetKind, typer.Option(help="layout of the held-out data")] = (
        DatasetKind.FASHION_MNIST
    ),
    data: Annotated[str | None, typer.Option(help="held-out ImageFolder root")] = None,
    file_list: Annotated[
        str | None, typer.Option(help="text file of 'path label' lines (--dataset file-list)")
    ] = None,
    num_images: Annotated[int, typer.Option(min=1, help="held-out images scored")] = 1000,
    input_size: Annotated[
        int | None, typer.Option(min=1, help="image side [default: the training input size]")
    ] = None,
    json_out: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """Held-out top-1 and retrieval of augmented copies for a trained checkpoint."""
    # imported here, not at the top: they load torch (start-up time of `multigrain --help`)
    from multigrain.data.sources import open_heldout_images
    from multigrain.evaluation.probe import probe as run_probe
    from multigrain.models.checkpoint import load_checkpoint, model_from_checkpoint

    model, _ = model_from_checkpoint(checkpoint)
    size = input_size or int(load_checkpoint(checkpoint).get("config", {}).get("input_size", 224))
    images = open_heldout_images(dataset, data_root=data, file_list=file_list)
    result = run_probe(model, images, input_size=size, num_images=num_images)
    if json_out:
        echo(json.dumps(result.__dict__))
    else:
        echo(
            f"{result.num_images} held-out images at {size} px: top-1 {result.top1:.3f}, "
            f"copy recall@1 {result.copy_recall_at_1:.3f}, copy mAP {result.copy_map:.3f}"
        )
