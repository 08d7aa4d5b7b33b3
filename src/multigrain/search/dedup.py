"""Near-duplicate groups: every pair scoring above a threshold, then connected components.

Pairs come from a range search (exact with a Flat index); groups are the connected
components (scipy.sparse.csgraph) of the "scores above threshold" graph, so a ~ b and
b ~ c put a, b, c in one group even when a and c score below the threshold.
"""

from __future__ import annotations

import csv
import html
import io
import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from multigrain.data.images import ImageDecodeError
from multigrain.data.thumbnails import thumbnail_data_uri
from multigrain.runtime.atomic import atomic_write_text
from multigrain.runtime.errors import MultiGrainError
from multigrain.search import refine
from multigrain.search.index import ImageIndex

DECODE_CHUNK = 10_000  # decoded queries at a time (20 MB for 512-d)


def component_labels(size: int, pairs: np.ndarray) -> np.ndarray:
    """pairs (P, 2) of node indices -> (size,) label of each node's connected component."""
    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    graph = coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(size, size))
    _, labels = connected_components(graph, directed=False)
    return np.asarray(labels, dtype=np.int64)


def _neighbour_rows(index: ImageIndex, threshold: float) -> list[np.ndarray]:
    """For each stored row, the rows of the images scoring above `threshold` with it.

    The stored descriptors are already prepared (whitened if the index whitens), so they
    are searched in the faiss part directly: in the base index, or, for a whitened index,
    exactly in the stored copy (as before the whitening moved out of faiss). An index
    without the float32 copy searches with its descriptors decoded from the refine codes,
    in its refine codes (approximate scores), `DECODE_CHUNK` rows at a time.
    """
    if index.has_exact_copy:
        stored = refine.stored_vectors(index.faiss_index)
        hits = refine.range_search(
            index.faiss_index, stored, threshold, exact=index.whitening is not None
        )
        return [rows for rows, _ in hits]
    found: list[np.ndarray] = []
    for start in range(0, index.ntotal, DECODE_CHUNK):
        decoded = refine.decoded_vectors(
            index.faiss_index, start, min(start + DECODE_CHUNK, index.ntotal)
        )
        hits = refine.range_search(index.faiss_index, decoded, threshold, exact=True)
        found += [rows for rows, _ in hits]
    return found


def find_duplicate_groups(
    index_or_descriptors: ImageIndex | np.ndarray,
    paths: Sequence[str] | None = None,
    *,
    threshold: float,
) -> list[list[str]]:
    """Groups (size >= 2, largest first) of images whose similarity chains exceed `threshold`.

    Args:
        index_or_descriptors: an ImageIndex (its stored descriptors are the queries) or
            (N, D) L2-normalised descriptors (an exact Flat index is built for them).
        paths: N paths for raw descriptors; ignored (may be None) for an ImageIndex.
        threshold: cosine similarity above which two images are duplicates.
    """
    if isinstance(index_or_descriptors, ImageIndex):
        index = index_or_descriptors
    else:
        if paths is None or len(paths) != len(index_or_descriptors):
            raise MultiGrainError("pass one path per descriptor")
        index = ImageIndex.build(np.asarray(index_or_descriptors), list(paths), factory="Flat")
    pairs = [
        np.stack([np.full(len(rows), row), rows], axis=1)
        for row, rows in enumerate(_neighbour_rows(index, threshold))
    ]
    edges = np.concatenate(pairs) if pairs else np.zeros((0, 2), dtype=np.int64)
    edges = edges[edges[:, 0] != edges[:, 1]]
    labels = component_labels(len(index.paths), edges)
    groups: dict[int, list[str]] = {}
    for row, label in enumerate(labels.tolist()):
        groups.setdefault(label, []).append(index.paths[row])
    result = [group for group in groups.values() if len(group) >= 2]
    return sorted(result, key=lambda group: (-len(group), group[0]))


def write_groups_json(groups: list[list[str]], path: str | os.PathLike[str]) -> Path:
    return atomic_write_text(path, json.dumps({"groups": groups}, indent=2))


def write_groups_csv(groups: list[list[str]], path: str | os.PathLike[str]) -> Path:
    """One row per image: group number, path."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["group", "path"])
    for number, group in enumerate(groups):
        writer.writerows([number, member] for member in group)
    return atomic_write_text(path, buffer.getvalue())


def _thumbnail(path: str, size: int) -> str | None:
    """A data URI of a small JPEG thumbnail, or None if the image is unreadable."""
    try:
        return thumbnail_data_uri(path, size)
    except ImageDecodeError:
        return None


def write_contact_sheet_html(
    groups: list[list[str]], path: str | os.PathLike[str], *, thumbnail_size: int = 160
) -> Path:
    """A self-contained HTML page: one row of embedded thumbnails per group."""
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>Duplicate groups</title>",
        f"<style>figure{{display:inline-block;margin:4px;width:{thumbnail_size}px;"
        "font:11px sans-serif;word-break:break-all}</style></head><body>",
        f"<h1>{len(groups)} duplicate groups</h1>",
    ]
    for number, group in enumerate(groups):
        parts.append(f"<section><h2>Group {number} ({len(group)} images)</h2>")
        for member in group:
            uri = _thumbnail(member, thumbnail_size)
            image = f"<img src='{uri}' alt=''>" if uri else "<em>unreadable</em>"
            parts.append(f"<figure>{image}<figcaption>{html.escape(member)}</figcaption></figure>")
        parts.append("</section>")
    parts.append("</body></html>")
    return atomic_write_text(path, "\n".join(parts))
