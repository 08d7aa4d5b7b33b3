"""Score normalisation for copy detection (SSCD, Pizzi et al. 2022, eq. 3) and thresholds.

A query that resembles many unrelated images (a plain sky, a logo) gets high scores
everywhere. SSCD subtracts its typical similarity to a background set of distractors:

    s'(q, x) = s(q, x) - beta * mean_{b in NN_n(q, B)} <q, b>

where NN_n(q, B) are the `neighbours` background descriptors most similar to q.
"""

from __future__ import annotations

import numpy as np

from multigrain.runtime.errors import MultiGrainError


def background_similarity(
    query_descriptors: np.ndarray,
    background_descriptors: np.ndarray,
    *,
    neighbours: int = 1,
    chunk_size: int = 1024,
) -> np.ndarray:
    """queries (Q, D), background (B, D) -> (Q,) mean inner product with the `neighbours`
    most similar background descriptors. Streams over queries: memory (chunk_size, B)."""
    queries = np.asarray(query_descriptors, dtype=np.float32)
    background = np.asarray(background_descriptors, dtype=np.float32)
    if queries.ndim != 2 or background.ndim != 2 or queries.shape[1] != background.shape[1]:
        raise MultiGrainError(
            f"queries {queries.shape} and background {background.shape} must be (Q, D) and "
            "(B, D) with the same D: embed the background with the same model"
        )
    if not 1 <= neighbours <= background.shape[0]:
        raise MultiGrainError(
            f"neighbours must be in [1, {background.shape[0]}] (the background size)"
        )
    out = np.empty(queries.shape[0], dtype=np.float64)
    for start in range(0, queries.shape[0], chunk_size):
        sims = queries[start : start + chunk_size] @ background.T  # (c, B)
        top = np.partition(sims, sims.shape[1] - neighbours, axis=1)[:, -neighbours:]
        out[start : start + chunk_size] = top.mean(axis=1)
    return out


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


def threshold_for_precision(
    scores: np.ndarray, is_positive: np.ndarray, target_precision: float
) -> float:
    """Lowest threshold t such that the pairs with score >= t have precision >= target.

    The lowest such t keeps the most true pairs (highest recall). Ties are never split: a
    threshold accepts every pair with that score. Raises MultiGrainError if no threshold
    reaches the target precision.
    """
    scores = np.asarray(scores, dtype=np.float64).ravel()
    positive = np.asarray(is_positive, dtype=bool).ravel()
    if scores.shape != positive.shape or scores.size == 0:
        raise MultiGrainError("scores and is_positive must be non-empty and of the same size")
    if not 0.0 < target_precision <= 1.0:
        raise MultiGrainError(f"target_precision must be in (0, 1], got {target_precision}")
    order = np.argsort(-scores, kind="stable")
    sorted_scores = scores[order]
    precision = np.cumsum(positive[order]) / np.arange(1, scores.size + 1)
    # a cut after position i is only possible where the next score is strictly lower
    cut = np.append(sorted_scores[1:] < sorted_scores[:-1], True)
    ok = np.flatnonzero(cut & (precision >= target_precision))
    if ok.size == 0:
        raise MultiGrainError(
            f"no threshold reaches precision {target_precision}: the best is "
            f"{precision[cut].max():.3f}; lower the target or improve the descriptors"
        )
    return float(sorted_scores[ok[-1]])
