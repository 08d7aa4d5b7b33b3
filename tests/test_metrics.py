"""Metrics against hand-computed cases (arithmetic in the comments), brute-force loops,
scikit-learn where the definitions coincide, and the official evaluation loops (revisitop,
INRIA Holidays) where they differ."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn import metrics as sk

from multigrain.metrics import (
    ThresholdChoice,
    average_precision,
    average_precision_trapezoid,
    average_precision_with_junk,
    mean_average_precision,
    micro_average_precision,
    precision_at_k,
    rank_of_match,
    recall_at_precision,
    revisitop_precision_at_k,
    single_positive_map,
    threshold_for_precision,
    top_k_accuracies,
    top_k_accuracy,
    ukbench_score,
)
from multigrain.runtime.errors import MultiGrainError


# --- Existing classification / single-positive helpers (behaviour pinned) ------------------
def test_top_k_accuracy_and_accuracies() -> None:
    logits = torch.tensor([[0.1, 0.9, 0.0], [0.8, 0.1, 0.5]])
    labels = torch.tensor([1, 2])
    # Row 0: label 1 is best. Row 1: label 2 is second best.
    assert top_k_accuracy(logits, labels, 1) == 0.5
    assert top_k_accuracies(logits, labels, ks=(1, 2)) == {1: 0.5, 2: 1.0}


def test_rank_of_match_ties_count_against_query() -> None:
    similarity = torch.tensor([[0.5, 0.5, 0.1], [0.9, 0.2, 0.3]])
    ranks = rank_of_match(similarity, torch.tensor([0, 2]))
    assert ranks.tolist() == [2, 2]
    assert single_positive_map(ranks) == pytest.approx(0.5)


# --- Plain AP ------------------------------------------------------------------------------
def test_average_precision_hand_cases() -> None:
    # [T, F, T], 2 positives: precisions 1/1 and 2/3 -> (1 + 2/3) / 2 = 5/6.
    assert average_precision(np.array([True, False, True]), 2) == pytest.approx(5 / 6)
    # [F, T], 3 positives (2 never retrieved): (1/2) / 3 = 1/6.
    assert average_precision(np.array([False, True]), 3) == pytest.approx(1 / 6)
    # Torch input works the same.
    assert average_precision(torch.tensor([True, False, True]), 2) == pytest.approx(5 / 6)


def test_average_precision_no_positives() -> None:
    assert average_precision(np.array([False, False]), 2) == 0.0
    assert math.isnan(average_precision(np.array([False, False]), 0))
    with pytest.raises(MultiGrainError, match="num_positives"):
        average_precision(np.array([True, True]), 1)


def _average_precision_loop(is_positive: list[bool], num_positives: int) -> float:
    total, found = 0.0, 0
    for position, hit in enumerate(is_positive, start=1):
        if hit:
            found += 1
            total += found / position
    return total / num_positives


def test_average_precision_matches_brute_force() -> None:
    rng = np.random.default_rng(0)
    for _ in range(200):
        length = int(rng.integers(1, 30))
        is_positive = rng.random(length) < rng.random()
        num_positives = int(is_positive.sum()) + int(rng.integers(0, 3))
        if num_positives == 0:
            continue
        expected = _average_precision_loop(is_positive.tolist(), num_positives)
        assert average_precision(is_positive, num_positives) == pytest.approx(expected)


# --- Trapezoid AP and junk -----------------------------------------------------------------
def test_trapezoid_hand_cases() -> None:
    # Ranks [0, 2], 2 positives:
    #   k=0, r=0: p0 = 1, p1 = 1/1 = 1        -> (1 + 1) / 2 = 1
    #   k=1, r=2: p0 = 1/2, p1 = 2/3          -> (1/2 + 2/3) / 2 = 7/12
    #   AP = (1 + 7/12) / 2 = 19/24 (plain AP of the same list is 20/24).
    assert average_precision_trapezoid(np.array([0, 2]), 2) == pytest.approx(19 / 24)
    # Ranks [1], 1 positive: p0 = 0/1 = 0, p1 = 1/2 -> AP = 1/4.
    assert average_precision_trapezoid([1], 1) == pytest.approx(1 / 4)
    # Order of the given ranks does not matter.
    assert average_precision_trapezoid([2, 0], 2) == pytest.approx(19 / 24)
    assert math.isnan(average_precision_trapezoid([], 0))
    assert average_precision_trapezoid([], 3) == 0.0


def test_junk_removal_moves_positives_up() -> None:
    ranking = np.array([5, 7, 3, 9])
    # Without junk: positive 3 at rank 2 -> p0 = 0, p1 = 1/3 -> 1/6.
    assert average_precision_with_junk(ranking, {3}) == pytest.approx(1 / 6)
    # Junk 7 removed: list [5, 3, 9], positive at rank 1 -> p0 = 0, p1 = 1/2 -> 1/4.
    assert average_precision_with_junk(ranking, {3}, {7}) == pytest.approx(1 / 4)


def test_holidays_query_as_junk() -> None:
    # Query 0 retrieves itself first; as junk it is dropped and its positive 4 ranks 0 -> AP 1.
    assert average_precision_with_junk([0, 4, 2], [4], [0]) == pytest.approx(1.0)
    # Kept in, positive 4 sits at rank 1 -> 1/4.
    assert average_precision_with_junk([0, 4, 2], [4]) == pytest.approx(1 / 4)


def test_all_junk_and_empty_queries() -> None:
    # Everything retrieved is junk; the positive is never retrieved -> 0.
    assert average_precision_with_junk([1, 2], [3], [1, 2]) == 0.0
    assert math.isnan(average_precision_with_junk([1, 2], [], [1, 2]))
    with pytest.raises(MultiGrainError, match="disjoint"):
        average_precision_with_junk([1, 2], [1], [1])


def _trapezoid_loop(ranking: list[int], positives: set[int], junk: set[int]) -> float:
    """Walk the list, skipping junk, and add each trapezoid as recall steps up."""
    ap, found, position = 0.0, 0, 0
    for item in ranking:
        if item in junk:
            continue
        if item in positives:
            before = found / position if position > 0 else 1.0
            found += 1
            after = found / (position + 1)
            ap += (before + after) / 2 / len(positives)
        position += 1
    return ap


def test_average_precision_with_junk_matches_brute_force() -> None:
    rng = np.random.default_rng(1)
    for _ in range(100):
        ranking = rng.permutation(40)[: int(rng.integers(5, 40))]
        labels = rng.integers(0, 3, size=40)  # 0 negative, 1 positive, 2 junk
        positives = set(np.flatnonzero(labels == 1).tolist())
        junk = set(np.flatnonzero(labels == 2).tolist())
        expected = _trapezoid_loop(ranking.tolist(), positives, junk)
        result = average_precision_with_junk(torch.from_numpy(ranking), positives, junk)
        assert result == pytest.approx(expected)


# --- mAP and mP@k --------------------------------------------------------------------------
def test_mean_average_precision_skips_queries_without_positives() -> None:
    rankings = np.array([[5, 7, 3, 9], [0, 1, 2, 3], [3, 5, 7, 9]])
    positives = [[3], [], [3]]
    junk = [[7], [], []]
    # APs: 1/4 (junk case above), nan (skipped), 1 (positive first) -> (1/4 + 1) / 2 = 5/8.
    assert mean_average_precision(rankings, positives, junk) == pytest.approx(5 / 8)
    # Without junk the first query scores 1/6 -> (1/6 + 1) / 2 = 7/12.
    assert mean_average_precision(rankings, positives) == pytest.approx(7 / 12)
    assert math.isnan(mean_average_precision(rankings[:1], [[]]))
    with pytest.raises(MultiGrainError, match="one of each per query"):
        mean_average_precision(rankings, positives[:2])


def test_precision_at_k_common_and_revisitop() -> None:
    rankings = np.array([[5, 7, 3, 9]])
    # Junk 7 removed -> [5, 3, 9] with positives 3 and 9.
    # Common: P@1 = 0/1, P@2 = 1/2, P@3 = 2/3, P@5 = 2/5.
    result = precision_at_k(rankings, [[3, 9]], [[7]], ks=(1, 2, 3, 5))
    assert result == pytest.approx({1: 0.0, 2: 0.5, 3: 2 / 3, 5: 0.4})
    # revisitop: last positive at 1-based rank 3, so k=5 uses k' = min(5, 3) = 3 -> 2/3.
    truncated = precision_at_k(
        rankings, [[3, 9]], [[7]], ks=(1, 2, 5), truncate_at_last_positive=True
    )
    assert truncated == pytest.approx({1: 0.0, 2: 0.5, 5: 2 / 3})
    # Query without positives skipped; one that retrieves none of its positives scores 0.
    two = np.array([[5, 7, 3, 9], [1, 2, 4, 6]])
    assert precision_at_k(two, [[3], []], ks=(3,)) == pytest.approx({3: 1 / 3})
    assert precision_at_k(two, [[3], [8]], ks=(3,)) == pytest.approx({3: 1 / 6})


# --- µAP and recall at precision -----------------------------------------------------------
def test_micro_average_precision_ties_are_pessimistic() -> None:
    scores = np.array([0.9, 0.8, 0.8, 0.7])
    is_positive = np.array([True, True, False, True])
    # Pessimistic order: T(0.9) F(0.8) T(0.8) T(0.7): precisions at positives 1, 2/3, 3/4
    #   -> (1 + 2/3 + 3/4) / 3 = 29/36.
    assert micro_average_precision(scores, is_positive, 3) == pytest.approx(29 / 36)
    # Input order does not matter.
    order = np.array([2, 0, 3, 1])
    assert micro_average_precision(scores[order], is_positive[order], 3) == pytest.approx(29 / 36)
    # Optimistic order (tie broken in favour of the positive): 1, 1, 3/4 -> 11/12 > 29/36.
    untied = np.array([0.9, 0.81, 0.8, 0.7])
    assert micro_average_precision(untied, is_positive, 3) == pytest.approx(11 / 12)


def test_micro_average_precision_missed_ground_truth() -> None:
    scores = np.array([0.9, 0.8, 0.8, 0.7])
    is_positive = np.array([True, True, False, True])
    # 2 ground-truth pairs never predicted: (1 + 2/3 + 3/4) / 5 = 29/60.
    assert micro_average_precision(scores, is_positive, 5) == pytest.approx(29 / 60)
    assert math.isnan(micro_average_precision(np.array([]), np.array([], dtype=bool), 0))
    with pytest.raises(MultiGrainError, match="num_ground_truth"):
        micro_average_precision(scores, is_positive, 2)
    with pytest.raises(MultiGrainError, match="non-finite"):
        micro_average_precision(np.array([np.nan]), np.array([True]), 1)


def test_recall_at_precision_hand_case() -> None:
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.5])
    is_positive = np.array([True, True, False, True, False])
    # Threshold: precision, recall (4 ground truth)
    #   0.9: 1/1, 1/4   0.8: 2/2, 2/4   0.7: 2/3, 2/4   0.6: 3/4, 3/4   0.5: 3/5, 3/4
    assert recall_at_precision(scores, is_positive, 4, 0.9) == pytest.approx((0.5, 0.8))
    assert recall_at_precision(scores, is_positive, 4, 0.75) == pytest.approx((0.75, 0.6))
    # At 0.5 both 0.6 and 0.5 reach recall 3/4; the higher threshold is reported.
    assert recall_at_precision(scores, is_positive, 4, 0.5) == pytest.approx((0.75, 0.6))


def test_recall_at_precision_never_reached_and_ties() -> None:
    recall, threshold = recall_at_precision([0.9, 0.8], [False, True], 1, 0.9)
    assert recall == 0.0 and math.isnan(threshold)
    # A tie is never split: threshold 0.9 accepts both predictions, precision 1/2.
    recall, threshold = recall_at_precision([0.9, 0.9], [True, False], 1, 0.9)
    assert recall == 0.0 and math.isnan(threshold)


# --- UKBench -------------------------------------------------------------------------------
def test_ukbench_score() -> None:
    groups = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    queries = np.array([0, 4])
    perfect = np.array([[0, 1, 2, 3, 4, 5, 6, 7], [4, 5, 6, 7, 0, 1, 2, 3]])
    assert ukbench_score(perfect, groups, queries) == 4.0
    # Query 0 top 4 groups: 0 1 0 0 -> 3. Query 4 top 4 groups: 1 1 0 0 -> 2. Mean 2.5.
    imperfect = np.array([[0, 4, 1, 2, 3, 5, 6, 7], [4, 5, 0, 1, 6, 7, 2, 3]])
    assert ukbench_score(torch.from_numpy(imperfect), groups, queries) == 2.5
    with pytest.raises(MultiGrainError, match="top 4"):
        ukbench_score(perfect[:, :3], groups, queries)


# --- Threshold for a target precision ------------------------------------------------------
def test_threshold_for_precision_hand_case() -> None:
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4])
    positive = np.array([1, 1, 0, 1, 0, 0], dtype=bool)
    # precision at cuts: 1, 1, 2/3, 3/4, 3/5, 1/2
    assert threshold_for_precision(scores, positive, 1.0) == 0.8
    assert threshold_for_precision(scores, positive, 0.75) == 0.6
    assert threshold_for_precision(scores, positive, 0.5) == 0.4
    # a tie between a positive and a negative cannot be split
    tied = np.array([0.9, 0.9, 0.5])
    assert threshold_for_precision(tied, np.array([1, 0, 0], bool), 0.5) == 0.9
    with pytest.raises(MultiGrainError, match="no threshold"):
        threshold_for_precision(tied, np.array([1, 0, 0], bool), 0.9)
    # of the thresholds with the best recall, the highest (0.6, not 0.4, at target 0.5)
    highest = ThresholdChoice.HIGHEST_AT_BEST_RECALL
    assert threshold_for_precision(scores, positive, 0.5, choice=highest) == 0.6


def _untied_scores(rng: np.random.Generator, size: int) -> np.ndarray:
    scores = rng.random(size)
    assert np.unique(scores).size == size
    return scores


# --- Against scikit-learn, where the definitions coincide ---------------------------------
def test_average_precision_equals_sklearn_without_ties() -> None:
    # sklearn's AP = sum_n (R_n - R_{n-1}) P_n over distinct thresholds: on a ranking without
    # ties and with every positive retrieved it is our non-interpolated AP.
    rng = np.random.default_rng(5)
    for _ in range(50):
        scores = _untied_scores(rng, int(rng.integers(5, 60)))
        labels = rng.random(scores.size) < rng.uniform(0.1, 0.7)
        if not labels.any():
            continue
        ranked = labels[np.argsort(-scores)]
        expected = sk.average_precision_score(labels, scores)
        assert average_precision(ranked, int(labels.sum())) == pytest.approx(expected)


def test_single_positive_map_and_top_k_equal_sklearn() -> None:
    rng = np.random.default_rng(6)
    similarity = torch.from_numpy(rng.random((40, 25)))
    match = torch.from_numpy(rng.integers(0, 25, 40))
    per_query = [
        sk.average_precision_score(np.arange(25) == int(m), row.numpy())
        for row, m in zip(similarity, match, strict=True)
    ]
    ranks = rank_of_match(similarity, match)
    assert single_positive_map(ranks) == pytest.approx(np.mean(per_query))
    for k in (1, 3, 10):
        expected = sk.top_k_accuracy_score(match.numpy(), similarity.numpy(), k=k, labels=range(25))
        assert top_k_accuracy(similarity, match, k) == pytest.approx(expected)


def test_micro_average_precision_equals_sklearn_without_ties() -> None:
    # µAP divides by every ground-truth pair, sklearn by the positives it is given.
    rng = np.random.default_rng(7)
    scores = _untied_scores(rng, 500)
    is_positive = rng.random(500) < 0.3
    positives = int(is_positive.sum())
    expected = sk.average_precision_score(is_positive, scores)
    assert micro_average_precision(scores, is_positive, positives) == pytest.approx(expected)
    assert micro_average_precision(scores, is_positive, positives + 40) == pytest.approx(
        expected * positives / (positives + 40)
    )


def test_thresholds_at_precision_match_sklearn_curve() -> None:
    # precision_recall_curve gives one (precision, recall) point per distinct score t when
    # accepting score >= t -- ties included, as our thresholds never split a tie.
    rng = np.random.default_rng(8)
    for _ in range(30):
        scores = np.round(rng.random(300), 2)  # many ties
        is_positive = rng.random(300) < np.clip(scores + rng.normal(0, 0.3, 300), 0.05, 0.95)
        precision, recall, thresholds = sk.precision_recall_curve(is_positive, scores)
        assert thresholds.size == np.unique(scores).size  # every threshold, none dropped
        for target in (0.6, 0.8, 0.9):
            reached = precision[:-1] >= target
            if not reached.any():
                with pytest.raises(MultiGrainError, match="no threshold"):
                    threshold_for_precision(scores, is_positive, target)
                assert recall_at_precision(scores, is_positive, 300, target)[0] == 0.0
                continue
            best = recall[:-1][reached].max()
            lowest = thresholds[reached].min()
            highest = thresholds[reached & (recall[:-1] == best)].max()
            assert threshold_for_precision(scores, is_positive, target) == pytest.approx(lowest)
            num_ground_truth = int(is_positive.sum()) + 10
            found_recall, found_threshold = recall_at_precision(
                scores, is_positive, num_ground_truth, target
            )
            assert found_threshold == pytest.approx(highest)
            assert found_recall == pytest.approx(best * is_positive.sum() / num_ground_truth)


# --- Against the official evaluation loops, where the definitions differ --------------------
def _revisitop_compute_ap(ranks: np.ndarray, nres: int) -> float:
    """revisitop `compute_ap` (Radenović et al. 2018), transcribed: trapezoids in the PR plot."""
    ap, recall_step = 0.0, 1.0 / nres
    for j, rank in enumerate(ranks):
        precision_0 = 1.0 if rank == 0 else float(j) / rank
        precision_1 = float(j + 1) / (rank + 1)
        ap += (precision_0 + precision_1) * recall_step / 2.0
    return ap


def _revisitop_compute_map(rankings: np.ndarray, gnd: list[dict], kappas: list[int]):
    """revisitop `compute_map`, transcribed (rankings row-wise here): junk shifts positives up."""
    total, empty = 0.0, 0
    prs = np.zeros((len(gnd), len(kappas)))
    for i, truth in enumerate(gnd):
        positives = np.array(truth["ok"])
        if positives.shape[0] == 0:
            prs[i, :] = float("nan")
            empty += 1
            continue
        pos = np.arange(rankings.shape[1])[np.isin(rankings[i], positives)]
        junk = np.arange(rankings.shape[1])[np.isin(rankings[i], truth["junk"])]
        k = ij = 0
        if len(junk):
            ip = 0
            while ip < len(pos):
                while ij < len(junk) and pos[ip] > junk[ij]:
                    k += 1
                    ij += 1
                pos[ip] = pos[ip] - k
                ip += 1
        total += _revisitop_compute_ap(pos, len(positives))
        pos += 1  # 1-based
        for j, kappa in enumerate(kappas):
            kq = min(max(pos), kappa)
            prs[i, j] = (pos <= kq).sum() / kq
    return total / (len(gnd) - empty), np.nanmean(prs, axis=0)


def _holidays_ap(results: list[int], query: int, positives: set[int]) -> float:
    """INRIA Holidays `eval_holidays` / `score_ap_from_ranks_1`, transcribed: the query image
    is skipped in its own result list, then trapezoids as in revisitop."""
    ranks, rank = [], 0
    for image in results:
        if image == query:
            continue
        if image in positives:
            ranks.append(rank)
        rank += 1
    ap, recall_step = 0.0, 1.0 / len(positives)
    for ntp, rank in enumerate(ranks):
        precision_0 = 1.0 if rank == 0 else ntp / float(rank)
        precision_1 = (ntp + 1) / float(rank + 1)
        ap += (precision_1 + precision_0) * recall_step / 2.0
    return ap


def test_trapezoid_map_and_precision_equal_revisitop() -> None:
    rng = np.random.default_rng(9)
    rankings = np.stack([rng.permutation(60) for _ in range(25)])
    gnd = []
    for _ in range(25):
        labels = rng.choice(3, 60, p=[0.75, 0.15, 0.10])  # negative, positive, junk
        gnd.append({"ok": np.flatnonzero(labels == 1), "junk": np.flatnonzero(labels == 2)})
    gnd[3] = {"ok": np.array([], dtype=np.int64), "junk": np.array([1, 2])}  # skipped query
    expected_map, expected_prs = _revisitop_compute_map(rankings, gnd, [1, 5, 10])
    positives, junk = [g["ok"] for g in gnd], [g["junk"] for g in gnd]
    assert mean_average_precision(rankings, positives, junk) == pytest.approx(expected_map)
    found = precision_at_k(rankings, positives, junk, ks=(1, 5, 10), truncate_at_last_positive=True)
    assert [found[k] for k in (1, 5, 10)] == pytest.approx(expected_prs.tolist())
    # what `evaluate` reports for the revisitop protocols (issue 18, item 1)
    reported = revisitop_precision_at_k(rankings, positives, junk)
    assert [reported[k] for k in (1, 5, 10)] == pytest.approx(expected_prs.tolist())
    one = revisitop_precision_at_k([[4, 0, 1, 2, 3]], [[4]], [[]], ks=(5,))
    assert one[5] == 1.0  # one positive, first: 1 (the common definition says 1/5)
    for ranking, truth in zip(rankings, gnd, strict=True):
        ranks = np.flatnonzero(np.isin(ranking, truth["ok"]))
        if truth["ok"].size:
            expected = _revisitop_compute_ap(ranks, truth["ok"].size)
            assert average_precision_trapezoid(ranks, truth["ok"].size) == pytest.approx(expected)


def test_holidays_query_as_junk_equals_eval_holidays() -> None:
    rng = np.random.default_rng(10)
    groups = np.repeat(np.arange(20), rng.integers(2, 5, 20))  # Holidays: small groups
    queries = [int(np.flatnonzero(groups == g)[0]) for g in range(20)]
    rankings = np.stack([rng.permutation(groups.size) for _ in queries])
    positives = [set(np.flatnonzero(groups == groups[q]).tolist()) - {q} for q in queries]
    expected = np.mean(
        [
            _holidays_ap(r.tolist(), q, p)
            for r, q, p in zip(rankings, queries, positives, strict=True)
        ]
    )
    junk = [[q] for q in queries]
    assert mean_average_precision(rankings, positives, junk) == pytest.approx(expected)
