"""The faiss side of an ImageIndex: an approximate index plus the exact copy that re-ranks it.

Both live in one ``faiss.IndexRefineFlat``: its ``base_index`` is built from a factory string
("Flat", "IVF1024,PQ32", "HNSW32", ...; metric inner product), its ``refine_index`` is an
``IndexFlat`` holding every vector in float32. A search with re-ranking asks the base index
for ``k_factor * k`` candidates and rescores them exactly from the flat copy, in C++.

Labels are row numbers 0..N-1, the same in both parts (IndexRefine requires it): row i is
the i-th vector added and not removed. IndexRefine itself cannot remove vectors (faiss 1.15,
facebookresearch/faiss#3832), so :func:`remove_rows` removes from both parts: the flat copy
and flat-code indexes (PQ, SQ, LSH) compact their rows in order, which keeps row numbers
consistent; an IVF index keeps the labels it was given, so the labels of the rows after a
removed one are shifted down. HNSW cannot remove vectors at all.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import faiss
import numpy as np

from multigrain.runtime.errors import MultiGrainError

FACTORY_EXAMPLES = "'Flat', 'IVF1024,Flat', 'IVF1024,PQ32', 'OPQ32,IVF1024,PQ32' or 'HNSW32'"


def new_base_index(dim: int, factory: str) -> Any:
    """An empty faiss index of (·, dim) vectors from a factory string, metric inner product."""
    try:
        base = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as error:
        if "multiple of the number of subquantizers" in str(error):
            # whitened descriptors are d + 1 long (the constant coordinate): e.g. 257
            raise MultiGrainError(
                f"{factory!r} splits each {dim}-d descriptor into sub-vectors, which needs "
                f"{dim} to be a multiple of their number: put an OPQ rotation to a multiple "
                f"in front, e.g. 'OPQ32_{dim - dim % 32 or 32},{factory}'"
            ) from error
        raise MultiGrainError(
            f"invalid faiss factory string {factory!r}: try {FACTORY_EXAMPLES}"
        ) from error
    _skip_polysemous_training(base)
    return base


def refined(base: Any, vectors: np.ndarray | None = None) -> Any:
    """`base` (trained) inside an IndexRefineFlat; `vectors` (base.ntotal, d) float32 are the
    exact copies of what `base` holds, row for row (None for an empty base)."""
    if vectors is None:
        return faiss.IndexRefineFlat(base)
    assert vectors.shape == (base.ntotal, base.d) and vectors.dtype == np.float32
    return faiss.IndexRefineFlat(base, faiss.swig_ptr(np.ascontiguousarray(vectors)))


def stored_vectors(index: Any) -> np.ndarray:
    """(N, d) float32 view of the exact copy. Valid until the index next changes: read it,
    don't keep it (an add may move the memory)."""
    exact: Any = faiss.downcast_index(index.refine_index)  # an IndexFlat
    if exact.ntotal == 0:
        return np.zeros((0, exact.d), dtype=np.float32)
    return faiss.rev_swig_ptr(exact.get_xb(), exact.ntotal * exact.d).reshape(-1, exact.d)


def search(
    index: Any, queries: np.ndarray, k: int, *, rerank_factor: int | None
) -> tuple[np.ndarray, np.ndarray]:
    """queries (Q, d) -> (scores (Q, k) float32, rows (Q, k) int64; -1 and -inf where missing).

    With `rerank_factor`, the base index's ``rerank_factor * k`` best are rescored exactly;
    without, the base index's own (possibly quantised) scores are returned.
    """
    if rerank_factor is None:
        scores, rows = index.base_index.search(queries, k)
    else:
        parameters = faiss.IndexRefineSearchParameters()
        parameters.k_factor = float(rerank_factor)
        scores, rows = index.search(queries, k, params=parameters)
    scores[rows < 0] = -np.inf
    return scores, rows


def range_search(
    index: Any, queries: np.ndarray, threshold: float, *, exact: bool
) -> list[tuple[np.ndarray, np.ndarray]]:
    """queries (Q, d) -> per query (rows, scores) of every vector scoring above `threshold`,
    from the exact copy (`exact`) or from the base index."""
    searched = faiss.downcast_index(index.refine_index) if exact else index.base_index
    limits, scores, rows = searched.range_search(queries, float(threshold))
    return [
        (rows[limits[q] : limits[q + 1]].astype(np.int64), scores[limits[q] : limits[q + 1]])
        for q in range(queries.shape[0])
    ]


def remove_rows(index: Any, rows: np.ndarray, factory: str) -> int:
    """Remove the vectors at `rows` (distinct, existing) from both parts; the rows after them
    move up. Nothing changes if the base index cannot remove vectors (MultiGrainError)."""
    selector = faiss.IDSelectorBatch(np.asarray(rows, dtype=np.int64))
    base = index.base_index
    try:
        removed = int(base.remove_ids(selector))
    except RuntimeError as error:  # faiss checks support before changing anything
        raise MultiGrainError(
            f"a {factory} index cannot remove images: rebuild it without them, "
            "or use a Flat or IVF factory"
        ) from error
    ivf = faiss.try_extract_index_ivf(base)
    if ivf is not None:
        gone = np.sort(np.asarray(rows, dtype=np.int64))
        map_ivf_labels(ivf, lambda labels: labels - np.searchsorted(gone, labels))
    exact = faiss.downcast_index(index.refine_index)
    exact.remove_ids(selector)
    index.ntotal = exact.ntotal
    assert base.ntotal == exact.ntotal == index.ntotal, "the two parts of the index disagree"
    return removed


def map_ivf_labels(ivf: Any, relabel: Callable[[np.ndarray], np.ndarray]) -> None:
    """Replace every label ``l`` stored in the IVF lists by ``relabel(l)`` (int64 arrays)."""
    lists = faiss.downcast_InvertedLists(ivf.invlists)
    if not isinstance(lists, faiss.ArrayInvertedLists):
        raise MultiGrainError(
            f"cannot renumber the {type(lists).__name__} lists of this IVF index: "
            "rebuild it with `multigrain index build`"
        )
    for list_no in range(ivf.nlist):
        size = lists.list_size(list_no)
        if size:
            # ArrayInvertedLists keeps each list's labels in one plain array: rewrite them
            # where they are, without copying the codes that update_entries would also take
            labels = faiss.rev_swig_ptr(lists.get_ids(list_no), size)
            labels[:] = relabel(labels.copy())


def unwrap(index: Any) -> Any:
    """The index inside a faiss wrapper (IndexIDMap2, IndexPreTransform), as its own copy
    (serialised and read back, so that no two Python objects own it)."""
    return faiss.deserialize_index(faiss.serialize_index(faiss.downcast_index(index.index)))


def is_hnsw(index: Any) -> bool:
    """Whether the base index is (a pre-transformed) HNSW graph."""
    inner = faiss.downcast_index(index.base_index)
    while isinstance(inner, faiss.IndexPreTransform):
        inner = faiss.downcast_index(inner.index)
    return isinstance(inner, faiss.IndexHNSW)


def _skip_polysemous_training(index: Any) -> None:
    """IVF-PQ from index_factory trains a polysemous code ordering by default. Only a
    Hamming-threshold search (polysemous_ht, L2) uses it, and it made training ~15x slower
    (170 s instead of 11 s for IVF256,PQ64 on 5k 512-d vectors, one core)."""
    ivf = faiss.try_extract_index_ivf(index)
    concrete: Any = None if ivf is None else faiss.downcast_index(ivf)
    if hasattr(concrete, "do_polysemous_training"):
        concrete.do_polysemous_training = False
