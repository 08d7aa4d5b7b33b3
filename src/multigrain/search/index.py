"""Nearest-neighbour search over MultiGrain descriptors with faiss (inner product = cosine).

An :class:`ImageIndex` holds three things that always agree:

* a faiss index built from a factory string ("Flat", "IVF1024,PQ32", "HNSW32", ...), with
  an optional whitening pre-transform ``x -> normalise((x - mean) @ P)``;
* one stable int64 id per image (ids are never reused, so a saved id stays meaningful);
* the prepared (whitened if asked, float32) descriptors, sorted by id, for exact re-ranking
  of a compressed index's shortlist, and the image paths.

Ids: IVF indexes take ``add_with_ids`` natively and remove by id. Everything else is wrapped
in ``IndexIDMap2``, whose ``remove_ids`` is only correct for indexes that renumber their
vectors on removal like ``IndexFlat`` does -- that is why IVF is *not* wrapped. HNSW cannot
remove vectors at all: :meth:`ImageIndex.remove` says so instead of corrupting the graph.

Persistence lives in :mod:`multigrain.search.index_store`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import faiss
import numpy as np

from multigrain.runtime.errors import MultiGrainError
from multigrain.search.whitening import Whitening

logger = logging.getLogger(__name__)

NATIVE_IDS = "native"
IDMAP2 = "idmap2"


@dataclass(frozen=True)
class SearchResult:
    """k nearest images per query; missing neighbours have id -1, score -inf, path ""."""

    ids: np.ndarray  # (Q, k) int64
    scores: np.ndarray  # (Q, k) float32 inner products (cosine for unit vectors)
    paths: list[list[str]]


@dataclass
class ImageIndex:
    """Use :meth:`build` or :func:`~multigrain.search.index_store.load_index`, not `__init__`."""

    faiss_index: Any
    factory: str
    dim: int  # dimension of the descriptors given to add/search (before whitening)
    id_mapping: str  # NATIVE_IDS or IDMAP2
    ids: np.ndarray  # (N,) int64, ascending
    descriptors: np.ndarray  # (N, d) float32 prepared descriptors, row i <-> ids[i]
    paths: list[str]
    added_at: np.ndarray  # (N,) float64 unix times
    metadata: dict[str, Any] = field(default_factory=dict)
    whitening_mean: np.ndarray | None = None  # (D,) float64
    whitening_projection: np.ndarray | None = None  # (D, d) float64
    next_id: int = 0
    _row_of_path: dict[str, int] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self._row_of_path = {path: row for row, path in enumerate(self.paths)}

    # ------------------------------------------------------------------ construction
    @classmethod
    def build(
        cls,
        descriptors: np.ndarray,
        paths: Sequence[str],
        *,
        factory: str = "Flat",
        whitening: Whitening | None = None,
        metadata: dict[str, Any] | None = None,
        train_size: int = 100_000,
        seed: int = 0,
    ) -> ImageIndex:
        """Train (if the factory needs it) and fill an index.

        Args:
            descriptors: (N, D) float32 L2-normalised descriptors.
            paths: N distinct image paths.
            factory: faiss index_factory string, metric inner product.
            whitening: applied inside faiss as a pre-transform (``LinearTransform`` with
                A = P^T, b = -mean @ P, then L2 normalisation); pass it only for descriptors
                that are not whitened yet.
            metadata: model identity, s, p, whitened, ... stored with the index.
            train_size: IVF/PQ/OPQ are trained on at most this many rows, drawn with `seed`.
        """
        x = _as_matrix(descriptors, None)
        result = cls.trained(
            x, factory=factory, whitening=whitening, metadata=metadata,
            train_size=train_size, seed=seed,
        )  # fmt: skip
        result.add(x, paths)
        return result

    @classmethod
    def trained(
        cls,
        descriptors: np.ndarray,
        *,
        factory: str = "Flat",
        whitening: Whitening | None = None,
        metadata: dict[str, Any] | None = None,
        train_size: int = 100_000,
        seed: int = 0,
    ) -> ImageIndex:
        """An empty index, trained if the factory needs it on at most `train_size` of the
        (N, D) `descriptors` (drawn with `seed`); arguments as in :meth:`build`."""
        x = _as_matrix(descriptors, None)
        dim = x.shape[1]
        mean = projection = None
        if whitening is not None:
            if whitening.input_dim != dim:
                raise MultiGrainError(
                    f"the whitening takes {whitening.input_dim}-d descriptors, got {dim}-d: "
                    "use the whitening fitted for this model"
                )
            mean = whitening.mean.cpu().numpy().astype(np.float64)
            projection = whitening.projection.cpu().numpy().astype(np.float64)
        inner_dim = dim if projection is None else projection.shape[1]
        try:
            base = faiss.index_factory(inner_dim, factory, faiss.METRIC_INNER_PRODUCT)
        except RuntimeError as error:
            raise MultiGrainError(
                f"invalid faiss factory string {factory!r}: try 'Flat', 'IVF1024,Flat', "
                "'IVF1024,PQ32', 'OPQ32,IVF1024,PQ32' or 'HNSW32'"
            ) from error
        _skip_polysemous_training(base)
        index = base
        if projection is not None:
            assert mean is not None
            index = faiss.IndexPreTransform(base)
            index.prepend_transform(faiss.NormalizationTransform(inner_dim, 2.0))
            index.prepend_transform(_linear_transform(mean, projection))
        native = faiss.try_extract_index_ivf(base) is not None
        if not native:
            index = faiss.IndexIDMap2(index)
        if not index.is_trained:
            rng = np.random.default_rng(seed)
            sample = x
            if x.shape[0] > train_size:
                sample = x[np.sort(rng.choice(x.shape[0], train_size, replace=False))]
            logger.info("training %s on %d descriptors", factory, sample.shape[0])
            index.train(np.ascontiguousarray(sample))
        return cls(
            faiss_index=index,
            factory=factory,
            dim=dim,
            id_mapping=NATIVE_IDS if native else IDMAP2,
            ids=np.zeros(0, dtype=np.int64),
            descriptors=np.zeros((0, inner_dim), dtype=np.float32),
            paths=[],
            added_at=np.zeros(0, dtype=np.float64),
            metadata=dict(metadata or {}),
            whitening_mean=mean,
            whitening_projection=projection,
        )

    # ------------------------------------------------------------------ contents
    @property
    def ntotal(self) -> int:
        return int(self.faiss_index.ntotal)

    def __len__(self) -> int:
        return len(self.paths)

    def prepare(self, descriptors: np.ndarray) -> np.ndarray:
        """(N, D) -> (N, d) float32: the vectors faiss stores (whitened + normalised if asked)."""
        x = _as_matrix(descriptors, self.dim)
        if self.whitening_projection is None:
            return x
        assert self.whitening_mean is not None
        y = (x.astype(np.float64) - self.whitening_mean) @ self.whitening_projection
        norms = np.maximum(np.linalg.norm(y, axis=1, keepdims=True), 1e-12)
        return (y / norms).astype(np.float32)

    def add(self, descriptors: np.ndarray, paths: Sequence[str]) -> np.ndarray:
        """Add (N, D) descriptors for N new paths; returns their (N,) int64 ids."""
        x = _as_matrix(descriptors, self.dim)
        paths = [str(p) for p in paths]
        if len(paths) != x.shape[0]:
            raise MultiGrainError(f"{x.shape[0]} descriptors but {len(paths)} paths")
        duplicates = [p for p in paths if p in self._row_of_path]
        if len(set(paths)) != len(paths):
            duplicates += [p for p in paths if paths.count(p) > 1][:1]
        if duplicates:
            raise MultiGrainError(
                f"{len(duplicates)} path(s) already in the index (e.g. {duplicates[0]}): "
                "remove them first to replace their descriptors"
            )
        ids = np.arange(self.next_id, self.next_id + x.shape[0], dtype=np.int64)
        self.faiss_index.add_with_ids(x, ids)
        start = len(self.paths)
        self.ids = np.concatenate([self.ids, ids])
        self.descriptors = np.concatenate([self.descriptors, self.prepare(x)])
        self.paths.extend(paths)
        self.added_at = np.concatenate([self.added_at, np.full(len(paths), time.time())])
        self._row_of_path.update({p: start + i for i, p in enumerate(paths)})
        self.next_id += x.shape[0]
        return ids

    def ids_of(self, paths: Sequence[str]) -> np.ndarray:
        missing = [p for p in paths if p not in self._row_of_path]
        if missing:
            raise MultiGrainError(f"{len(missing)} path(s) not in the index, e.g. {missing[0]}")
        return self.ids[[self._row_of_path[p] for p in paths]]

    def remove(self, ids_or_paths: Sequence[int] | Sequence[str] | np.ndarray) -> int:
        """Remove images given by id or by path; returns how many were removed."""
        items = list(ids_or_paths)
        if not items:
            return 0
        if all(isinstance(item, str) for item in items):
            ids = self.ids_of([str(item) for item in items])
        else:
            ids = np.asarray(items, dtype=np.int64)
        if self.id_mapping == IDMAP2 and _is_hnsw(self.faiss_index):
            raise MultiGrainError(
                f"a {self.factory} (HNSW) index cannot remove images: rebuild it without them, "
                "or use a Flat or IVF factory if you need to remove images"
            )
        rows = self._rows(ids)
        if np.any(rows < 0):
            raise MultiGrainError(f"id {int(ids[rows < 0][0])} is not in the index")
        try:
            removed = int(self.faiss_index.remove_ids(faiss.IDSelectorBatch(ids)))
        except RuntimeError as error:  # faiss checks support before changing anything
            raise MultiGrainError(
                f"a {self.factory} index cannot remove images: rebuild it without them, "
                "or use a Flat or IVF factory"
            ) from error
        keep = np.ones(len(self.paths), dtype=bool)
        keep[rows] = False
        self.ids, self.descriptors = self.ids[keep], self.descriptors[keep]
        self.added_at = self.added_at[keep]
        self.paths = [p for p, k in zip(self.paths, keep, strict=True) if k]
        self.__post_init__()
        assert removed == int(keep.size - keep.sum()) and self.ntotal == len(self.paths)
        return removed

    # ------------------------------------------------------------------ search
    def set_search_parameters(
        self, *, nprobe: int | None = None, ef_search: int | None = None
    ) -> None:
        """IVF lists visited (nprobe) and HNSW beam width (efSearch), via faiss.ParameterSpace."""
        space = faiss.ParameterSpace()
        for name, value in (("nprobe", nprobe), ("efSearch", ef_search)):
            if value is not None:
                try:
                    space.set_index_parameter(self.faiss_index, name, value)
                except RuntimeError as error:
                    raise MultiGrainError(
                        f"{name} does not apply to a {self.factory} index"
                    ) from error

    def search(
        self,
        queries: np.ndarray,
        k: int,
        *,
        rerank: bool = False,
        rerank_factor: int = 4,
    ) -> SearchResult:
        """queries (Q, D) -> the k best images each.

        With ``rerank``, faiss returns ``rerank_factor * k`` candidates whose scores are then
        recomputed exactly from the stored float32 descriptors (undoes PQ quantisation error).
        """
        x = _as_matrix(queries, self.dim)
        if k < 1:
            raise MultiGrainError(f"k must be >= 1, got {k}")
        shortlist = k * rerank_factor if rerank else k
        scores, ids = self.faiss_index.search(x, shortlist)
        if rerank:
            scores, ids = self._rerank(self.prepare(x), ids, k)
        return SearchResult(ids=ids, scores=scores, paths=self._paths_of(ids))

    def range_search(
        self, queries: np.ndarray, threshold: float
    ) -> list[tuple[np.ndarray, np.ndarray]]:
        """queries (Q, D) -> per query (ids, scores) of every image scoring above `threshold`."""
        x = _as_matrix(queries, self.dim)
        limits, scores, ids = self.faiss_index.range_search(x, float(threshold))
        return [
            (ids[limits[q] : limits[q + 1]].astype(np.int64), scores[limits[q] : limits[q + 1]])
            for q in range(x.shape[0])
        ]

    def descriptors_of(self, ids: np.ndarray) -> np.ndarray:
        """(N,) ids -> (N, d) stored prepared descriptors."""
        rows = self._rows(np.asarray(ids, dtype=np.int64))
        if np.any(rows < 0):
            raise MultiGrainError("unknown id: it was removed or never added")
        return self.descriptors[rows]

    # ------------------------------------------------------------------ internals
    def _rows(self, ids: np.ndarray) -> np.ndarray:
        """ids -> row in self.ids (which is sorted), -1 where absent."""
        ids = np.asarray(ids, dtype=np.int64)
        if len(self.ids) == 0:
            return np.full(ids.shape, -1, dtype=np.int64)
        rows = np.minimum(np.searchsorted(self.ids, ids), len(self.ids) - 1)
        return np.where(self.ids[rows] == ids, rows, -1)

    def _rerank(
        self, queries: np.ndarray, candidates: np.ndarray, k: int
    ) -> tuple[np.ndarray, np.ndarray]:
        rows = self._rows(candidates)
        valid = rows >= 0
        vectors = self.descriptors[np.where(valid, rows, 0)]  # (Q, k', d)
        exact = np.einsum("qd,qkd->qk", queries, vectors).astype(np.float32)
        exact[~valid] = -np.inf
        order = np.argsort(-exact, axis=1, kind="stable")[:, :k]
        scores = np.take_along_axis(exact, order, axis=1)
        ids = np.take_along_axis(np.where(valid, candidates, -1), order, axis=1)
        if ids.shape[1] < k:  # fewer candidates than k
            pad = k - ids.shape[1]
            ids = np.pad(ids, ((0, 0), (0, pad)), constant_values=-1)
            scores = np.pad(scores, ((0, 0), (0, pad)), constant_values=-np.inf)
        return scores, ids

    def _paths_of(self, ids: np.ndarray) -> list[list[str]]:
        rows = self._rows(ids)
        return [[self.paths[r] if r >= 0 else "" for r in row] for row in rows]


def _linear_transform(mean: np.ndarray, projection: np.ndarray) -> Any:
    """faiss computes y = A x + b: A = P^T (d, D), b = -mean @ P (d,)."""
    size, out = projection.shape
    transform = faiss.LinearTransform(size, out, True)
    faiss.copy_array_to_vector(
        np.ascontiguousarray(projection.T, dtype=np.float32).ravel(), transform.A
    )
    faiss.copy_array_to_vector((-mean @ projection).astype(np.float32), transform.b)
    transform.is_trained = True
    return transform


def _skip_polysemous_training(index: Any) -> None:
    """IVF-PQ from index_factory trains a polysemous code ordering by default. Only a
    Hamming-threshold search (polysemous_ht, L2) uses it, and it made training ~15x slower
    (170 s instead of 11 s for IVF256,PQ64 on 5k 512-d vectors, one core)."""
    ivf = faiss.try_extract_index_ivf(index)
    concrete: Any = None if ivf is None else faiss.downcast_index(ivf)
    if hasattr(concrete, "do_polysemous_training"):
        concrete.do_polysemous_training = False


def _is_hnsw(index: Any) -> bool:
    inner = faiss.downcast_index(index.index) if hasattr(index, "index") else index
    while isinstance(inner, faiss.IndexPreTransform):
        inner = faiss.downcast_index(inner.index)
    return isinstance(inner, faiss.IndexHNSW)


def _as_matrix(x: np.ndarray, dim: int | None) -> np.ndarray:
    array = np.asarray(x)
    if array.ndim != 2:
        raise MultiGrainError(f"descriptors must be a (N, D) matrix, got shape {array.shape}")
    if dim is not None and array.shape[1] != dim:
        raise MultiGrainError(
            f"descriptors have {array.shape[1]} dimensions but the index expects {dim}: "
            "use descriptors from the model the index was built with"
        )
    if not np.isfinite(array).all():
        raise MultiGrainError("descriptors contain NaN or inf: check the model and the images")
    return np.ascontiguousarray(array, dtype=np.float32)
