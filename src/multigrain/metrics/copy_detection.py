"""Copy-detection metrics over one global list of (query, reference, score) predictions.

µAP (DISC21), recall at a target precision, and the score threshold reaching a target
precision -- the one implementation the threshold calibration of an index uses too
(:mod:`multigrain.search.threshold`). Inputs as in :mod:`multigrain.metrics.arrays`.
"""

from __future__ import annotations

from enum import Enum

import numpy as np

from multigrain.metrics.arrays import ArrayLike, to_numpy
from multigrain.runtime.errors import MultiGrainError


class ThresholdChoice(Enum):
    """Which threshold to give when several reach the target precision at the best recall.

    Accepting the predictions scoring >= t, recall only grows as t goes down, so the lowest
    t reaching the target has the best recall; higher ones may reach the same recall with
    fewer false positives.
    """

    LOWEST = "lowest"  # accepts every prediction that the target precision allows
    HIGHEST_AT_BEST_RECALL = "highest-at-best-recall"  # same recall, fewest false positives


def _sorted_predictions(
    scores: ArrayLike, is_positive: ArrayLike, num_ground_truth: int
) -> tuple[np.ndarray, np.ndarray]:
    """-> (scores, is_positive) sorted by score descending, negatives before positives in ties."""
    score = to_numpy(scores).astype(np.float64).reshape(-1)
    positive = to_numpy(is_positive).astype(bool).reshape(-1)
    if score.shape != positive.shape:
        raise MultiGrainError(f"{score.size} scores but {positive.size} is_positive flags")
    if not np.all(np.isfinite(score)):
        raise MultiGrainError("non-finite prediction scores: check the similarity computation")
    if num_ground_truth < np.count_nonzero(positive):
        raise MultiGrainError(
            f"num_ground_truth={num_ground_truth} is below the {np.count_nonzero(positive)} "
            "correct predictions: duplicate (query, reference) pairs, or the wrong count?"
        )
    # lexsort orders by its last key first: score descending, then False before True.
    order = np.lexsort((positive, -score))
    return score[order], positive[order]


def micro_average_precision(
    scores: ArrayLike, is_positive: ArrayLike, num_ground_truth: int
) -> float:
    """µAP over one global list of predictions: scores (M,), is_positive (M,) -> float.

    Each entry is one (query, reference, score) prediction. All predictions from all queries
    are sorted together by score, descending; precision and recall are taken after each one,
    recall relative to num_ground_truth, so ground-truth pairs never predicted are misses.
    µAP = sum_n (R_n - R_{n-1}) P_n = (1 / num_ground_truth) * sum over correct predictions of
    the precision at that point: non-interpolated (Douze et al., "The 2021 Image Similarity
    Dataset and Challenge", 2021). Ties are broken pessimistically: among equal scores the
    incorrect predictions come first. num_ground_truth == 0 -> nan.
    """
    _, positive = _sorted_predictions(scores, is_positive, num_ground_truth)
    if num_ground_truth == 0:
        return float("nan")
    precision = np.cumsum(positive) / np.arange(1, positive.size + 1)
    return float(precision[positive].sum() / num_ground_truth)


def _cuts(score: np.ndarray, positive: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """score, positive (M,) sorted by score descending -> for every distinct score t, i.e.
    every threshold (accepting the predictions scoring >= t never splits a tie): (position
    of the last prediction it accepts, true positives accepted, precision)."""
    ends = np.flatnonzero(np.append(score[1:] != score[:-1], True))  # last of each tie group
    true_positives = np.cumsum(positive)[ends]
    return ends, true_positives, true_positives / (ends + 1)


def _chosen_cut(
    score: np.ndarray, positive: np.ndarray, target_precision: float, choice: ThresholdChoice
) -> int | None:
    """Sorted score, positive (M,) -> position of the last prediction that the chosen
    threshold accepts; None when no threshold reaches the target."""
    ends, true_positives, precisions = _cuts(score, positive)
    reached = precisions >= target_precision
    if not reached.any():
        return None
    if choice is ThresholdChoice.LOWEST:
        return int(ends[reached][-1])
    # the first (highest) threshold whose recall equals that of the lowest one
    best = true_positives[reached] == true_positives[reached][-1]
    return int(ends[reached][np.argmax(best)])


def threshold_for_precision(
    scores: ArrayLike,
    is_positive: ArrayLike,
    target_precision: float,
    *,
    choice: ThresholdChoice = ThresholdChoice.LOWEST,
) -> float:
    """scores (M,), is_positive (M,) -> the threshold t whose accepted predictions (score >= t)
    reach `target_precision`; of several, the one `choice` names (default: the lowest, which
    keeps the most true predictions). Ties are never split.

    Raises:
        MultiGrainError: empty or mismatched inputs, a target outside (0, 1], or no
            threshold reaching the target (the message gives the best precision reached).
    """
    score = to_numpy(scores).astype(np.float64).reshape(-1)
    positive = to_numpy(is_positive).astype(bool).reshape(-1)
    if score.shape != positive.shape or score.size == 0:
        raise MultiGrainError("scores and is_positive must be non-empty and of the same size")
    if not 0.0 < target_precision <= 1.0:
        raise MultiGrainError(f"target_precision must be in (0, 1], got {target_precision}")
    score, positive = _sorted_predictions(score, positive, int(np.count_nonzero(positive)))
    cut = _chosen_cut(score, positive, target_precision, choice)
    if cut is None:
        best = float(_cuts(score, positive)[2].max())
        raise MultiGrainError(
            f"no threshold reaches precision {target_precision}: the best is {best:.3f}; "
            "lower the target or improve the descriptors"
        )
    return float(score[cut])


def recall_at_precision(
    scores: ArrayLike, is_positive: ArrayLike, num_ground_truth: int, precision: float = 0.9
) -> tuple[float, float]:
    """scores (M,), is_positive (M,) -> (recall, threshold) at the given precision target.

    Thresholds are the distinct scores: accepting all predictions with score >= t gives one
    precision/recall point per t (a tie is never split). Returns the highest recall over
    thresholds whose precision is >= the target, and the highest t giving that recall
    (`ThresholdChoice.HIGHEST_AT_BEST_RECALL`); (0.0, nan) if no threshold reaches it.
    Recall is relative to num_ground_truth, as in `micro_average_precision` (DISC21 reports
    recall at precision 0.9).
    """
    score, positive = _sorted_predictions(scores, is_positive, num_ground_truth)
    if score.size == 0 or num_ground_truth == 0:
        return 0.0, float("nan")
    cut = _chosen_cut(score, positive, precision, ThresholdChoice.HIGHEST_AT_BEST_RECALL)
    if cut is None:
        return 0.0, float("nan")
    return float(np.count_nonzero(positive[: cut + 1]) / num_ground_truth), float(score[cut])
