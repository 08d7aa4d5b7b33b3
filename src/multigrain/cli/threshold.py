"""Subcommands deciding what counts as a copy: calibrate-threshold, dedup.

The library (and numpy) is imported inside each command, so that `multigrain --help` stays
fast: it loads no numpy, torch or faiss.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from multigrain.cli.app import app, echo, greater_than
from multigrain.cli.outputs import file_option
from multigrain.cli.queries import normalised, query_descriptors, search_views


@app.command("calibrate-threshold")
def calibrate_threshold_command(
    index_folder: Annotated[
        Path, typer.Option("--index", help="index folder holding the reference images")
    ],
    queries: Annotated[
        Path, typer.Option(help="`embed` output of the labelled queries, or their images with -c")
    ],
    ground_truth: Annotated[
        Path, typer.Option(help="CSV 'query_id,reference_id' (DISC21 layout; ids = file stems)")
    ],
    precision: Annotated[
        float,
        typer.Option(
            callback=greater_than(0.0, below=1.0),
            help="precision the threshold must reach, in (0, 1)",
        ),
    ] = 0.9,
    checkpoint: Annotated[
        Path | None, typer.Option("--checkpoint", "-c", help="embed image queries with it")
    ] = None,
    k: Annotated[int, typer.Option("-k", min=1, help="results scored per query")] = 10,
    background: Annotated[
        Path | None,
        typer.Option(help="`embed` output of unrelated images: calibrate normalised scores"),
    ] = None,
    beta: Annotated[float, typer.Option(min=0.0, help="weight of the background similarity")] = 1.0,
    neighbours: Annotated[
        int, typer.Option(min=1, help="background images averaged per query")
    ] = 1,
) -> None:
    """Choose the score threshold reaching --precision on labelled queries; store it.

    Every (query, top-k result) pair is labelled by the ground truth; the lowest threshold
    whose accepted pairs reach the precision (the highest recall) is written to
    INDEX/threshold.json, which `search` and `dedup --calibration` then use.
    """
    from multigrain.search.index_store import load_index
    from multigrain.search.threshold import (
        calibrate_threshold,
        check_references,
        read_ground_truth,
        save_threshold,
    )

    truth = read_ground_truth(ground_truth)
    index = load_index(index_folder)
    check_references(index.paths, truth, index_folder)
    views, names = query_descriptors(queries, checkpoint, index.metadata)
    found_paths, found_scores, descriptors = search_views(index, views, k, False)
    scores = normalised(descriptors, found_scores, background, beta, neighbours)
    calibration = calibrate_threshold(
        scores, names, found_paths, truth, target_precision=precision,
        background=background, beta=beta, neighbours=neighbours,
    )  # fmt: skip
    path = save_threshold(calibration, index_folder)
    unlisted = len(names) - calibration.num_queries
    unmatched = len(truth.queries) - calibration.num_queries
    if unlisted:
        typer.echo(f"ignored {unlisted} queries that {ground_truth} does not list", err=True)
    if unmatched:
        typer.echo(f"ignored {unmatched} queries of {ground_truth} absent from {queries}", err=True)
    scale = "raw" if background is None else f"normalised (beta {beta}, {neighbours} nn)"
    echo(
        f"threshold {calibration.threshold:.4f} on {scale} scores: precision "
        f"{calibration.precision:.3f} (target {precision}), recall {calibration.recall:.3f} "
        f"on {calibration.num_pairs} labelled pairs ({calibration.num_positive_pairs} copies, "
        f"{calibration.num_queries} queries, k={k}) -> {path}"
    )


@app.command()
def dedup(
    embeddings: Annotated[Path, typer.Argument(help="output folder of `multigrain embed`")],
    threshold: Annotated[
        float | None,
        typer.Option(
            min=-1.0,
            max=1.0,
            help="cosine similarity of a duplicate, in [-1, 1] [default: --calibration's, else "
            "the model bundle's, else 0.9]",
        ),
    ] = None,
    calibration: Annotated[
        Path | None,
        typer.Option(help="index folder (or threshold.json) from `calibrate-threshold`"),
    ] = None,
    output: Annotated[
        Path,
        typer.Option(
            "--output",
            "-o",
            callback=file_option(".json", ".csv"),
            help="groups as .json or .csv",
        ),
    ] = Path("duplicates.json"),
    html: Annotated[
        Path | None,
        typer.Option(callback=file_option(".html"), help="also write a contact sheet (.html)"),
    ] = None,
) -> None:
    """Group a collection into near-duplicate clusters (range search + connected components)."""
    import numpy as np

    from multigrain.inference.store import load_embeddings
    from multigrain.search.dedup import (
        find_duplicate_groups,
        write_contact_sheet_html,
        write_groups_csv,
        write_groups_json,
    )
    from multigrain.search.threshold import load_raw_threshold, threshold_path

    if threshold is None and calibration is not None:
        stored = load_raw_threshold(calibration)
        threshold = stored.threshold
        typer.echo(
            f"using the threshold {threshold:.4f} calibrated for precision "
            f"{stored.target_precision} ({threshold_path(calibration)})",
            err=True,
        )
    data = load_embeddings(embeddings)
    if threshold is None and data.metadata.threshold is not None:
        threshold = data.metadata.threshold
        typer.echo(
            f"using the threshold {threshold:.4f} of the model bundle {data.metadata.bundle} "
            "(90% precision on held-out copies; --threshold overrides it)",
            err=True,
        )
    groups = find_duplicate_groups(
        np.ascontiguousarray(data.descriptors, dtype=np.float32), data.paths,
        threshold=0.9 if threshold is None else threshold,
    )  # fmt: skip
    if output.suffix == ".csv":
        write_groups_csv(groups, output)
    else:
        write_groups_json(groups, output)
    if html is not None:
        write_contact_sheet_html(groups, html)
    images = sum(len(group) for group in groups)
    echo(f"{len(groups)} groups of near-duplicates ({images} images) -> {output}")
