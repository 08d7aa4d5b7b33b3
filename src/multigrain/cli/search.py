"""Search subcommands: index build/add/remove, search, calibrate-threshold, dedup."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer

from multigrain.cli.app import app, echo
from multigrain.runtime.errors import MultiGrainError
from multigrain.search.index_store import load_index, save_index

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

    from multigrain.inference.store import load_embeddings
    from multigrain.search.index import ImageIndex

    data = load_embeddings(embeddings)
    index = ImageIndex.build(
        np.ascontiguousarray(data.descriptors, dtype=np.float32), data.paths, factory=factory,
        metadata=asdict(data.metadata), train_size=train_size,
    )  # fmt: skip
    save_index(index, output)
    echo(f"indexed {index.ntotal} images ({factory}, {data.metadata.dim}-d) -> {output}")


@index_app.command("add")
def index_add(
    index_folder: Annotated[Path, typer.Argument(help="index folder")],
    embeddings: Annotated[Path, typer.Argument(help="output folder of `multigrain embed`")],
) -> None:
    """Add the descriptors of another `embed` output (same model, s and p)."""
    from dataclasses import asdict

    from multigrain.inference.store import load_embeddings

    index = load_index(index_folder)
    data = load_embeddings(embeddings)
    expected = {k: v for k, v in index.metadata.items() if k in asdict(data.metadata)}
    found = {k: v for k, v in asdict(data.metadata).items() if k in expected}
    if expected != found:
        raise MultiGrainError(
            f"{embeddings} was embedded with {found}, the index with {expected}: "
            "embed with the same model, --resolution and --exponent"
        )
    ids = index.add(np.ascontiguousarray(data.descriptors, dtype=np.float32), data.paths)
    save_index(index, index_folder)
    echo(f"added {len(ids)} images; the index holds {index.ntotal}")


@index_app.command("remove")
def index_remove(
    index_folder: Annotated[Path, typer.Argument(help="index folder")],
    paths: Annotated[list[str], typer.Argument(help="image paths to remove")],
) -> None:
    """Remove images (by path) from an index."""

    index = load_index(index_folder)
    removed = index.remove(paths)
    save_index(index, index_folder)
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
    beta: Annotated[
        float | None,
        typer.Option(help="weight of the background similarity [default: 1, or calibrated]"),
    ] = None,
    neighbours: Annotated[
        int | None,
        typer.Option(help="background images averaged per query [default: 1, or calibrated]"),
    ] = None,
    threshold: Annotated[
        float | None,
        typer.Option(
            help="keep results scoring at least this (after normalising) [default: the "
            "index's threshold.json from `calibrate-threshold`, if any]"
        ),
    ] = None,
    json_out: Annotated[bool, typer.Option("--json", help="one JSON object per query")] = False,
) -> None:
    """Nearest images of each query, with cosine scores.

    With --background, each query's scores become score - beta x (its mean similarity to
    its `neighbours` nearest background images), as SSCD does, so that one --threshold
    means the same for every query. Without --threshold, the threshold stored by
    `calibrate-threshold` applies, with the normalisation it was calibrated with.
    """
    from multigrain.search.threshold import load_threshold, threshold_path

    index = load_index(index_folder)
    if threshold is None and (stored := load_threshold(index_folder)) is not None:
        background, beta, neighbours = stored.scoring(background, beta, neighbours)
        threshold = stored.threshold
        typer.echo(
            f"using the threshold {threshold:.4f} calibrated for precision "
            f"{stored.target_precision} ({threshold_path(index_folder)}; "
            "--threshold overrides it)",
            err=True,
        )
    bundle_threshold = index.metadata.get("threshold")
    if threshold is None and background is None and bundle_threshold is not None:
        threshold = float(bundle_threshold)
        typer.echo(
            f"using the threshold {threshold:.4f} of the model bundle "
            f"{index.metadata.get('bundle')} (90% precision on held-out copies; "
            "--threshold overrides it)",
            err=True,
        )
    views, names = _query_descriptors(queries, checkpoint, index.metadata)
    found_paths, found_scores, descriptors = _search_views(index, views, k, rerank)
    scores = _normalised(descriptors, found_scores, background, beta, neighbours)
    for row, name in enumerate(names):
        hits = [
            {"path": path, "score": round(float(score), 5)}
            for path, score in zip(found_paths[row], scores[row], strict=True)
            if path and (threshold is None or score >= threshold)
        ]
        if json_out:
            echo(json.dumps({"query": name, "results": hits}))
        else:
            echo(name)
            for hit in hits:
                echo(f"  {hit['score']:.4f}  {hit['path']}")


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
    precision: Annotated[float, typer.Option(help="precision the threshold must reach")] = 0.9,
    checkpoint: Annotated[
        Path | None, typer.Option("--checkpoint", "-c", help="embed image queries with it")
    ] = None,
    k: Annotated[int, typer.Option("-k", help="results scored per query")] = 10,
    background: Annotated[
        Path | None,
        typer.Option(help="`embed` output of unrelated images: calibrate normalised scores"),
    ] = None,
    beta: Annotated[float, typer.Option(help="weight of the background similarity")] = 1.0,
    neighbours: Annotated[int, typer.Option(help="background images averaged per query")] = 1,
) -> None:
    """Choose the score threshold reaching --precision on labelled queries; store it.

    Every (query, top-k result) pair is labelled by the ground truth; the lowest threshold
    whose accepted pairs reach the precision (the highest recall) is written to
    INDEX/threshold.json, which `search` and `dedup --calibration` then use.
    """
    from multigrain.search.threshold import (
        calibrate_threshold,
        check_references,
        read_ground_truth,
        save_threshold,
    )

    truth = read_ground_truth(ground_truth)
    index = load_index(index_folder)
    check_references(index.paths, truth, index_folder)
    views, names = _query_descriptors(queries, checkpoint, index.metadata)
    found_paths, found_scores, descriptors = _search_views(index, views, k, False)
    scores = _normalised(descriptors, found_scores, background, beta, neighbours)
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


def _normalised(
    descriptors: np.ndarray,
    scores: np.ndarray,
    background: Path | None,
    beta: float | None,
    neighbours: int | None,
) -> np.ndarray:
    """Search scores (Q, k), SSCD-normalised against `background` when one is given."""
    if background is None:
        return scores
    from multigrain.inference.store import load_embeddings
    from multigrain.search.score_norm import normalize_scores

    reference = np.ascontiguousarray(load_embeddings(background).descriptors, np.float32)
    return normalize_scores(
        descriptors, scores, reference, beta=1.0 if beta is None else beta,
        neighbours=1 if neighbours is None else neighbours,
    )  # fmt: skip


SETTINGS_KEYS = ("model", "resolution", "exponent", "whitened", "dim")


def _query_descriptors(
    queries: Path, checkpoint: Path | None, metadata: dict[str, object]
) -> tuple[list[np.ndarray], list[str]]:
    """Query descriptors made as the indexed ones were -> ([views (Q, d)], names).

    One view, or two when the index's bundle searches with the mirrored query as well.
    """
    from multigrain.inference.store import load_embeddings

    if (queries / "descriptors.npy").exists():
        data = load_embeddings(queries)
        found = {key: getattr(data.metadata, key) for key in SETTINGS_KEYS}
        expected = {key: metadata[key] for key in SETTINGS_KEYS if key in metadata}
        mismatch = {k: (found[k], v) for k, v in expected.items() if found[k] != v}
        if mismatch:
            details = ", ".join(
                f"{k}: {a!r} vs the index's {b!r}" for k, (a, b) in mismatch.items()
            )
            raise MultiGrainError(
                f"{queries} was embedded with other settings than the index ({details}): "
                "embed the queries with the same model, --resolution, --exponent and whitening"
            )
        return [np.ascontiguousarray(data.descriptors, dtype=np.float32)], data.paths

    from PIL import ImageOps

    from multigrain.cli.inference import prepare
    from multigrain.data.listing import list_images
    from multigrain.inference.embed import embed_in_memory
    from multigrain.runtime.distributed import resolve_device

    bundle = metadata.get("bundle")
    if checkpoint is None and bundle is None:
        raise MultiGrainError(
            f"{queries} is not an `embed` output and the index records no model bundle: "
            "pass -c CHECKPOINT (the one that embedded the index) to embed image queries"
        )
    # queries are embedded exactly as the indexed images were: same s, p and whitening
    resolution = int(str(metadata.get("resolution", 500)))
    exponent = metadata.get("exponent")
    whitened = bool(metadata.get("whitened"))
    device = resolve_device("auto")
    prepared = prepare(
        checkpoint if checkpoint is not None else Path(str(bundle)),
        resolution,
        float(str(exponent)) if exponent is not None else None,
        device,
        use_bundle_whitening=whitened,
    )
    if whitened and prepared.whitening is None:
        raise MultiGrainError(
            "the index holds whitened descriptors but the model has no whitening at these "
            "settings: embed the queries with `multigrain embed --whitening FILE` and search "
            "with that output"
        )
    indexed_hash = str(metadata.get("model", "")).rsplit("@", 1)[-1]
    if indexed_hash and prepared.identity.rsplit("@", 1)[-1] != indexed_hash:
        raise MultiGrainError(
            f"the index was embedded with {metadata['model']}, not {prepared.identity}: "
            "pass the same -c as for `embed`"
        )
    paths = list_images(queries)
    transform = prepared.whitening.apply if prepared.whitening is not None else None
    views: list[np.ndarray] = []
    names: list[str] = []
    for mirror in (False, True) if prepared.query_flip else (False,):
        descriptors, kept, failures = embed_in_memory(
            prepared.model, paths, resolution=resolution, device=device, precision="auto",
            whitening=transform,
            adjust=(lambda _i, image: ImageOps.mirror(image)) if mirror else None,
        )  # fmt: skip
        if not mirror:
            names = kept
            for failure in failures:
                typer.echo(f"skipped {failure.path}: {failure.reason}", err=True)
        views.append(descriptors.numpy().astype(np.float32))
    return views, names


def _search_views(
    index: Any, views: list[np.ndarray], k: int, rerank: bool
) -> tuple[list[list[str]], np.ndarray, np.ndarray]:
    """Search every view; per query keep each path's best score -> (paths, scores, view 0)."""
    results = [index.search(view, k, rerank=rerank) for view in views]
    if len(results) == 1:
        return results[0].paths, results[0].scores, views[0]
    merged_paths: list[list[str]] = []
    merged_scores = np.full((len(views[0]), k), -np.inf, dtype=np.float32)
    for row in range(len(views[0])):
        best: dict[str, float] = {}
        for result in results:
            for path, score in zip(result.paths[row], result.scores[row], strict=True):
                if path and score > best.get(path, -np.inf):
                    best[path] = float(score)
        ranked = sorted(best.items(), key=lambda item: -item[1])[:k]
        merged_paths.append([path for path, _ in ranked] + [""] * (k - len(ranked)))
        merged_scores[row, : len(ranked)] = [score for _, score in ranked]
    return merged_paths, merged_scores, views[0]


@app.command()
def dedup(
    embeddings: Annotated[Path, typer.Argument(help="output folder of `multigrain embed`")],
    threshold: Annotated[
        float | None,
        typer.Option(
            help="cosine similarity of a duplicate [default: --calibration's, else the "
            "model bundle's, else 0.9]"
        ),
    ] = None,
    calibration: Annotated[
        Path | None,
        typer.Option(help="index folder (or threshold.json) from `calibrate-threshold`"),
    ] = None,
    output: Annotated[Path, typer.Option("--output", "-o", help="groups as .json or .csv")] = Path(
        "duplicates.json"
    ),
    html: Annotated[Path | None, typer.Option(help="also write a contact sheet")] = None,
) -> None:
    """Group a collection into near-duplicate clusters (range search + connected components)."""
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
