"""Demonstration subcommands: the small end-to-end `demo` and the research `experiments`."""

from __future__ import annotations

import sys
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from multigrain.cli.app import app, echo, parse_enum
from multigrain.cli.outputs import folder_option
from multigrain.runtime.errors import MultiGrainError


class DemoData(str, Enum):
    """The data sets the demo and the experiments run on."""

    BUILTIN = "builtin"  # real photos from Debian packages: the full pipeline
    FASHION_MNIST = "fashion-mnist"


@app.command()
def demo(
    output_dir: Annotated[
        str,
        typer.Option(
            "--output-dir",
            "-o",
            callback=folder_option("for the run"),
            help="folder for the model, the report and the plots",
        ),
    ] = "runs/demo",
    data: Annotated[
        DemoData, typer.Option(help="builtin (real photos, the full pipeline) | fashion-mnist")
    ] = DemoData.BUILTIN,
    data_root: Annotated[
        str, typer.Option(help="where the built-in benchmark is (built there if missing)")
    ] = "data/builtin",
    steps: Annotated[
        int | None,
        typer.Option(min=1, help="training steps (default 400 builtin, 600 fashion-mnist)"),
    ] = None,
    batch_size: Annotated[
        int | None, typer.Option(min=1, help="default 48 builtin, 96 fashion")
    ] = None,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda")] = "auto",
) -> None:
    """Train a small MultiGrain model and show it against pHash and the untrained network.

    With the default built-in photos: build the benchmark, train, calibrate p*, whiten,
    index, evaluate copy detection / instances / classification, write runs/demo/report.html.
    """
    if data is DemoData.FASHION_MNIST:
        from multigrain.experiments.fashion_demo import run_demo

        report = run_demo(
            output_dir=Path(output_dir), steps=steps or 600, batch_size=batch_size or 96
        )
        echo(report.summary())
        return
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
    echo(summary.to_markdown())
    echo(f"\nreport: {Path(output_dir) / 'report.html'} (and report.md, report.json)")


@app.command()
def experiments(
    output_dir: Annotated[
        str,
        typer.Option(
            "--output-dir",
            "-o",
            callback=folder_option("for the tables and plots"),
            help="folder for experiments.html/.md/.json and the plots",
        ),
    ] = "runs/experiments",
    quick: Annotated[
        bool, typer.Option(help="toy size: checks the pipeline in seconds, not the claims")
    ] = False,
    long: Annotated[
        bool,
        typer.Option(
            help="twice the training steps (512) and learning curves on every test image; "
            "give it its own -o"
        ),
    ] = False,
    steps: Annotated[
        int | None,
        typer.Option(
            min=8,
            help="with --long: another schedule length (a multiple of 8), e.g. 1024 for "
            "runs still moving at 512; give it its own -o",
        ),
    ] = None,
    schedule: Annotated[
        str,
        typer.Option(
            help="cosine (to 0) | step (the paper's: lr x 0.1 after 1/4, 1/2 and 3/4 of the "
            "steps); step with --long only, and its own -o"
        ),
    ] = "cosine",
    fashion_mnist_root: Annotated[
        str, typer.Option(help="folder of Fashion-MNIST's four .gz files")
    ] = "/usr/share/datasets/fashion-mnist",
    finished_only: Annotated[
        bool, typer.Option(help="train nothing: report on the runs finished so far")
    ] = False,
    against: Annotated[
        list[str] | None,
        typer.Option(
            help="another study's folder (with its experiments.json): its answers are set "
            "beside these, verdict by verdict, and its runs' final figures; repeat it for "
            "several (e.g. the same design at other --steps)",
            metavar="FOLDER",
        ),
    ] = None,
) -> None:
    """The paper's research questions on Fashion-MNIST (RQ1-RQ4, whitening): tables + plots.

    Resumable: run it again with the same -o to skip finished runs and continue a half-done
    one from its checkpoint.
    """
    if quick and long:
        raise MultiGrainError("--quick and --long choose two sizes of the study: give one")
    if steps is not None and not long:
        raise MultiGrainError("--steps sets the length of the --long schedule: add --long")
    from multigrain.training.config import Schedule

    chosen = parse_enum(Schedule, schedule, "--schedule")
    if chosen is not Schedule.COSINE and not long:
        raise MultiGrainError("--schedule step is a variant of the --long study: add --long")
    from dataclasses import replace

    from multigrain.experiments.research import FULL, LONG, QUICK, run_experiments
    from multigrain.training.interrupt import TrainingInterrupted

    try:
        run_experiments(
            output_dir=Path(output_dir),
            scale=QUICK
            if quick
            else replace(LONG, steps=steps or LONG.steps, schedule=chosen.value)
            if long
            else FULL,
            fashion_mnist_root=Path(fashion_mnist_root),
            finished_only=finished_only,
            against=[Path(folder) for folder in against or []],
        )
    except TrainingInterrupted as stop:
        typer.echo(
            f"interrupted: {stop}. The study goes on when the same `multigrain experiments` "
            "command runs again (it resumes by itself)",
            err=True,
        )
        # sys.exit, not typer.Exit: main() adds its generic line to a returned 130
        sys.exit(stop.exit_status)
    echo(f"report: {Path(output_dir) / 'experiments.html'} (and experiments.md, .json)")
