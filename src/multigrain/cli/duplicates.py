"""`multigrain find-duplicates FOLDER`: a folder of photos -> duplicate groups, one command."""

from __future__ import annotations

import enum
from pathlib import Path
from typing import Annotated

import typer

from multigrain.cli.app import app, echo
from multigrain.cli.loading import MODEL_HELP, DeviceOption
from multigrain.cli.outputs import first_missing, folder_option, remove_created


class LinkScore(str, enum.Enum):
    """duplicates.folder.ScoreKind, repeated so that --help stays torch-free (a test keeps
    the two in step)."""

    NEIGHBOURHOOD = "neighbourhood"
    COSINE = "cosine"


@app.command("find-duplicates")
def find_duplicates(
    folder: Annotated[
        Path, typer.Argument(help="folder of images (searched recursively)", exists=True)
    ],
    output: Annotated[
        Path | None,
        typer.Option(
            "--output",
            "-o",
            callback=folder_option("for the groups and the contact sheet"),
            help="results folder [default: FOLDER-duplicates beside FOLDER]",
        ),
    ] = None,
    checkpoint: Annotated[Path | None, typer.Option("--checkpoint", "-c", help=MODEL_HELP)] = None,
    precision: Annotated[
        float,
        typer.Option(
            "--precision",
            min=0.5,
            max=0.999,
            help="share of true links the groups must reach, as estimated from synthetic "
            "copies of FOLDER's images",
        ),
    ] = 0.9,  # fmt: skip
    threshold: Annotated[
        float | None,
        typer.Option(
            min=-2.0, max=2.0, help="link images scoring at least this --score (skips calibrating)"
        ),
    ] = None,
    score: Annotated[
        LinkScore,
        typer.Option(
            help="link by the cosine minus what both images score with the rest of FOLDER "
            "(neighbourhood), or by the plain cosine"
        ),
    ] = LinkScore.NEIGHBOURHOOD,
    samples: Annotated[
        int, typer.Option(min=10, help="images sampled to make synthetic copies of")
    ] = 100,
    verify: Annotated[
        bool,
        typer.Option(
            "--verify/--no-verify",
            help="also match each image point for point with its nearest (finds crops and "
            "copies with text or bars)",
        ),
    ] = True,
    min_inliers: Annotated[
        int | None,
        typer.Option(
            min=3,
            help="matching points that link a pair, instead of calibrating it "
            "[default: 15, or more where unrelated pairs of FOLDER reach it]",
        ),
    ] = None,
    device: DeviceOption = "auto",
    seed: Annotated[int, typer.Option(min=0, help="seed of the calibration sample and copies")] = 0,
) -> None:
    """Exact and near-duplicate groups in FOLDER, with a threshold calibrated on FOLDER itself.

    Writes OUTPUT/groups.json (every pair's score, the threshold and how it was chosen, the
    file to keep), OUTPUT/groups.csv and OUTPUT/contact-sheet.html. Descriptors are cached
    in OUTPUT/embeddings: a rerun embeds only new files.
    """
    from multigrain.cli.loading import prepare
    from multigrain.data.listing import printable_path
    from multigrain.duplicates.folder import ScoreKind, find_duplicates_in_folder
    from multigrain.duplicates.groups import GroupKind
    from multigrain.duplicates.outputs import default_output, summary_lines, write_outputs
    from multigrain.runtime.distributed import init_distributed, shutdown_distributed
    from multigrain.runtime.errors import MultiGrainError

    if not folder.is_dir():
        raise MultiGrainError(f"{folder} is not a folder: give the folder of photos to search")
    target = output or default_output(folder)
    context = init_distributed(device)
    created = first_missing(target)  # removed if the job fails before writing anything
    try:
        prepared = prepare(checkpoint, None, None, context.device)
        report = find_duplicates_in_folder(
            folder, prepared, cache=target / "embeddings", context=context,
            target_precision=precision, threshold=threshold, num_sources=samples, seed=seed,
            score_kind=ScoreKind(score.value), verify=verify, min_inliers=min_inliers,
        )  # fmt: skip
    except BaseException:
        remove_created(created, keep="*.npz")  # shards: work a rerun continues from
        raise
    finally:
        shutdown_distributed()
    written = write_outputs(report, target)
    for line in summary_lines(report):
        echo(line)
    exact = sum(1 for group in report.groups if group.kind is GroupKind.EXACT)
    echo(
        f"{report.num_images} images: {len(report.groups)} groups ({exact} of identical files), "
        f"{report.num_duplicates} files could go"
    )
    for failure in report.failures:
        typer.echo(f"skipped {printable_path(failure.path)}: {failure.reason}", err=True)
    echo(f"-> {written['html']}  {written['json']}  {written['csv']}")
