"""Scores relative to each image's own neighbourhood in its collection.

A raw cosine means different things for different images: two tiles of one landscape, or
two lab photos on the same paper, score as high as a re-encoded copy, because their whole
neighbourhood is close. The neighbourhood score subtracts how close each image's usual
neighbours are:

    mu_i\\j = mean of the k best scores of image i with the images other than i and j
    score'(i, j) = cos(i, j) - (mu_i\\j + mu_j\\i) / 2

so a pair counts only as far as it stands out from what both images score with the rest
of the collection. This is SSCD's score normalisation (Pizzi et al. 2022, eq. 3,
:mod:`multigrain.search.score_norm`) with the collection itself as the background and the
pair left out of it, so that a true copy does not lower its own score. A group of g copies
of one photo keeps g - 2 of its members in each pair's mean; with k = 10 a group of three
loses ~0.05.

Byte-identical files are one image here: the caller gives one row per distinct file.
"""

from __future__ import annotations

from dataclasses import dataclass

import faiss
import numpy as np

from multigrain.runtime.errors import MultiGrainError

#: Neighbours averaged per image (k above).
NEIGHBOURS = 10


@dataclass(frozen=True)
class Neighbourhoods:
    """Each image's k + 1 best scores with the other images of its collection.

    Attributes:
        best: (N, k + 1) float64, each row descending (k = 0: no normalisation at all).
    """

    best: np.ndarray

    @property
    def k(self) -> int:
        return int(self.best.shape[1]) - 1

    def mean_without(self, rows: np.ndarray, partner_scores: np.ndarray) -> np.ndarray:
        """rows (P,), partner_scores (P,) -> (P,) mu of each row without its partner.

        The partner is among the row's k + 1 best exactly when its score reaches the
        (k + 1)-th; then it is taken out of the sum, otherwise the (k + 1)-th is.
        """
        if self.k == 0:
            return np.zeros(len(rows))
        best = self.best[np.asarray(rows, dtype=np.int64)]
        partner = np.asarray(partner_scores, dtype=np.float64)
        total, last = best.sum(axis=1), best[:, -1]
        dropped = np.where(partner >= last, partner, last)
        return (total - dropped) / self.k

    def mean_of_best(self, rows: np.ndarray) -> np.ndarray:
        """rows (P,) -> (P,) mu of each row against a partner outside its collection (a
        query): its k best, as they stay when the partner is added and taken out again."""
        if self.k == 0:
            return np.zeros(len(rows))
        return self.best[np.asarray(rows, dtype=np.int64), : self.k].mean(axis=1)

    def normalised(self, a: np.ndarray, b: np.ndarray, scores: np.ndarray) -> np.ndarray:
        """Pairs of rows (P,), (P,) with their cosines (P,) -> (P,) neighbourhood scores."""
        scores = np.asarray(scores, dtype=np.float64)
        return scores - 0.5 * (self.mean_without(a, scores) + self.mean_without(b, scores))


def neighbourhood_size(collection_size: int, neighbours: int = NEIGHBOURS) -> int:
    """k for a collection of N images: each image needs k others besides its partner."""
    return max(0, min(neighbours, collection_size - 2))


def collection_neighbourhoods(
    descriptors: np.ndarray,
    *,
    neighbours: int = NEIGHBOURS,
    knn: tuple[np.ndarray, np.ndarray] | None = None,
) -> Neighbourhoods:
    """(N, d) unit descriptors of distinct images -> their :class:`Neighbourhoods`
    (exact inner products with ``faiss.knn``; each image's own row is left out).

    Args:
        knn: the collection searched against itself already, (scores, ids) of at least
            k + 2 columns, best first: used instead of searching again.
    """
    collection = np.ascontiguousarray(descriptors, dtype=np.float32)
    if collection.ndim != 2:
        raise MultiGrainError(f"descriptors must be (N, d), got {collection.shape}")
    k = neighbourhood_size(len(collection), neighbours)
    if k == 0:
        return Neighbourhoods(np.zeros((len(collection), 1)))
    if knn is None:
        knn = faiss.knn(collection, collection, k + 2, faiss.METRIC_INNER_PRODUCT)
    scores, ids = knn[0][:, : k + 2], knn[1][:, : k + 2]
    own = ids == np.arange(len(collection))[:, None]
    # drop each row's own entry (or, when a tie pushed it out, the last one)
    drop = np.where(own.any(axis=1), own.argmax(axis=1), k + 1)
    keep = np.ones_like(own)
    keep[np.arange(len(collection)), drop] = False
    best = scores[keep].reshape(len(collection), k + 1).astype(np.float64)
    return Neighbourhoods(best)


def query_neighbourhoods(
    queries: np.ndarray, collection: np.ndarray, *, neighbours: int = NEIGHBOURS
) -> Neighbourhoods:
    """Neighbourhoods of images outside the collection (e.g. synthetic copies), as if each
    had been added to it alone: (Q, d) queries, (N, d) collection -> k + 1 best per query.
    A copy's own source stays in its neighbourhood, as it would in the collection."""
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    collection = np.ascontiguousarray(collection, dtype=np.float32)
    k = neighbourhood_size(len(collection) + 1, neighbours)
    if k == 0:
        return Neighbourhoods(np.zeros((len(queries), 1)))
    scores, _ = faiss.knn(queries, collection, k + 1, faiss.METRIC_INNER_PRODUCT)
    return Neighbourhoods(scores.astype(np.float64))
