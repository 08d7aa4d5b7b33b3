"""Nearest-neighbour search over MultiGrain descriptors with faiss (inner product = cosine).

Over 300 lines because: one class whose every method keeps its parts in agreement row for
row (faiss part, ids, paths, times, whitening); the faiss mechanics are in refine.py and
the file format in index_store.py already.

An :class:`ImageIndex` holds things that always agree, row for row:

* the faiss part (:mod:`multigrain.search.refine`): an index built from a factory string
  ("IVF1024,PQ32", "HNSW32", ...) inside an ``IndexRefineFlat`` whose exact float32 copy
  of every vector re-ranks a compressed index's shortlist; a "Flat" index alone (it is
  the exact copy); or, for a factory with its own ``Refine(...)`` stage (e.g.
  "IVF4096,PQ32,Refine(PCAR144,SQ8)") or multi-bit RaBitQ codes, that index alone, with
  no float32 copy (:attr:`ImageIndex.has_exact_copy`); faiss labels are rows;
* one stable int64 id per image, ascending with the rows (ids are never reused, so a saved
  id stays meaningful), the image paths (a :class:`~.path_table.PathTable`: flat arrays,
  not a million str objects) and the times they were added;
* an optional :class:`~multigrain.search.whitening.Whitening` applied to every descriptor
  before faiss sees it (the faiss part only ever holds prepared vectors), and the
  :class:`~multigrain.search.descriptors.EmbeddingMetadata` of the indexed descriptors.

HNSW cannot remove vectors: :meth:`ImageIndex.remove` says so instead of corrupting the
graph. Persistence lives in :mod:`multigrain.search.index_store`.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import faiss
import numpy as np
import torch

from multigrain.runtime.errors import MultiGrainError
from multigrain.search import refine
from multigrain.search.descriptors import EmbeddingMetadata
from multigrain.search.path_table import PathTable
from multigrain.search.whitening import Whitening

logger = logging.getLogger(__name__)

DEFAULT_TRAIN_SIZE = 100_000


@dataclass(frozen=True)
class SearchResult:
    """k nearest images per query; missing neighbours have id -1, score -inf, path ""."""

    ids: np.ndarray  # (Q, k) int64
    scores: np.ndarray  # (Q, k) float32 inner products (cosine for unit vectors)
    paths: list[list[str]]


@dataclass
class ImageIndex:
    """Use :meth:`build` or :func:`~multigrain.search.index_store.load_index`, not `__init__`."""

    faiss_index: Any  # see the module docstring (refine.py: its three shapes); labels = rows
    factory: str
    dim: int  # dimension of the descriptors given to add/search (before whitening)
    ids: np.ndarray  # (N,) int64, ascending; row i <-> faiss label i
    paths: PathTable  # (a list given to __init__ becomes one)
    added_at: np.ndarray  # (N,) float64 unix times
    metadata: EmbeddingMetadata | None = None
    whitening: Whitening | None = None
    next_id: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.paths, PathTable):
            self.paths = PathTable(self.paths)

    # ------------------------------------------------------------------ construction
    @classmethod
    def build(
        cls,
        descriptors: np.ndarray,
        paths: Sequence[str],
        *,
        factory: str = "Flat",
        whitening: Whitening | None = None,
        metadata: EmbeddingMetadata | None = None,
        train_size: int | None = None,
        seed: int = 0,
    ) -> ImageIndex:
        """Train (if the factory needs it) and fill an index.

        Args:
            descriptors: (N, D) float32 L2-normalised descriptors.
            paths: N distinct image paths.
            factory: faiss index_factory string, metric inner product. One with its own
                ``Refine(...)`` stage or multi-bit RaBitQ codes keeps no float32 copy (see
                :mod:`.refine`). "auto": :func:`.refine.auto_factory` for N descriptors
                (Flat below 250,000, compressed RaBitQ from there).
            whitening: applied to every descriptor added or searched (``Whitening.apply``:
                whiten, then L2-normalise); pass it only for descriptors not whitened yet.
            metadata: how the descriptors were made (model identity, s, p, whitened, ...).
            train_size: IVF/PQ/OPQ are trained on at most this many rows, drawn with `seed`;
                None: 100,000, or 40 per IVF list if more (faiss wants >= 39).
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
        metadata: EmbeddingMetadata | None = None,
        train_size: int | None = None,
        seed: int = 0,
    ) -> ImageIndex:
        """An empty index, trained if the factory needs it on at most `train_size` of the
        (N, D) `descriptors` (drawn with `seed`); arguments as in :meth:`build`."""
        x = _as_matrix(descriptors, None)
        dim = x.shape[1]
        if whitening is not None and whitening.input_dim != dim:
            raise MultiGrainError(
                f"the whitening takes {whitening.input_dim}-d descriptors, got {dim}-d: "
                "use the whitening fitted for this model"
            )
        stored_dim = dim if whitening is None else whitening.output_dim
        if factory == "auto":
            factory = refine.auto_factory(x.shape[0], stored_dim)
            logger.info("factory auto: %s for %d descriptors", factory, x.shape[0])
        base = refine.new_base_index(stored_dim, factory)
        if not base.is_trained:
            if train_size is None:
                ivf = faiss.try_extract_index_ivf(base)
                train_size = max(DEFAULT_TRAIN_SIZE, 40 * (0 if ivf is None else int(ivf.nlist)))
            sample = x
            if x.shape[0] > train_size:
                rng = np.random.default_rng(seed)
                sample = x[np.sort(rng.choice(x.shape[0], train_size, replace=False))]
            logger.info("training %s on %d descriptors", factory, sample.shape[0])
            refine.train(base, _prepared(sample, whitening))
        return cls(
            faiss_index=refine.refined(base),
            factory=factory,
            dim=dim,
            ids=np.zeros(0, dtype=np.int64),
            paths=PathTable(),
            added_at=np.zeros(0, dtype=np.float64),
            metadata=metadata,
            whitening=whitening,
        )

    # ------------------------------------------------------------------ contents
    @property
    def ntotal(self) -> int:
        return int(self.faiss_index.ntotal)

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def has_exact_copy(self) -> bool:
        """Whether the index keeps a float32 copy of every descriptor (not an own-refine
        factory): what :attr:`descriptors`, :meth:`descriptors_of` and exact re-ranking need."""
        return not refine.keeps_no_copy(self.faiss_index)

    @property
    def descriptors(self) -> np.ndarray:
        """(N, d) float32 copy of the stored prepared descriptors, row i <-> ids[i]
        (MultiGrainError for an index without the copy, see :attr:`has_exact_copy`)."""
        return refine.stored_vectors(self.faiss_index).copy()

    def prepare(self, descriptors: np.ndarray) -> np.ndarray:
        """(N, D) -> (N, d) float32: the vectors faiss stores (whitened + normalised if asked)."""
        return _prepared(_as_matrix(descriptors, self.dim), self.whitening)

    def add(self, descriptors: np.ndarray, paths: Sequence[str]) -> np.ndarray:
        """Add (N, D) descriptors for N new paths; returns their (N,) int64 ids."""
        x = _as_matrix(descriptors, self.dim)
        paths = [str(p) for p in paths]
        if len(paths) != x.shape[0]:
            raise MultiGrainError(f"{x.shape[0]} descriptors but {len(paths)} paths")
        found = self.paths.rows_of(paths)
        duplicates = [paths[i] for i in np.flatnonzero(found >= 0).tolist()]
        if len(set(paths)) != len(paths):
            duplicates += [p for p, n in Counter(paths).items() if n > 1]
        if duplicates:
            raise MultiGrainError(
                f"{len(duplicates)} path(s) already in the index (e.g. {duplicates[0]}): "
                "remove them first to replace their descriptors"
            )
        ids = np.arange(self.next_id, self.next_id + x.shape[0], dtype=np.int64)
        self.faiss_index.add(_prepared(x, self.whitening))
        self.ids = np.concatenate([self.ids, ids])
        self.paths.extend(paths)
        self.added_at = np.concatenate([self.added_at, np.full(len(paths), time.time())])
        self.next_id += x.shape[0]
        return ids

    def ids_of(self, paths: Sequence[str]) -> np.ndarray:
        rows = self.paths.rows_of(paths)
        missing = np.flatnonzero(rows < 0)
        if len(missing):
            raise MultiGrainError(
                f"{len(missing)} path(s) not in the index, e.g. {paths[int(missing[0])]}"
            )
        return self.ids[rows]

    def remove(self, ids_or_paths: Sequence[int] | Sequence[str] | np.ndarray) -> int:
        """Remove images given by id or by path; returns how many were removed."""
        items = list(ids_or_paths)
        if not items:
            return 0
        if all(isinstance(item, str) for item in items):
            ids = self.ids_of([str(item) for item in items])
        else:
            ids = np.asarray(items, dtype=np.int64)
        if refine.is_hnsw(self.faiss_index):
            raise MultiGrainError(
                f"a {self.factory} (HNSW) index cannot remove images: rebuild it without them, "
                "or use a Flat or IVF factory if you need to remove images"
            )
        rows = self._rows(ids)
        if np.any(rows < 0):
            raise MultiGrainError(f"id {int(ids[rows < 0][0])} is not in the index")
        removed = refine.remove_rows(self.faiss_index, np.unique(rows), self.factory)
        keep = np.ones(len(self.paths), dtype=bool)
        keep[rows] = False
        self.ids, self.added_at = self.ids[keep], self.added_at[keep]
        self.paths = self.paths.kept(keep)
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
                        f"{name} does not apply to a {self.factory} index: leave it out, or "
                        "build the index with an IVF (nprobe) or HNSW (efSearch) factory"
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

        With ``rerank``, faiss takes ``rerank_factor * k`` candidates from the base index and
        rescores them exactly from the stored float32 copy (undoes PQ quantisation error).
        An index without the copy (:attr:`has_exact_copy`) always rescores its shortlist
        from its refine codes: ``rerank`` then only sets the shortlist to
        ``rerank_factor * k`` instead of the index's own ``OWN_REFINE_K_FACTOR * k`` (and
        does nothing for multi-bit RaBitQ, which rescores from its own extra bits).
        """
        x = self.prepare(queries)
        if k < 1:
            raise MultiGrainError(f"k must be >= 1, got {k}")
        factor = rerank_factor if rerank else None
        scores, rows = refine.search(self.faiss_index, x, k, rerank_factor=factor)
        return SearchResult(ids=self._ids_at(rows), scores=scores, paths=self._paths_of(rows))

    def range_search(
        self, queries: np.ndarray, threshold: float
    ) -> list[tuple[np.ndarray, np.ndarray]]:
        """queries (Q, D) -> per query (ids, scores) of every image scoring above `threshold`."""
        hits = refine.range_search(self.faiss_index, self.prepare(queries), threshold, exact=False)
        return [(self.ids[rows], scores) for rows, scores in hits]

    def descriptors_of(self, ids: np.ndarray) -> np.ndarray:
        """(N,) ids -> (N, d) stored prepared descriptors."""
        rows = self._rows(np.asarray(ids, dtype=np.int64))
        if np.any(rows < 0):
            raise MultiGrainError("unknown id: it was removed or never added")
        return refine.stored_vectors(self.faiss_index)[rows]

    # ------------------------------------------------------------------ internals
    def _rows(self, ids: np.ndarray) -> np.ndarray:
        """ids -> row in self.ids (which is sorted), -1 where absent."""
        ids = np.asarray(ids, dtype=np.int64)
        if len(self.ids) == 0:
            return np.full(ids.shape, -1, dtype=np.int64)
        rows = np.minimum(np.searchsorted(self.ids, ids), len(self.ids) - 1)
        return np.where(self.ids[rows] == ids, rows, -1)

    def _ids_at(self, rows: np.ndarray) -> np.ndarray:
        """faiss labels (rows, -1 for none) -> ids (-1 for none)."""
        if len(self.ids) == 0:
            return np.full(rows.shape, -1, dtype=np.int64)
        return np.where(rows >= 0, self.ids[np.maximum(rows, 0)], -1).astype(np.int64)

    def _paths_of(self, rows: np.ndarray) -> list[list[str]]:
        return [[self.paths[r] if r >= 0 else "" for r in row] for row in rows.tolist()]


def _prepared(x: np.ndarray, whitening: Whitening | None) -> np.ndarray:
    """(N, D) float32 -> (N, d) float32, whitened and L2-normalised when a whitening is given."""
    if whitening is None:
        return x
    tensor = torch.from_numpy(x if x.flags.writeable else x.copy())  # torch wants writable memory
    return np.ascontiguousarray(whitening.apply(tensor).numpy(), dtype=np.float32)


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
