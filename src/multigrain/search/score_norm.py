"""Score normalisation for copy detection (SSCD, Pizzi et al. 2022, eq. 3).

A query that resembles many unrelated images (a plain sky, a logo) gets high scores
everywhere. SSCD subtracts its typical similarity to a background set of distractors:

    s'(q, x) = s(q, x) - beta * mean_{b in NN_n(q, B)} <q, b>

where NN_n(q, B) are the `neighbours` background descriptors most similar to q. The
threshold reaching a target precision is :func:`multigrain.metrics.threshold_for_precision`.
"""

from __future__ import annotations

import faiss
import numpy as np

from multigrain.runtime.errors import MultiGrainError


def background_similarity(
    query_descriptors: np.ndarray,
    background_descriptors: np.ndarray,
    *,
    neighbours: int = 1,
) -> np.ndarray:
    """queries (Q, D), background (B, D) -> (Q,) mean inner product with the `neighbours`
    most similar background descriptors (exact: ``faiss.knn``, which works in blocks)."""
    queries = np.ascontiguousarray(query_descriptors, dtype=np.float32)
    background = np.ascontiguousarray(background_descriptors, dtype=np.float32)
    if queries.ndim != 2 or background.ndim != 2 or queries.shape[1] != background.shape[1]:
        raise MultiGrainError(
            f"queries {queries.shape} and background {background.shape} must be (Q, D) and "
            "(B, D) with the same D: embed the background with the same model"
        )
    if not 1 <= neighbours <= background.shape[0]:
        raise MultiGrainError(
            f"neighbours must be in [1, {background.shape[0]}] (the background size)"
        )
    similarities, _ = faiss.knn(queries, background, neighbours, faiss.METRIC_INNER_PRODUCT)
    return similarities.mean(axis=1).astype(np.float64)


def normalize_scores(
    query_descriptors: np.ndarray,
    scores: np.ndarray,
    background_descriptors: np.ndarray,
    *,
    beta: float = 1.0,
    neighbours: int = 1,
) -> np.ndarray:
    """scores (Q, k) of queries (Q, D) -> (Q, k) ``scores - beta * background_similarity``."""
    scores = np.asarray(scores)
    if scores.ndim != 2 or scores.shape[0] != np.shape(query_descriptors)[0]:
        raise MultiGrainError(f"scores must be (Q, k) with one row per query, got {scores.shape}")
    bias = background_similarity(query_descriptors, background_descriptors, neighbours=neighbours)
    return (scores - beta * bias[:, None]).astype(scores.dtype)
