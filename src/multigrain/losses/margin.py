"""Margin loss (Wu et al. 2017) on mined triplets, SPEC §3."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from multigrain.losses.rows import gather_rows
from multigrain.losses.sampling import Triplets


@dataclass
class MarginLossOutput:
    """Result of :func:`margin_loss`.

    ``loss`` is a 0-dim tensor; ``num_active`` counts non-zero terms (positive and
    negative terms separately); the distance means are 0.0 when there is no triplet.
    """

    loss: Tensor
    num_active: int
    num_triplets: int
    positive_distance_mean: float
    negative_distance_mean: float


def _pair_distance(a: Tensor, b: Tensor) -> Tensor:
    """(T, D), (T, D) -> (T,) Euclidean distances with a sqrt safe at zero distance."""
    return (a - b).pow(2).sum(dim=1).clamp(min=1e-12).sqrt()


def margin_loss(
    embeddings: Tensor, triplets: Triplets, beta: Tensor, *, alpha: float = 0.2
) -> MarginLossOutput:
    """Margin loss ``Σ max(0, α + d_ap − β) + Σ max(0, α − d_an + β)`` / (#non-zero terms).

    Args:
        embeddings: (N, D) L2-normalised embeddings.
        triplets: indices into ``embeddings`` (see :func:`distance_weighted_sampling`).
        beta: 0-dim tensor, the (learnable) boundary β.
        alpha: the margin α.

    Returns:
        :class:`MarginLossOutput`. Each positive and each negative term is counted on its
        own in the denominator. With no non-zero term the loss is 0 but still attached to
        ``embeddings`` and ``beta``, so ``backward`` (and DDP) work.
    """
    # gather_rows, not embeddings[index]: the backward of advanced indexing sums a row's
    # gradients in a different order on each run with several CPU threads (issue 16)
    e, t = embeddings, triplets
    d_ap = _pair_distance(gather_rows(e, t.anchors), gather_rows(e, t.positives))
    d_an = _pair_distance(gather_rows(e, t.anchors), gather_rows(e, t.negatives))
    positive_terms = torch.relu(alpha + d_ap - beta)
    negative_terms = torch.relu(alpha - d_an + beta)
    # Count as integers: adding two bool tensors would be a logical OR.
    num_active = int((positive_terms > 0).sum()) + int((negative_terms > 0).sum())
    total = positive_terms.sum() + negative_terms.sum()
    # Keeps the graph connected to every input even when the sums are empty or zero.
    zero = embeddings.sum() * 0.0 + beta * 0.0
    loss = total / max(num_active, 1) + zero
    num_triplets = len(triplets)
    return MarginLossOutput(
        loss=loss,
        num_active=num_active,
        num_triplets=num_triplets,
        positive_distance_mean=float(d_ap.detach().mean()) if num_triplets else 0.0,
        negative_distance_mean=float(d_an.detach().mean()) if num_triplets else 0.0,
    )


class MarginLoss(nn.Module):
    """Margin loss holding the learnable boundary ``beta`` (0-dim parameter).

    Give ``beta`` its own learning rate and no weight decay (SPEC §3).
    """

    def __init__(self, *, alpha: float = 0.2, beta_init: float = 1.2) -> None:
        super().__init__()
        self.alpha = alpha
        self.beta = nn.Parameter(torch.tensor(float(beta_init)))

    def forward(self, embeddings: Tensor, triplets: Triplets) -> MarginLossOutput:
        """embeddings: (N, D) L2-normalised; triplets: indices into them."""
        return margin_loss(embeddings, triplets, self.beta, alpha=self.alpha)

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, beta={float(self.beta.detach()):.4g}"
