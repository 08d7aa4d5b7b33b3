"""Search subcommands: index build/add/remove, search (calibrate-threshold, dedup: threshold.py).

The library (and numpy) is imported inside each command, so that `multigrain --help` stays
fast: it loads no numpy, torch or faiss.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from multigrain.cli.app import app, echo
from multigrain.cli.outputs import folder_option, removed_on_failure
from multigrain.cli.queries import normalised, query_descriptors, search_views
from multigrain.cli.stored_paths import absolute_paths, indexed_forms
from multigrain.runtime.errors import MultiGrainError

index_app = typer.Typer(no_args_is_help=True, help="Build and edit a FAISS index of descriptors.")
app.add_typer(index_app, name="index")


@index_app.command("build")
def index_build(
    embeddings: Annotated[Path, typer.Argument(help="output folder of `multigrain embed`")],
    output: Annotated[
        Path,
        typer.Option(
            "--output",
            "-o",
            callback=folder_option("for the index"),
            help="index folder to write",
        ),
    ],
    factory: Annotated[
        str,
        typer.Option(
            help="faiss factory: Flat, IVF1024,PQ32, HNSW32 ...; one with its own "
            "Refine(...) stage or RaBitQ2-9 codes keeps no float32 copy; auto: Flat below "
            "250,000 descriptors, PCAR{3d/8},IVF{~4 sqrt N},RaBitQ6 from there"
        ),
    ] = "auto",
    train_size: Annotated[
        int | None,
        typer.Option(
            min=1, help="descriptors sampled to train IVF/PQ [default: 100,000 or 40 a list]"
        ),
    ] = None,
) -> None:
    """Index the descriptors of an `embed` output (inner product = cosine)."""
    import numpy as np

    from multigrain.inference.store import load_embeddings
    from multigrain.search.index import ImageIndex
    from multigrain.search.index_lock import lock_for_edit
    from multigrain.search.index_store import POINTER, save_index

    # the lock first: a server holding this folder would overwrite the new index. A new
    # folder that failed before its first save (no CURRENT pointer) goes, LOCK and all.
    with removed_on_failure(output, keep=POINTER), lock_for_edit(output):
        data = load_embeddings(embeddings)
        index = ImageIndex.build(
            np.ascontiguousarray(data.descriptors, dtype=np.float32),
            absolute_paths(data.paths, embeddings), factory=factory, metadata=data.metadata,
            train_size=train_size,
        )  # fmt: skip
        save_index(index, output)
    echo(f"indexed {index.ntotal} images ({index.factory}, {data.metadata.dim}-d) -> {output}")


@index_app.command("add")
def index_add(
    index_folder: Annotated[Path, typer.Argument(help="index folder")],
    embeddings: Annotated[Path, typer.Argument(help="output folder of `multigrain embed`")],
) -> None:
    """Add the descriptors of another `embed` output (same model, s and p)."""
    from multigrain.search.index_lock import lock_for_edit

    with lock_for_edit(index_folder, create=False):
        _add_embeddings(index_folder, embeddings)


def _add_embeddings(index_folder: Path, embeddings: Path) -> None:
    """index add, under the index's lock."""
    import numpy as np

    from multigrain.inference.store import load_embeddings
    from multigrain.search.descriptors import INT8_FIX, only_int8_differs
    from multigrain.search.index_store import load_index, save_index

    index = load_index(index_folder)
    data = load_embeddings(embeddings)
    expected = {} if index.metadata is None else index.metadata.as_dict()
    found = {k: v for k, v in data.metadata.as_dict().items() if k in expected}
    if index.metadata is not None and not data.metadata.matches(index.metadata):
        fix = "embed with the same model, --resolution and --exponent"
        if only_int8_differs(data.metadata, index.metadata):
            fix = INT8_FIX  # the same settings, another int8 quantisation
        raise MultiGrainError(
            f"{embeddings} was embedded with {found}, the index with {expected}: {fix}"
        )
    paths = absolute_paths(data.paths, embeddings)
    ids = index.add(np.ascontiguousarray(data.descriptors, dtype=np.float32), paths)
    save_index(index, index_folder)
    echo(f"added {len(ids)} images; the index holds {index.ntotal}")


@index_app.command("remove")
def index_remove(
    index_folder: Annotated[Path, typer.Argument(help="index folder")],
    paths: Annotated[list[str], typer.Argument(help="image paths to remove")],
) -> None:
    """Remove images (by path, as indexed or relative to the current folder)."""
    from multigrain.search.index_lock import lock_for_edit
    from multigrain.search.index_store import load_index, save_index

    with lock_for_edit(index_folder, create=False):
        index = load_index(index_folder)
        removed = index.remove(indexed_forms(paths, index.paths))
        save_index(index, index_folder)
    echo(f"removed {removed} images; the index holds {index.ntotal}")


@app.command()
def search(
    index_folder: Annotated[Path, typer.Argument(help="index folder")],
    queries: Annotated[Path, typer.Argument(help="`embed` output folder, or images with -c")],
    checkpoint: Annotated[
        Path | None, typer.Option("--checkpoint", "-c", help="embed image queries with it")
    ] = None,
    k: Annotated[int, typer.Option("-k", min=1, help="neighbours per query")] = 10,
    rerank: Annotated[
        bool,
        typer.Option(
            help="re-score the shortlist exactly (an index with its own Refine stage "
            "always re-scores, from its codes)"
        ),
    ] = False,
    nprobe: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="IVF lists visited: more is slower and finds more [default: the index's: "
            "128 for auto's RaBitQ, 64 with a Refine stage, else 1]",
        ),
    ] = None,
    background: Annotated[
        Path | None,
        typer.Option(help="`embed` output of unrelated images: normalise scores against it"),
    ] = None,
    beta: Annotated[
        float | None,
        typer.Option(
            min=0.0, help="weight of the background similarity [default: 1, or calibrated]"
        ),
    ] = None,
    neighbours: Annotated[
        int | None,
        typer.Option(
            min=1, help="background images averaged per query [default: 1, or calibrated]"
        ),
    ] = None,
    threshold: Annotated[
        float | None,
        typer.Option(
            help="keep results scoring at least this (after normalising) [default: the "
            "index's threshold.json from `calibrate-threshold`, if any]"
        ),
    ] = None,
    show_all: Annotated[
        bool,
        typer.Option(
            "--all", help="keep the k results below the threshold too, marked as no match"
        ),
    ] = False,
    json_out: Annotated[bool, typer.Option("--json", help="one JSON object per query")] = False,
) -> None:
    """Nearest images of each query, with cosine scores and a match flag.

    With --background, each query's scores become score - beta x (its mean similarity to
    its `neighbours` nearest background images), as SSCD does, so that one --threshold
    means the same for every query. Without --threshold, the threshold stored by
    `calibrate-threshold` applies, with the normalisation it was calibrated with, else the
    model bundle's. Results at or above the threshold are matches ("match": true, and
    "MATCH" in the text output); --all keeps the others too ("match": false).
    """
    from multigrain.data.listing import printable_path
    from multigrain.search.index_store import load_index
    from multigrain.search.threshold import load_threshold, threshold_path

    index = load_index(index_folder)
    if nprobe is not None:
        index.set_search_parameters(nprobe=nprobe)
    if threshold is None and (stored := load_threshold(index_folder)) is not None:
        background, beta, neighbours = stored.scoring(background, beta, neighbours)
        threshold = stored.threshold
        typer.echo(
            f"using the threshold {threshold:.4f} calibrated for precision "
            f"{stored.target_precision} ({threshold_path(index_folder)}; "
            "--threshold overrides it)",
            err=True,
        )
    bundle = index.metadata
    if threshold is None and background is None and bundle and bundle.threshold is not None:
        threshold = bundle.threshold
        typer.echo(
            f"using the threshold {threshold:.4f} of the model bundle {bundle.bundle} "
            "(90% precision on held-out copies; --threshold overrides it)",
            err=True,
        )
    views, names = query_descriptors(queries, checkpoint, index.metadata)
    found_paths, found_scores, descriptors = search_views(index, views, k, rerank)
    scores = normalised(descriptors, found_scores, background, beta, neighbours)
    for row, name in enumerate(names):
        hits = [
            {
                "path": path,
                "score": round(float(score), 5),
                "match": None if threshold is None else bool(score >= threshold),
            }
            for path, score in zip(found_paths[row], scores[row], strict=True)
            if path and (threshold is None or show_all or score >= threshold)
        ]
        if json_out:
            echo(json.dumps({"query": name, "threshold": threshold, "results": hits}))
        else:  # one line per query and per result, whatever the names hold
            echo(printable_path(name))
            for hit in hits:
                mark = "" if threshold is None else "MATCH  " if hit["match"] else "       "
                echo(f"  {hit['score']:.4f}  {mark}{printable_path(str(hit['path']))}")
