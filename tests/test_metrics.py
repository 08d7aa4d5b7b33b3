"""Metrics against hand-computed cases (arithmetic in the comments) and brute-force loops."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from multigrain.metrics import (
    average_precision,
    average_precision_trapezoid,
    average_precision_with_junk,
    mean_average_precision,
    micro_average_precision,
    precision_at_k,
    rank_of_match,
    recall_at_precision,
    single_positive_map,
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
