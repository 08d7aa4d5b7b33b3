"""Classification accuracy: the fraction of rows whose label is among the k best logits."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def top_k_accuracy(logits: torch.Tensor, labels: torch.Tensor, k: int = 1) -> float:
    """logits (N, K), labels (N,) -> fraction of rows whose label is among the k best scores."""
    if logits.shape[0] == 0:
        return float("nan")
    k = min(k, logits.shape[1])
    best = logits.topk(k, dim=1).indices
    return (best == labels[:, None]).any(dim=1).float().mean().item()


def top_k_accuracies(
    logits: torch.Tensor, labels: torch.Tensor, ks: Sequence[int] = (1, 5)
) -> dict[int, float]:
    """logits (N, K), labels (N,) -> {k: top_k_accuracy(logits, labels, k)} for each k in ks."""
    return {k: top_k_accuracy(logits, labels, k) for k in ks}
