"""Query descriptors made as an index's were, searched and (optionally) SSCD-normalised.

Shared by the `search` and `calibrate-threshold` commands.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer

from multigrain.runtime.errors import MultiGrainError

if TYPE_CHECKING:  # the library is imported inside the functions: `multigrain --help` stays fast
    import numpy as np

    from multigrain.search.descriptors import EmbeddingMetadata
    from multigrain.search.index import ImageIndex


def normalised(
    descriptors: np.ndarray,
    scores: np.ndarray,
    background: Path | None,
    beta: float | None,
    neighbours: int | None,
) -> np.ndarray:
    """Search scores (Q, k), SSCD-normalised against `background` when one is given."""
    if background is None:
        return scores
    import numpy as np

    from multigrain.inference.store import load_embeddings
    from multigrain.search.score_norm import normalize_scores

    reference = np.ascontiguousarray(load_embeddings(background).descriptors, np.float32)
    return normalize_scores(
        descriptors, scores, reference, beta=1.0 if beta is None else beta,
        neighbours=1 if neighbours is None else neighbours,
    )  # fmt: skip


def query_descriptors(
    queries: Path, checkpoint: Path | None, metadata: EmbeddingMetadata | None
) -> tuple[list[np.ndarray], list[str]]:
    """Query descriptors made as the indexed ones were -> ([views (Q, d)], names).

    One view, or two when the index's bundle searches with the mirrored query as well.
    """
    import numpy as np

    from multigrain.inference.store import load_embeddings
    from multigrain.search.descriptors import setting_differences

    if (queries / "descriptors.npy").exists():
        data = load_embeddings(queries)
        mismatch = [] if metadata is None else setting_differences(data.metadata, metadata)
        if mismatch:
            details = ", ".join(f"{difference} (the index's)" for difference in mismatch)
            raise MultiGrainError(
                f"{queries} was embedded with other settings than the index ({details}): "
                "embed the queries with the same model, --resolution, --exponent and whitening"
            )
        return [np.ascontiguousarray(data.descriptors, dtype=np.float32)], data.paths

    from PIL import ImageOps

    from multigrain.cli.loading import prepare
    from multigrain.data.listing import list_images, printable_path
    from multigrain.inference.embed import embed_in_memory
    from multigrain.runtime.distributed import resolve_device

    bundle = None if metadata is None else metadata.bundle
    if checkpoint is None and bundle is None:
        raise MultiGrainError(
            f"{queries} is not an `embed` output and the index records no model bundle: "
            "pass -c CHECKPOINT (the one that embedded the index) to embed image queries"
        )
    # queries are embedded exactly as the indexed images were: same s, p and whitening
    resolution = 500 if metadata is None else metadata.resolution
    exponent = None if metadata is None else metadata.exponent
    whitened = metadata is not None and metadata.whitened
    device = resolve_device("auto")
    prepared = prepare(
        checkpoint if checkpoint is not None else Path(str(bundle)),
        resolution,
        float(exponent) if exponent is not None else None,
        device,
        use_bundle_whitening=whitened,
    )
    if whitened and prepared.whitening is None:
        raise MultiGrainError(
            "the index holds whitened descriptors but the model has no whitening at these "
            "settings: embed the queries with `multigrain embed --whitening FILE` and search "
            "with that output"
        )
    indexed_model = "" if metadata is None else metadata.model
    indexed_hash = indexed_model.rsplit("@", 1)[-1]
    if indexed_hash and prepared.identity.rsplit("@", 1)[-1] != indexed_hash:
        raise MultiGrainError(
            f"the index was embedded with {indexed_model}, not {prepared.identity}: "
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
                typer.echo(f"skipped {printable_path(failure.path)}: {failure.reason}", err=True)
        views.append(descriptors.numpy().astype(np.float32))
    return views, names


def search_views(
    index: ImageIndex, views: list[np.ndarray], k: int, rerank: bool
) -> tuple[list[list[str]], np.ndarray, np.ndarray]:
    """Search every view; per query keep each path's best score -> (paths, scores, view 0)."""
    import numpy as np

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
