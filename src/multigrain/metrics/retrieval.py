"""Retrieval metrics: AP (plain and trapezoid, with junk), mAP, mP@k, UKBench N-S score.

Plain functions over numpy arrays; every one also accepts CPU/GPU torch tensors and Python
sequences (:mod:`multigrain.metrics.arrays`).
"""

from __future__ import annotations

from collections.abc import Sequence, Set

import numpy as np
import torch

from multigrain.metrics.arrays import ArrayLike, index_array, to_numpy
from multigrain.runtime.errors import MultiGrainError


def rank_of_match(similarity: torch.Tensor, match: torch.Tensor) -> torch.Tensor:
    """similarity (Q, N), match (Q,) column of each query's single positive -> (Q,) 1-based rank.

    Ties count against the query (a tie with the positive ranks the positive lower), so an
    embedding that maps everything to one point scores badly rather than perfectly.
    """
    positive = similarity.gather(1, match[:, None])
    return (similarity >= positive).sum(dim=1)


def single_positive_map(ranks: torch.Tensor) -> float:
    """Mean average precision when every query has exactly one positive: mean of 1/rank."""
    return (1.0 / ranks.double()).mean().item()


def average_precision(ranked_positive: ArrayLike, num_positives: int) -> float:
    """Non-interpolated average precision of one ranked list.

    ranked_positive (N,) bool: whether the item at each rank (best first) is a positive.
    AP = (1 / num_positives) * sum over retrieved positives of precision at their rank, where
    precision at 1-based rank n is (positives among the first n) / n (Manning et al.,
    "Introduction to Information Retrieval", 2008, §8.4). Positives never retrieved
    contribute 0, so the result is 0 when none is retrieved. With num_positives == 0 AP is
    undefined and this returns nan, which `mean_average_precision` skips.
    """
    is_positive = to_numpy(ranked_positive).astype(bool).reshape(-1)
    if num_positives == 0:
        return float("nan")
    hits = np.flatnonzero(is_positive)
    if num_positives < 0 or hits.size > num_positives:
        raise MultiGrainError(
            f"num_positives={num_positives} but the list holds {hits.size} positives: "
            "pass the total number of positives for the query (at least those retrieved)"
        )
    precisions = np.arange(1, hits.size + 1) / (hits + 1)
    return float(precisions.sum() / num_positives)


def average_precision_trapezoid(ranks_of_positives: ArrayLike, num_positives: int) -> float:
    """Average precision with the trapezoid rule of the INRIA Holidays and revisitop scripts.

    ranks_of_positives (P,): 0-based ranks of the retrieved positives in the result list, junk
    already removed. Recall grows by 1 / num_positives at each positive; the precision over that
    step is the mean of the precision just before and just after it. For the k-th positive
    (0-based) at rank r: p0 = k / r (1 when r == 0), p1 = (k + 1) / (r + 1), and
    AP = sum (p0 + p1) / 2 / num_positives (Jégou et al., ECCV 2008, Holidays `eval_holidays`;
    Radenović et al., CVPR 2018, revisitop `compute_ap`). Missing positives contribute 0;
    num_positives == 0 gives nan.
    """
    ranks = np.sort(index_array(ranks_of_positives)).astype(np.float64)
    if num_positives == 0:
        return float("nan")
    if num_positives < ranks.size or (ranks.size and ranks[0] < 0):
        raise MultiGrainError(
            f"got {ranks.size} ranks (min {ranks.min() if ranks.size else None}) for "
            f"num_positives={num_positives}: ranks must be >= 0, one per retrieved positive"
        )
    if np.any(np.diff(ranks) == 0):
        raise MultiGrainError("two positives share a rank: ranks_of_positives must be distinct")
    k = np.arange(ranks.size, dtype=np.float64)
    before = np.where(ranks > 0, k / np.maximum(ranks, 1.0), 1.0)
    after = (k + 1) / (ranks + 1)
    return float(((before + after) / 2).sum() / num_positives)


def _ranks_without_junk(
    ranking: ArrayLike, positives: ArrayLike | Set[int], junk: ArrayLike | Set[int]
) -> tuple[np.ndarray, int]:
    """-> (0-based ranks of the positives once junk is dropped from the ranking, num_positives)."""
    ranked = index_array(ranking)
    positive_ids = np.unique(index_array(positives))
    junk_ids = np.unique(index_array(junk))
    if np.intersect1d(positive_ids, junk_ids).size:
        raise MultiGrainError(
            "an image is both a positive and junk for one query: make them disjoint"
        )
    kept = ranked[~np.isin(ranked, junk_ids)]
    return np.flatnonzero(np.isin(kept, positive_ids)), positive_ids.size


def average_precision_with_junk(
    ranking: ArrayLike, positives: ArrayLike | Set[int], junk: ArrayLike | Set[int] = ()
) -> float:
    """Trapezoid AP of one query after removing junk images from its ranking.

    ranking (N,): database indices, best first. Junk images are deleted from the list, so
    anything ranked after them moves up, then `average_precision_trapezoid` is applied with
    num_positives = number of distinct positives (revisitop `compute_map`, Radenović et al.
    2018; INRIA Holidays passes the query itself as junk). Positives missing from a truncated
    ranking count as misses. No positives -> nan.
    """
    ranks, num_positives = _ranks_without_junk(ranking, positives, junk)
    return average_precision_trapezoid(ranks, num_positives)


def _check_queries(
    rankings: ArrayLike,
    positives: Sequence[ArrayLike | Set[int]],
    junk: Sequence[ArrayLike | Set[int]] | None,
) -> tuple[np.ndarray, Sequence[ArrayLike | Set[int]]]:
    ranked = to_numpy(rankings)
    if ranked.ndim != 2:
        raise MultiGrainError(f"rankings must be (Q, N) database indices, got shape {ranked.shape}")
    junk_lists: Sequence[ArrayLike | Set[int]] = [()] * len(ranked) if junk is None else junk
    if not len(positives) == len(junk_lists) == len(ranked):
        raise MultiGrainError(
            f"{len(ranked)} rankings but {len(positives)} positive lists and "
            f"{len(junk_lists)} junk lists: give one of each per query"
        )
    return ranked, junk_lists


def mean_average_precision(
    rankings: ArrayLike,
    positives: Sequence[ArrayLike | Set[int]],
    junk: Sequence[ArrayLike | Set[int]] | None = None,
) -> float:
    """rankings (Q, N) database indices best first, one positive (and junk) list per query -> mAP.

    Mean over queries of `average_precision_with_junk`. Queries without positives (AP nan) are
    skipped, as revisitop does; nan if no query has a positive.
    """
    ranked, junk_lists = _check_queries(rankings, positives, junk)
    aps = np.array(
        [
            average_precision_with_junk(r, p, j)
            for r, p, j in zip(ranked, positives, junk_lists, strict=True)
        ],
        dtype=np.float64,
    )
    valid = aps[~np.isnan(aps)]
    return float(valid.mean()) if valid.size else float("nan")


def precision_at_k(
    rankings: ArrayLike,
    positives: Sequence[ArrayLike | Set[int]],
    junk: Sequence[ArrayLike | Set[int]] | None = None,
    *,
    ks: Sequence[int] = (1, 5, 10),
    truncate_at_last_positive: bool = False,
) -> dict[int, float]:
    """rankings (Q, N), per-query positives/junk -> {k: mean precision at k} (mP@k).

    Junk is removed first. Default (the common definition): P@k = (positives among the first k
    kept results) / k; slots beyond the end of a short list count as non-positives.
    With truncate_at_last_positive=True it follows revisitop `compute_map` instead: with
    n = 1-based rank of the last retrieved positive, k' = min(k, n) and
    P@k = (positives among the first k') / k', so a query with fewer than k positives can
    still score 1. Queries without positives are skipped; a query whose positives are all
    missing from the ranking scores 0.
    """
    ranked, junk_lists = _check_queries(rankings, positives, junk)
    if any(k < 1 for k in ks):
        raise MultiGrainError(f"ks must be positive cut-offs, got {list(ks)}")
    per_query: list[list[float]] = []
    for ranking, positive_ids, junk_ids in zip(ranked, positives, junk_lists, strict=True):
        ranks, num_positives = _ranks_without_junk(ranking, positive_ids, junk_ids)
        if num_positives == 0:
            continue
        row = []
        for k in ks:
            cutoff = min(k, int(ranks.max()) + 1) if truncate_at_last_positive and ranks.size else k
            row.append(float(np.count_nonzero(ranks < cutoff)) / cutoff)
        per_query.append(row)
    if not per_query:
        return {k: float("nan") for k in ks}
    means = np.mean(np.array(per_query), axis=0)
    return {k: float(m) for k, m in zip(ks, means, strict=True)}


def revisitop_precision_at_k(
    rankings: ArrayLike,
    positives: Sequence[ArrayLike | Set[int]],
    junk: Sequence[ArrayLike | Set[int]] | None = None,
    *,
    ks: Sequence[int] = (1, 5, 10),
) -> dict[int, float]:
    """mP@k as Revisited Oxford/Paris report it (revisitop ``compute_map``): the precision
    at k' = min(k, rank of the last positive), junk removed; see :func:`precision_at_k`."""
    return precision_at_k(rankings, positives, junk, ks=ks, truncate_at_last_positive=True)


def ukbench_score(rankings: ArrayLike, groups: ArrayLike, query_indices: ArrayLike) -> float:
    """UKBench N-S score: rankings (Q, N >= 4) database indices, groups (N,), query_indices (Q,).

    Mean over queries of the number of images from the query's group among its top 4 results
    (Nistér & Stewénius, CVPR 2006). query_indices gives each query's database index, used to
    look up its group. As in the standard protocol the query stays in the database, so it
    normally ranks first and counts: the score is in [0, 4], 4 when perfect.
    """
    ranked = to_numpy(rankings).astype(np.int64)
    group = index_array(groups)
    queries = index_array(query_indices)
    if ranked.ndim != 2 or ranked.shape[1] < 4 or ranked.shape[0] != queries.size:
        raise MultiGrainError(
            f"rankings must be (Q, N >= 4) with Q = len(query_indices) = {queries.size}, "
            f"got {ranked.shape}: keep at least the top 4 results per query"
        )
    same_group = group[ranked[:, :4]] == group[queries][:, None]
    return float(same_group.sum(axis=1).mean()) if queries.size else float("nan")
