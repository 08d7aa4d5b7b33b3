"""Small pure metric functions over tensors."""

from __future__ import annotations

import torch


def top_k_accuracy(logits: torch.Tensor, labels: torch.Tensor, k: int = 1) -> float:
    """logits (N, K), labels (N,) -> fraction of rows whose label is among the k best scores."""
    if logits.shape[0] == 0:
        return float("nan")
    k = min(k, logits.shape[1])
    best = logits.topk(k, dim=1).indices
    return (best == labels[:, None]).any(dim=1).float().mean().item()


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
