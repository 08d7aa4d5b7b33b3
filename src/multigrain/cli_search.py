"""Search subcommands: index build/add/remove, search, dedup."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import numpy as np
import typer

from multigrain.cli_common import app, echo
from multigrain.errors import MultiGrainError

index_app = typer.Typer(no_args_is_help=True, help="Build and edit a FAISS index of descriptors.")
app.add_typer(index_app, name="index")


@index_app.command("build")
def index_build(
    embeddings: Annotated[Path, typer.Argument(help="output folder of `multigrain embed`")],
    output: Annotated[Path, typer.Option("--output", "-o", help="index folder to write")],
    factory: Annotated[
        str, typer.Option(help="faiss factory: Flat, IVF1024,PQ32, HNSW32 ...")
    ] = "Flat",
    train_size: Annotated[int, typer.Option(help="descriptors sampled to train IVF/PQ")] = 100_000,
) -> None:
    """Index the descriptors of an `embed` output (inner product = cosine)."""
    from dataclasses import asdict

    from multigrain.embedding_store import load_embeddings
    from multigrain.index import ImageIndex

    data = load_embeddings(embeddings)
    index = ImageIndex.build(
        np.ascontiguousarray(data.descriptors, dtype=np.float32), data.paths, factory=factory,
        metadata=asdict(data.metadata), train_size=train_size,
    )  # fmt: skip
    index.save(output)
    echo(f"indexed {index.ntotal} images ({factory}, {data.metadata.dim}-d) -> {output}")


@index_app.command("add")
def index_add(
    index_folder: Annotated[Path, typer.Argument(help="index folder")],
    embeddings: Annotated[Path, typer.Argument(help="output folder of `multigrain embed`")],
) -> None:
    """Add the descriptors of another `embed` output (same model, s and p)."""
    from dataclasses import asdict

    from multigrain.embedding_store import load_embeddings
    from multigrain.index import ImageIndex

    index = ImageIndex.load(index_folder)
    data = load_embeddings(embeddings)
    expected = {k: v for k, v in index.metadata.items() if k in asdict(data.metadata)}
    found = {k: v for k, v in asdict(data.metadata).items() if k in expected}
    if expected != found:
        raise MultiGrainError(
            f"{embeddings} was embedded with {found}, the index with {expected}: "
            "embed with the same model, --resolution and --exponent"
        )
    ids = index.add(np.ascontiguousarray(data.descriptors, dtype=np.float32), data.paths)
    index.save(index_folder)
    echo(f"added {len(ids)} images; the index holds {index.ntotal}")


@index_app.command("remove")
def index_remove(
    index_folder: Annotated[Path, typer.Argument(help="index folder")],
    paths: Annotated[list[str], typer.Argument(help="image paths to remove")],
) -> None:
    """Remove images (by path) from an index."""
    from multigrain.index import ImageIndex

    index = ImageIndex.load(index_folder)
    removed = index.remove(paths)
    index.save(index_folder)
    echo(f"removed {removed} images; the index holds {index.ntotal}")


@app.command()
def search(
    index_folder: Annotated[Path, typer.Argument(help="index folder")],
    queries: Annotated[Path, typer.Argument(help="`embed` output folder, or images with -c")],
    checkpoint: Annotated[
        Path | None, typer.Option("--checkpoint", "-c", help="embed image queries with it")
    ] = None,
    k: Annotated[int, typer.Option("-k", help="neighbours per query")] = 10,
    rerank: Annotated[bool, typer.Option(help="re-score the shortlist exactly")] = False,
    background: Annotated[
        Path | None,
        typer.Option(help="`embed` output of unrelated images: normalise scores against it"),
    ] = None,
    beta: Annotated[float, typer.Option(help="weight of the background similarity")] = 1.0,
    threshold: Annotated[
        float | None, typer.Option(help="keep results scoring at least this (after normalising)")
    ] = None,
    json_out: Annotated[bool, typer.Option("--json", help="one JSON object per query")] = False,
) -> None:
    """Nearest images of each query, with cosine scores.

    With --background, each query's scores become score - beta x (its similarity to its
    nearest background image), as SSCD does, so that one --threshold means the same for
    every query.
    """
    from multigrain.embedding_store import load_embeddings
    from multigrain.index import ImageIndex
    from multigrain.score_norm import normalize_scores

    index = ImageIndex.load(index_folder)
    descriptors, names = _query_descriptors(queries, checkpoint, index.metadata)
    result = index.search(descriptors, k, rerank=rerank)
    scores = result.scores
    if background is not None:
        reference = np.ascontiguousarray(load_embeddings(background).descriptors, np.float32)
        scores = normalize_scores(descriptors, scores, reference, beta=beta)
    for row, name in enumerate(names):
        hits = [
            {"path": path, "score": round(float(score), 5)}
            for path, score in zip(result.paths[row], scores[row], strict=True)
            if path and (threshold is None or score >= threshold)
        ]
        if json_out:
            echo(json.dumps({"query": name, "results": hits}))
        else:
            echo(name)
            for hit in hits:
                echo(f"  {hit['score']:.4f}  {hit['path']}")


def _query_descriptors(
    queries: Path, checkpoint: Path | None, metadata: dict[str, object]
) -> tuple[np.ndarray, list[str]]:
    from multigrain.embedding_store import load_embeddings

    if (queries / "descriptors.npy").exists():
        data = load_embeddings(queries)
        return np.ascontiguousarray(data.descriptors, dtype=np.float32), data.paths
    if checkpoint is None:
        raise MultiGrainError(
            f"{queries} is not an `embed` output: pass -c CHECKPOINT to embed image queries"
        )

    from multigrain.cli_inference import prepare_model
    from multigrain.collection import list_images
    from multigrain.distributed import resolve_device
    from multigrain.embed import embed_in_memory

    # queries are embedded exactly as the indexed images were: same s and p
    resolution = int(str(metadata.get("resolution", 500)))
    exponent = metadata.get("exponent")
    device = resolve_device("auto")
    model = prepare_model(
        checkpoint, resolution, float(str(exponent)) if exponent is not None else None, device
    )
    descriptors, paths, failures = embed_in_memory(
        model, list_images(queries), resolution=resolution, device=device
    )
    for failure in failures:
        typer.echo(f"skipped {failure.path}: {failure.reason}", err=True)
    return descriptors.numpy().astype(np.float32), paths


@app.command()
def dedup(
    embeddings: Annotated[Path, typer.Argument(help="output folder of `multigrain embed`")],
    threshold: Annotated[float, typer.Option(help="cosine similarity of a duplicate")] = 0.9,
    output: Annotated[Path, typer.Option("--output", "-o", help="groups as .json or .csv")] = Path(
        "duplicates.json"
    ),
    html: Annotated[Path | None, typer.Option(help="also write a contact sheet")] = None,
) -> None:
    """Group a collection into near-duplicate clusters (range search + connected components)."""
    from multigrain.dedup import (
        find_duplicate_groups,
        write_contact_sheet_html,
        write_groups_csv,
        write_groups_json,
    )
    from multigrain.embedding_store import load_embeddings

    data = load_embeddings(embeddings)
    groups = find_duplicate_groups(
        np.ascontiguousarray(data.descriptors, dtype=np.float32), data.paths, threshold=threshold
    )
    if output.suffix == ".csv":
        write_groups_csv(groups, output)
    else:
        write_groups_json(groups, output)
    if html is not None:
        write_contact_sheet_html(groups, html)
    images = sum(len(group) for group in groups)
    echo(f"{len(groups)} groups of near-duplicates ({images} images) -> {output}")
