"""The `multigrain` command: thin subcommands over the library.

Every user error (MultiGrainError) is printed as one line on stderr with exit status 2;
no traceback. Run under torchrun with `torchrun --nproc-per-node N -m multigrain train ...`.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Annotated

import typer

from multigrain.cli.app import app  # noqa: E402
from multigrain.cli.app import echo as _echo
from multigrain.cli.app import parse_enum as _enum
from multigrain.runtime.allocator import (
    SETTING,
    find_allocator,
    loaded_allocator,
    reexec_with_allocator,
)
from multigrain.runtime.errors import MultiGrainError


@app.command()
def train(
    data: Annotated[
        str | None,
        typer.Option(
            help="ImageFolder root; image root for --file-list; "
            "Fashion-MNIST folder for --dataset fashion-mnist"
        ),
    ] = None,
    dataset: Annotated[str, typer.Option(help="folder | file-list | fashion-mnist")] = "folder",
    file_list: Annotated[str | None, typer.Option(help="text file of 'path label' lines")] = None,
    limit: Annotated[int | None, typer.Option(help="use only the first N training images")] = None,
    unlabelled: Annotated[
        str | None,
        typer.Option(help="extra images without labels (folder/glob/list): instances only"),
    ] = None,
    output_dir: Annotated[str, typer.Option("--output-dir", "-o")] = "runs/train",
    trunk: Annotated[str, typer.Option(help="resnet18|34|50|101|152")] = "resnet50",
    small_input: Annotated[
        bool, typer.Option(help="3x3 stem without max-pool for 28-64 px images")
    ] = False,
    input_size: Annotated[int, typer.Option()] = 224,
    augmentation: Annotated[
        str, typer.Option(help="full | copy | copy-strong | autoaugment | none")
    ] = "full",
    batch_size: Annotated[
        int, typer.Option(help="images per optimiser step, all processes together")
    ] = 504,
    repeats: Annotated[int, typer.Option(help="repeated augmentations m")] = 3,
    lambda_: Annotated[
        float, typer.Option("--lambda", help="weight of the classification loss")
    ] = 0.5,
    pooling_exponent: Annotated[
        float, typer.Option("--pooling-exponent", "-p", help="GeM exponent p during training")
    ] = 3.0,
    global_sampling: Annotated[
        bool, typer.Option(help="margin loss on the batch gathered over ranks")
    ] = False,
    epochs: Annotated[int, typer.Option()] = 120,
    max_steps: Annotated[int | None, typer.Option(help="stop after N optimiser steps")] = None,
    lr: Annotated[float, typer.Option()] = 0.2,
    momentum: Annotated[float, typer.Option()] = 0.9,
    weight_decay: Annotated[float, typer.Option()] = 1e-4,
    schedule: Annotated[str, typer.Option(help="step | cosine")] = "step",
    lr_steps: Annotated[
        str, typer.Option(help="epochs where lr is multiplied by --lr-gamma")
    ] = "30,60,90",
    lr_gamma: Annotated[float, typer.Option()] = 0.1,
    warmup_epochs: Annotated[float, typer.Option()] = 0.0,
    beta_lr_factor: Annotated[
        float, typer.Option(help="learning rate of beta relative to --lr")
    ] = 1.0,
    grad_accum: Annotated[int, typer.Option(help="micro-batches per optimiser step")] = 1,
    precision: Annotated[str, typer.Option(help="auto | fp32 | bf16 | fp16")] = "auto",
    channels_last: Annotated[bool, typer.Option()] = True,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda")] = "auto",
    workers: Annotated[int, typer.Option(help="data-loading processes")] = 0,
    seed: Annotated[int, typer.Option()] = 0,
    checkpoint_every: Annotated[int, typer.Option(help="epochs between checkpoints")] = 1,
    checkpoint_every_steps: Annotated[int | None, typer.Option()] = None,
    keep_every_steps: Annotated[
        int | None, typer.Option(help="also keep snapshots/step-N.pt every N steps")
    ] = None,
    log_every: Annotated[int, typer.Option()] = 10,
    resume: Annotated[bool, typer.Option(help="continue from OUTPUT_DIR/checkpoint.pt")] = False,
) -> None:
    """Train a MultiGrain model (joint classification + margin loss, repeated augmentations)."""
    from multigrain.data.sources import DatasetKind
    from multigrain.training.config import Precision, Schedule, TrainConfig
    from multigrain.training.loop import train as run_training

    config = TrainConfig(
        dataset=_enum(DatasetKind, dataset, "--dataset"),
        data_root=data,
        file_list=file_list,
        limit=limit,
        unlabelled_root=unlabelled,
        augmentation=augmentation,
        trunk=trunk,
        small_input=small_input,
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
        schedule=_enum(Schedule, schedule, "--schedule"),
        lr_steps=_int_list(lr_steps, "--lr-steps"),
        lr_gamma=lr_gamma,
        warmup_epochs=warmup_epochs,
        grad_accum_steps=grad_accum,
        precision=_enum(Precision, precision, "--precision"),
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
    _check_augmentation(augmentation)
    result = run_training(config, resume=resume)
    if result.history:
        last = result.history[-1]
        _echo(
            f"trained {result.steps} steps: loss {last.loss:.4f} (classification "
            f"{last.classification:.4f}, margin {last.margin:.4f}), beta {last.beta:.3f}; "
            f"checkpoint {result.checkpoint}"
        )


@app.command()
def probe(
    checkpoint: Annotated[Path, typer.Argument(help="checkpoint written by `multigrain train`")],
    dataset: Annotated[
        str, typer.Option(help="folder | file-list | fashion-mnist")
    ] = "fashion-mnist",
    data: Annotated[str | None, typer.Option(help="held-out ImageFolder root")] = None,
    file_list: Annotated[str | None, typer.Option()] = None,
    num_images: Annotated[int, typer.Option()] = 1000,
    input_size: Annotated[int | None, typer.Option(help="default: the training input size")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """Held-out top-1 and retrieval of augmented copies for a trained checkpoint."""
    from multigrain.data.sources import DatasetKind, open_heldout_images
    from multigrain.evaluation.probe import probe as run_probe
    from multigrain.models.checkpoint import load_checkpoint, model_from_checkpoint

    model, _ = model_from_checkpoint(checkpoint)
    size = input_size or int(load_checkpoint(checkpoint).get("config", {}).get("input_size", 224))
    images = open_heldout_images(
        _enum(DatasetKind, dataset, "--dataset"), data_root=data, file_list=file_list
    )
    result = run_probe(model, images, input_size=size, num_images=num_images)
    if json_out:
        _echo(json.dumps(result.__dict__))
    else:
        _echo(
            f"{result.num_images} held-out images at {size} px: top-1 {result.top1:.3f}, "
            f"copy recall@1 {result.copy_recall_at_1:.3f}, copy mAP {result.copy_map:.3f}"
        )


@app.command()
def demo(
    output_dir: Annotated[str, typer.Option("--output-dir", "-o")] = "runs/demo",
    data: Annotated[
        str, typer.Option(help="builtin (real photos, the full pipeline) | fashion-mnist")
    ] = "builtin",
    data_root: Annotated[
        str, typer.Option(help="where the built-in benchmark is (built there if missing)")
    ] = "data/builtin",
    steps: Annotated[
        int | None, typer.Option(help="training steps (default 400 builtin, 600 fashion-mnist)")
    ] = None,
    batch_size: Annotated[int | None, typer.Option(help="default 48 builtin, 96 fashion")] = None,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda")] = "auto",
) -> None:
    """Train a small MultiGrain model and show it against pHash and the untrained network.

    With the default built-in photos: build the benchmark, train, calibrate p*, whiten,
    index, evaluate copy detection / instances / classification, write runs/demo/report.html.
    """
    if data == "fashion-mnist":
        from multigrain.experiments.fashion_demo import run_demo

        report = run_demo(
            output_dir=Path(output_dir), steps=steps or 600, batch_size=batch_size or 96
        )
        _echo(report.summary())
        return
    if data != "builtin":
        raise MultiGrainError(f"unknown demo data {data!r}: use builtin or fashion-mnist")
    from dataclasses import replace

    from multigrain.experiments.builtin_demo import DemoSettings, run_builtin_demo
    from multigrain.runtime.distributed import resolve_device

    settings = DemoSettings()
    settings = replace(
        settings, steps=steps or settings.steps, batch_size=batch_size or settings.batch_size
    )
    summary = run_builtin_demo(
        output_dir=Path(output_dir),
        data_root=Path(data_root),
        settings=settings,
        device=str(resolve_device(device)),
    )
    _echo(summary.to_markdown())
    _echo(f"\nreport: {Path(output_dir) / 'report.html'} (and report.md, report.json)")


@app.command()
def experiments(
    output_dir: Annotated[str, typer.Option("--output-dir", "-o")] = "runs/experiments",
    quick: Annotated[
        bool, typer.Option(help="toy size: checks the pipeline in a few minutes, not the claims")
    ] = False,
    datasets: Annotated[str, typer.Option(help="comma-separated: builtin, fashion-mnist")] = (
        "builtin,fashion-mnist"
    ),
    data_root: Annotated[str, typer.Option(help="the built-in benchmark")] = "data/builtin",
) -> None:
    """The paper's research questions at small scale (RQ1-RQ4, whitening): tables + plots."""
    from multigrain.experiments.research import FULL, QUICK, run_experiments

    chosen = [d.strip() for d in datasets.split(",") if d.strip()]
    run_experiments(
        output_dir=Path(output_dir),
        data_root=Path(data_root),
        scale=QUICK if quick else FULL,
        datasets=chosen,
    )
    _echo(f"report: {Path(output_dir) / 'experiments.html'} (and experiments.md, .json)")


def _int_list(text: str, option: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise MultiGrainError(f"{option} wants comma-separated integers, got {text!r}") from None


def _check_augmentation(value: str) -> None:
    from multigrain.data import AugmentationKind

    _enum(AugmentationKind, value, "--augmentation")


@app.command()
def info() -> None:
    """What this machine runs: versions, device, default precision, threads, allocator."""
    import torch

    import multigrain
    from multigrain.runtime.distributed import resolve_device
    from multigrain.runtime.precision import InferencePrecision, resolve_inference_precision

    device = resolve_device("auto")
    precision = resolve_inference_precision(InferencePrecision.AUTO, device).value
    loaded = loaded_allocator()
    available = find_allocator("auto")
    if loaded:
        allocator = f"{Path(loaded).name} ({loaded})"
    elif available:
        allocator = f"glibc malloc ({available} is installed; see {SETTING})"
    else:
        allocator = "glibc malloc (apt-get install libtcmalloc-minimal4 for flat memory)"
    from multigrain.inference.bundle import builtin_bundle_path, is_bundle

    shipped = builtin_bundle_path()
    model = str(shipped) if is_bundle(shipped) else "none in this install (pass -c)"
    for key, value in (
        ("multigrain", multigrain.__version__),
        ("built-in model", model),
        ("torch", torch.__version__),
        ("device", str(device)),
        ("default precision", precision),
        ("torch threads", str(torch.get_num_threads())),
        ("allocator", allocator),
    ):
        _echo(f"{key}: {value}")


def main() -> None:
    """Entry point: run the app, turning MultiGrainError into one line and exit status 2.

    First re-executes itself under tcmalloc/jemalloc when one is installed (allocator.py).
    """
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        reexec_with_allocator()
        from multigrain.cli import corpus, inference, search, serve  # noqa: F401

        app()  # standalone: usage errors are printed by typer with exit status 2
    except MultiGrainError as error:
        typer.echo(f"error: {error}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)
