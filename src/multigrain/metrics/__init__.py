"""Small pure metric functions: classification accuracy, retrieval AP/mAP, N-S score, µAP.

One module per kind of task; the public names are re-exported here.
"""

from multigrain.metrics.arrays import ArrayLike
from multigrain.metrics.classification import top_k_accuracies, top_k_accuracy
from multigrain.metrics.copy_detection import (
    ThresholdChoice,
    micro_average_precision,
    recall_at_precision,
    threshold_for_precision,
)
from multigrain.metrics.retrieval import (
    average_precision,
    average_precision_trapezoid,
    average_precision_with_junk,
    mean_average_precision,
    precision_at_k,
    rank_of_match,
    revisitop_precision_at_k,
    single_positive_map,
    ukbench_score,
)

__all__ = [
    "ArrayLike",
    "ThresholdChoice",
    "average_precision",
    "average_precision_trapezoid",
    "average_precision_with_junk",
    "mean_average_precision",
    "micro_average_precision",
    "precision_at_k",
    "rank_of_match",
    "recall_at_precision",
    "revisitop_precision_at_k",
    "single_positive_map",
    "threshold_for_precision",
    "top_k_accuracies",
    "top_k_accuracy",
    "ukbench_score",
]
