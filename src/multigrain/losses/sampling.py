"""Distance-weighted negative sampling (Wu et al. 2017, "Sampling matters"), SPEC §3.

The miner only chooses triplets; :mod:`multigrain.losses.margin` scores them.
Positives are pairs of augmentations of the same source image (same instance id).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from multigrain.runtime.errors import MultiGrainError


@dataclass(frozen=True)
class Triplets:
    """Row indices into a batch of embeddings, each a LongTensor of shape (T,)."""

    anchors: Tensor
    positives: Tensor
    negatives: Tensor

    def __len__(self) -> int:
        return int(self.anchors.numel())


def log_inverse_sphere_density(distance: Tensor, dim: int) -> Tensor:
    """log(1 / q(d)) up to a constant, where q is the density of distances on the sphere.

    For points uniform on the unit sphere in ``dim`` = n dimensions,
    ``q(d) ∝ d^(n-2) (1 - d²/4)^((n-3)/2)``, so this returns
    ``-(n-2) log d - ((n-3)/2) log(1 - d²/4)`` elementwise (same shape as ``distance``).
    ``1 - d²/4`` is clamped at 1e-8 so d = 2 stays finite; d must be > 0 (callers clamp
    it at the sampling cutoff).
    """
    n = float(dim)
    return -(n - 2.0) * torch.log(distance) - ((n - 3.0) / 2.0) * torch.log(
        (1.0 - distance.pow(2) / 4.0).clamp(min=1e-8)
    )


def negative_sampling_weights(
    distances: Tensor,
    negative_mask: Tensor,
    dim: int,
    *,
    cutoff: float = 0.5,
    nonzero_loss_cutoff: float = 1.4,
) -> Tensor:
    """Unnormalised sampling weights of negatives, each row's maximum scaled to 1.

    Args:
        distances: (N, N) pairwise distances between L2-normalised embeddings.
        negative_mask: (N, N) bool, True where j is a valid negative for anchor i.
        dim: embedding dimension n (enters the sphere density).
        cutoff: distances are clamped below at this value.
        nonzero_loss_cutoff: pairs at distance >= this get weight 0.

    Returns:
        (N, N) float64 weights ∝ 1/q(max(d, cutoff)), 0 outside ``negative_mask`` and
        beyond ``nonzero_loss_cutoff``. Computed in log space with each row's maximum
        subtracted before ``exp`` (in 2048-d the log-weights span hundreds of nats), in
        float64: float32 would flush weights below ~1e-45 to zero, and an anchor would
        seem to have too few candidates to draw without replacement. A row with no positive
        finite weight falls back to uniform over its negatives; a row without negatives is
        all zeros.
    """
    log_weights = log_inverse_sphere_density(distances.double().clamp(min=cutoff), dim)
    allowed = negative_mask & (distances < nonzero_loss_cutoff)
    log_weights = log_weights.masked_fill(~allowed, float("-inf"))
    row_max = log_weights.amax(dim=1, keepdim=True)
    weights = torch.exp(log_weights - row_max)  # NaN on rows whose max is -inf or inf
    weights = torch.nan_to_num(weights, nan=0.0, posinf=0.0, neginf=0.0)
    degenerate = ~(weights > 0).any(dim=1, keepdim=True)
    return torch.where(degenerate, negative_mask.double(), weights)


def distance_weighted_sampling(
    embeddings: Tensor,
    instance_ids: Tensor,
    *,
    cutoff: float = 0.5,
    nonzero_loss_cutoff: float = 1.4,
    generator: torch.Generator | None = None,
) -> Triplets:
    """Mine (anchor, positive, negative) triplets by distance-weighted sampling.

    Args:
        embeddings: (N, D) L2-normalised embeddings (detached internally; no gradient).
        instance_ids: (N,) integer id of each row's source image; equal ids are positives.
        cutoff: distances are clamped below at this value before weighting.
        nonzero_loss_cutoff: negatives at distance >= this get weight 0 (unless the row has
            nothing else, then the row is sampled uniformly).
        generator: random generator on the embeddings' device, for reproducibility.

    Returns:
        :class:`Triplets` with one triplet per ordered positive pair (i, j), i != j: anchor
        i gets as many negatives as it has positives, drawn with probability
        ∝ 1/q(max(d_ij, cutoff)) without replacement when it has enough candidates with
        non-zero weight. Anchors without a positive or without a negative contribute
        nothing; the result may be empty.
    """
    if embeddings.dim() != 2:
        raise MultiGrainError(f"embeddings must have shape (N, D), got {tuple(embeddings.shape)}")
    if instance_ids.shape != embeddings.shape[:1]:
        raise MultiGrainError(
            f"instance_ids must have shape ({embeddings.shape[0]},) to match the embeddings, "
            f"got {tuple(instance_ids.shape)}"
        )
    if not 0 < cutoff < nonzero_loss_cutoff:
        raise MultiGrainError(
            f"need 0 < cutoff < nonzero_loss_cutoff, got cutoff={cutoff}, "
            f"nonzero_loss_cutoff={nonzero_loss_cutoff}"
        )
    device = embeddings.device
    with torch.no_grad():
        e = embeddings.detach().double()
        # ||a - b|| from the differences, not 2 - 2 a·b, whose cancellation loses the small
        # distances that decide the weights of the hardest negatives
        distances = torch.cdist(e, e, compute_mode="donot_use_mm_for_euclid_dist")
        ids = instance_ids.to(device)
        same = ids[:, None] == ids[None, :]
        eye = torch.eye(len(ids), dtype=torch.bool, device=device)
        positive_mask = same & ~eye
        negative_mask = ~same
        weights = negative_sampling_weights(
            distances, negative_mask, e.shape[1], cutoff=cutoff,
            nonzero_loss_cutoff=nonzero_loss_cutoff,
        )  # fmt: skip
        num_positives = positive_mask.sum(dim=1)
        num_candidates = (weights > 0).sum(dim=1)
        active = (num_positives > 0) & negative_mask.any(dim=1)
        if not bool(active.any()):
            empty = torch.empty(0, dtype=torch.long, device=device)
            return Triplets(empty, empty, empty)

        # drawn[i, r] is the negative paired with anchor i's r-th positive.
        max_k = int(num_positives.max())
        drawn = torch.full((len(ids), max_k), -1, dtype=torch.long, device=device)
        enough = num_candidates >= num_positives
        for k in torch.unique(num_positives[active]).tolist():
            for without_replacement in (True, False):
                rows = torch.nonzero(
                    active & (num_positives == k) & (enough == without_replacement)
                ).squeeze(1)
                if rows.numel() == 0:
                    continue
                drawn[rows, :k] = torch.multinomial(
                    weights[rows], k, replacement=not without_replacement, generator=generator
                )

        anchors, positives = torch.nonzero(positive_mask & active[:, None], as_tuple=True)
        rank = positive_mask.long().cumsum(dim=1) - 1  # rank of j among i's positives
        negatives = drawn[anchors, rank[anchors, positives]]
        assert bool((negatives >= 0).all()), "every positive pair must get a negative"
        return Triplets(anchors, positives, negatives)
