"""The faiss side of an ImageIndex: an approximate index plus the stage that re-ranks it.

Over 300 lines because: every operation (search, range search, decode, remove) has to
treat the three shapes below alike, and keeping their shape checks in one place is what
keeps them in step.

Three shapes (metric inner product); the first two are a ``faiss.IndexRefine``
(``base_index`` makes a shortlist, ``refine_index`` rescores it):

* most factories ("IVF1024,PQ32", "HNSW32", ...) become the ``base_index`` of an
  ``IndexRefineFlat`` whose ``refine_index`` is an ``IndexFlat`` holding every vector in
  float32: a search with re-ranking asks the base for ``k_factor * k`` candidates and
  rescores them exactly, in C++. The copy costs d x 4 bytes a vector (2 GB at 1M x 512).
  "Flat" is its own exact copy: used as it is, no IndexRefine (:func:`is_one_part`).
* a factory with its own refine stage, e.g. "IVF4096,PQ32x4fs,Refine(PCAR160,SQ8)"
  (:func:`has_own_refine`), is used as it is: it keeps *no* float32 copy; its shortlist
  is rescored from the compressed refine codes (here 160 bytes a vector), always (the
  4-bit fast-scan scores alone are too coarse to rank by).
* a factory whose codes are multi-bit RaBitQ, e.g. "PCAR192,IVF4096,RaBitQ6"
  (:func:`is_self_refining`), is used as it is too, and is no IndexRefine: each IVF list is
  scanned with the 1-bit codes and the candidates that can still win are rescored with the
  extra bits, inside faiss -- a refine stage of its own, from the same codes (here 164
  bytes a vector). :func:`auto_factory` picks it for large collections.

An index of the last two shapes *keeps no float32 copy* (:func:`keeps_no_copy`).
Labels are row numbers 0..N-1, the same in both parts: row i is the i-th vector added and
not removed. IndexRefine cannot remove vectors (faiss 1.15, facebookresearch/faiss#3832):
:func:`remove_rows` removes from both parts (flat copies and flat codes compact their rows
in order; IVF labels after a removed row are shifted down). HNSW cannot remove at all.
"""

from __future__ import annotations

import math
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
# A RaBitQ IVF visits more by default: at 1M x 512 (docs/benchmarks/search_rabitq_1m.json,
# PCAR192,IVF4096,RaBitQ6) recall@1 was 0.948 / 0.956 / 0.960 at nprobe 64 / 96 / 128,
# 2,760 / 1,785 / 1,542 queries/s (two faiss threads).
SELF_REFINING_NPROBE = 128
# `index build --factory auto`: Flat below this many descriptors (exact; 0.5 GB at 250k x
# 512), the compressed factory of auto_factory from it on.
AUTO_COMPRESSED_FROM = 250_000
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
    if keeps_no_copy(base):
        ivf = faiss.try_extract_index_ivf(base)
        if ivf is not None:
            ivf.nprobe = SELF_REFINING_NPROBE if is_self_refining(base) else OWN_REFINE_NPROBE
    return base


def auto_factory(count: int, dim: int) -> str:
    """The factory of `index build --factory auto` for `count` descriptors of `dim` dims.

    Below AUTO_COMPRESSED_FROM: "Flat" (exact). From it on: an IVF of multi-bit RaBitQ
    codes of the descriptors projected on their 3/8 x dim directions of largest second
    moment (uncentred PCA, then a random rotation), 6 bits a coordinate: 164 bytes a vector
    at 512-d, ~9 % of Flat's memory with the ids and the IVF centroids. ~4 sqrt(count) IVF
    lists, a power of two (4096 at 1M) with >= 39 descriptors each. Measured on the hard
    synthetic 1M set of benchmarks/search_scale.py: docs/benchmarks/search_rabitq_1m.json.
    """
    if count < AUTO_COMPRESSED_FROM:
        return "Flat"
    kept = max(8, (3 * dim // 8) // 8 * 8)
    return f"PCAR{kept},IVF{ivf_lists(count, 2 ** round(math.log2(4 * math.sqrt(count))))},RaBitQ6"


def ivf_lists(count: int, wanted: int) -> int:
    """`wanted` IVF lists capped at the largest power of two with >= 39 of `count` training
    rows a list (faiss warns below 39)."""
    return min(wanted, 2 ** int(math.log2(max(count // 39, 1))))


def has_own_refine(index: Any) -> bool:
    """Whether `index` (a factory's index, or an ImageIndex's faiss part) re-ranks from its
    own compressed refine stage, i.e. holds no float32 copy of the vectors."""
    index = faiss.downcast_index(index)
    return isinstance(index, faiss.IndexRefine) and not isinstance(index, faiss.IndexRefineFlat)


def is_self_refining(index: Any) -> bool:
    """Whether `index` ranks with multi-bit RaBitQ codes (refined from their own extra bits)."""
    inner = faiss.downcast_index(index)
    while isinstance(inner, faiss.IndexPreTransform):
        inner = faiss.downcast_index(inner.index)
    kinds = (
        faiss.IndexIVFRaBitQ, faiss.IndexIVFRaBitQFastScan,
        faiss.IndexRaBitQ, faiss.IndexRaBitQFastScan,
    )  # fmt: skip
    quantizer: Any = getattr(inner, "rabitq", None)  # nb_bits is not in faiss' stubs
    return isinstance(inner, kinds) and int(quantizer.nb_bits) > 1


def keeps_no_copy(index: Any) -> bool:
    """Whether `index` ranks from its own compressed codes and holds no float32 copy: a
    factory with a Refine(...) stage, or multi-bit RaBitQ (see the module docstring)."""
    return has_own_refine(index) or is_self_refining(index)


def is_flat(index: Any) -> bool:
    """Whether `index` is a plain IndexFlat: the exact vectors themselves."""
    return isinstance(faiss.downcast_index(index), faiss.IndexFlat)


def is_one_part(index: Any) -> bool:
    """Whether an ImageIndex's faiss part is the factory's index itself (Flat, multi-bit
    RaBitQ), not a shortlist and a refine stage (an IndexRefine)."""
    return not isinstance(faiss.downcast_index(index), faiss.IndexRefine)


def has_separate_copy(index: Any) -> bool:
    """Whether `index` is an IndexRefineFlat: a float32 copy beside the factory's index."""
    return isinstance(faiss.downcast_index(index), faiss.IndexRefineFlat)


def saved_part(index: Any) -> Any:
    """What index.faiss holds: all of `index`, less the float32 copy of an IndexRefineFlat
    (saved apart, as descriptors.npy)."""
    wrapper: Any = faiss.downcast_index(index)  # an IndexRefineFlat when there is a copy
    return wrapper.base_index if has_separate_copy(index) else index


def refined(base: Any, vectors: np.ndarray | None = None) -> Any:
    """`base` (trained) inside an IndexRefineFlat; `vectors` (base.ntotal, d) float32 are the
    exact copies of what `base` holds, row for row (None for an empty base). A Flat base
    (its own exact copy: a second one would double the memory) and a factory that keeps
    no copy are returned as they are."""
    if is_flat(base):
        return base
    if keeps_no_copy(base):
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
    don't keep it (an add may move the memory). An index that keeps none: an error."""
    if keeps_no_copy(index):
        raise MultiGrainError(
            "this index keeps no float32 copy of its descriptors (its factory has its own "
            "Refine(...) stage or multi-bit RaBitQ codes): use the descriptors of "
            "the `embed` output, or rebuild the index with --factory Flat (or another factory "
            "without Refine or RaBitQ2-9) to keep them"
        )
    exact: Any = faiss.downcast_index(index if is_flat(index) else index.refine_index)
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
    else its own ``k_factor * k``; a multi-bit RaBitQ index always rescores from its extra
    bits (`rerank_factor` does not apply: faiss keeps whichever candidates can still win).
    """
    if is_one_part(index) or (rerank_factor is None and has_own_refine(index)):
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
    refine codes (the fast-scan scores are too coarse to threshold), a multi-bit RaBitQ
    index its own codes."""
    exact = exact or has_own_refine(index)
    if is_one_part(index):  # Flat, RaBitQ
        searched = index
    else:
        searched = faiss.downcast_index(index.refine_index) if exact else index.base_index
    limits, scores, rows = searched.range_search(queries, float(threshold))
    return [
        (rows[limits[q] : limits[q + 1]].astype(np.int64), scores[limits[q] : limits[q + 1]])
        for q in range(queries.shape[0])
    ]


def decoded_vectors(index: Any, start: int, stop: int) -> np.ndarray:
    """(stop - start, d) float32: rows start..stop-1 as stored, decoded from the refine codes
    of an own-refine index (an approximation), or copied from the exact copy. A RaBitQ
    index cannot: faiss 1.15 decodes its 1-bit part only (cosine 0.86 to the vector stored
    in tests/test_index_rabitq.py, whatever the bits), far too coarse to search with."""
    if is_self_refining(index):
        raise MultiGrainError(
            "a RaBitQ index cannot give back the descriptors it holds (faiss decodes their "
            "1-bit part only): find duplicates from the `embed` output's descriptors "
            "(`multigrain dedup` does), or index with --factory Flat or a Refine(...) one"
        )
    if not keeps_no_copy(index):
        return stored_vectors(index)[start:stop].copy()
    return np.asarray(index.refine_index.reconstruct_n(start, stop - start), dtype=np.float32)


def remove_rows(index: Any, rows: np.ndarray, factory: str) -> int:
    """Remove the vectors at `rows` (distinct, existing) from both parts; the rows after them
    move up. Nothing changes if the base index cannot remove vectors (MultiGrainError)."""
    selector = faiss.IDSelectorBatch(np.asarray(rows, dtype=np.int64))
    base = index if is_one_part(index) else index.base_index
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
    if base is index:  # Flat, RaBitQ: one part only
        return removed
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
    inner = faiss.downcast_index(index if is_one_part(index) else index.base_index)
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
