"""The faiss side of an ImageIndex: an approximate index plus the stage that re-ranks it.

Two shapes, both a ``faiss.IndexRefine`` (``base_index`` makes a shortlist, ``refine_index``
rescores it; metric inner product):

* most factories ("Flat", "IVF1024,PQ32", "HNSW32", ...) become the ``base_index`` of an
  ``IndexRefineFlat`` whose ``refine_index`` is an ``IndexFlat`` holding every vector in
  float32: a search with re-ranking asks the base for ``k_factor * k`` candidates and
  rescores them exactly, in C++. The copy costs d x 4 bytes a vector (2 GB at 1M x 512).
* a factory with its own refine stage, e.g. "IVF4096,PQ32x4fs,Refine(PCAR160,SQ8)"
  (:func:`has_own_refine`), is used as it is: it keeps *no* float32 copy; its shortlist
  is rescored from the compressed refine codes (here 160 bytes a vector), always (the
  4-bit fast-scan scores alone are too coarse to rank by).

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

# Search defaults of an own-refine index (faiss' own, nprobe 1 and k_factor 1, would rank
# by the shortlist codes alone). At 1M x 512 (docs/benchmarks/search_compressed_1m.json)
# IVF4096,PQ32,Refine(PCAR144,SQ8) reached R@1 0.768 / 0.834 / 0.852 at k_factor 10 / 25 /
# 50 with nprobe 64: 25 x k is most of the gain for 6 % fewer queries/s than 10 x k.
OWN_REFINE_K_FACTOR = 25
OWN_REFINE_NPROBE = 64  # IVF lists visited by default (saved with the index)
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
    if has_own_refine(base):  # its defaults (k_factor 1, nprobe 1) would waste the codes
        own: Any = base  # an IndexRefine
        own.k_factor = float(OWN_REFINE_K_FACTOR)
        ivf = faiss.try_extract_index_ivf(base)
        if ivf is not None:
            ivf.nprobe = OWN_REFINE_NPROBE
    return base


def has_own_refine(index: Any) -> bool:
    """Whether `index` (a factory's index, or an ImageIndex's faiss part) re-ranks from its
    own compressed refine stage, i.e. holds no float32 copy of the vectors."""
    index = faiss.downcast_index(index)
    return isinstance(index, faiss.IndexRefine) and not isinstance(index, faiss.IndexRefineFlat)


def refined(base: Any, vectors: np.ndarray | None = None) -> Any:
    """`base` (trained) inside an IndexRefineFlat; `vectors` (base.ntotal, d) float32 are the
    exact copies of what `base` holds, row for row (None for an empty base). A factory with
    its own refine stage is returned as it is (it takes no `vectors`)."""
    if has_own_refine(base):
        if vectors is not None:
            raise MultiGrainError(
                "this index keeps no float32 copy of its descriptors: it takes none"
            )
        return base
    if vectors is None:
        return faiss.IndexRefineFlat(base)
    assert vectors.shape == (base.ntotal, base.d) and vectors.dtype == np.float32
    return faiss.IndexRefineFlat(base, faiss.swig_ptr(np.ascontiguousarray(vectors)))


def stored_vectors(index: Any) -> np.ndarray:
    """(N, d) float32 view of the exact copy. Valid until the index next changes: read it,
    don't keep it (an add may move the memory). An own-refine index has none (an error)."""
    if has_own_refine(index):
        raise MultiGrainError(
            "this index keeps no float32 copy of its descriptors (its factory has its own "
            "Refine(...) stage): use the descriptors of "
            "the `embed` output, or rebuild the index with --factory Flat (or another factory "
            "without Refine) to keep them"
        )
    exact: Any = faiss.downcast_index(index.refine_index)  # an IndexFlat
    if exact.ntotal == 0:
        return np.zeros((0, exact.d), dtype=np.float32)
    return faiss.rev_swig_ptr(exact.get_xb(), exact.ntotal * exact.d).reshape(-1, exact.d)


def search(
    index: Any, queries: np.ndarray, k: int, *, rerank_factor: int | None
) -> tuple[np.ndarray, np.ndarray]:
    """queries (Q, d) -> (scores (Q, k) float32, rows (Q, k) int64; -1 and -inf where missing).

    With `rerank_factor`, the base index's ``rerank_factor * k`` best are rescored exactly;
    without, the base index's own (possibly quantised) scores are returned. An own-refine
    index always rescores from its refine codes, ``rerank_factor * k`` candidates if given,
    else its own ``k_factor * k``.
    """
    if rerank_factor is None and has_own_refine(index):
        scores, rows = index.search(queries, k)
    elif rerank_factor is None:
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
    from the exact copy (`exact`) or from the base index. An own-refine index scans its
    refine codes (the fast-scan scores are too coarse to threshold)."""
    exact = exact or has_own_refine(index)
    searched = faiss.downcast_index(index.refine_index) if exact else index.base_index
    limits, scores, rows = searched.range_search(queries, float(threshold))
    return [
        (rows[limits[q] : limits[q + 1]].astype(np.int64), scores[limits[q] : limits[q + 1]])
        for q in range(queries.shape[0])
    ]


def decoded_vectors(index: Any, start: int, stop: int) -> np.ndarray:
    """(stop - start, d) float32: rows start..stop-1 as stored, decoded from the refine codes
    of an own-refine index (an approximation), or copied from the exact copy."""
    if not has_own_refine(index):
        return stored_vectors(index)[start:stop].copy()
    return np.asarray(index.refine_index.reconstruct_n(start, stop - start), dtype=np.float32)


def remove_rows(index: Any, rows: np.ndarray, factory: str) -> int:
    """Remove the vectors at `rows` (distinct, existing) from both parts; the rows after them
    move up. Nothing changes if the base index cannot remove vectors (MultiGrainError)."""
    selector = faiss.IDSelectorBatch(np.asarray(rows, dtype=np.int64))
    base = index.base_index
    ivf = faiss.try_extract_index_ivf(base)
    if ivf is not None:
        _relabelable_lists(ivf)  # before anything changes
    try:
        removed = int(base.remove_ids(selector))
    except RuntimeError as error:  # faiss checks support before changing anything
        raise MultiGrainError(
            f"a {factory} index cannot remove images: rebuild it without them, "
            "or use a Flat or IVF factory"
        ) from error
    if ivf is not None:
        gone = np.sort(np.asarray(rows, dtype=np.int64))
        map_ivf_labels(ivf, lambda labels: labels - np.searchsorted(gone, labels))
    refiner = faiss.downcast_index(index.refine_index)  # the exact copy or the refine codes
    refiner.remove_ids(selector)
    index.ntotal = refiner.ntotal
    assert base.ntotal == refiner.ntotal == index.ntotal, "the two parts of the index disagree"
    return removed


def map_ivf_labels(ivf: Any, relabel: Callable[[np.ndarray], np.ndarray]) -> None:
    """Replace every label ``l`` stored in the IVF lists by ``relabel(l)`` (int64 arrays)."""
    lists = _relabelable_lists(ivf)
    for list_no in range(ivf.nlist):
        size = lists.list_size(list_no)
        if size:
            # Array- and BlockInvertedLists (fast-scan) keep each list's labels in one plain
            # array: rewrite them where they are, without touching the codes
            labels = faiss.rev_swig_ptr(lists.get_ids(list_no), size)
            labels[:] = relabel(labels.copy())


def _relabelable_lists(ivf: Any) -> Any:
    """The IVF's inverted lists, if their labels can be rewritten in place (else an error)."""
    lists = faiss.downcast_InvertedLists(ivf.invlists)
    block: Any = faiss.BlockInvertedLists  # type: ignore[attr-defined]  # not in the stubs
    if not isinstance(lists, faiss.ArrayInvertedLists | block):
        raise MultiGrainError(
            f"cannot renumber the {type(lists).__name__} lists of this IVF index: "
            "rebuild it with `multigrain index build`"
        )
    return lists


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


def train(index: Any, sample: np.ndarray) -> None:
    """Train `index` on (n, d) float32 `sample`, with every PCA stage in it *uncentred*.

    faiss' PCAMatrix subtracts the training mean, and an inner product of centred vectors
    ranks x by q.x - m.x (the mean m differs per x), not by q.x. Trained on the sample and
    its negation, the mean is zero and the PCA keeps the directions of largest second moment,
    the projection that loses the least of q.x (inner product stays inner product).
    """
    for pca in _pca_stages(index):
        if not pca.is_trained:
            pca.train(np.concatenate([sample, -sample]))
    index.train(sample)


def _pca_stages(index: Any) -> list[Any]:
    """Every PCAMatrix of an IndexPreTransform anywhere in `index` (refine stages included)."""
    index = faiss.downcast_index(index)
    found: list[Any] = []
    if isinstance(index, faiss.IndexPreTransform):
        chain: Any = index.chain  # a faiss vector, not a list
        transforms = [faiss.downcast_VectorTransform(chain.at(i)) for i in range(chain.size())]
        found += [t for t in transforms if isinstance(t, faiss.PCAMatrix)]
        found += _pca_stages(index.index)
    elif isinstance(index, faiss.IndexRefine):
        found += _pca_stages(index.base_index) + _pca_stages(index.refine_index)
    return found
