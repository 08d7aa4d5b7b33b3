"""The MultiGrain objective ``L = λ·CE + (1 − λ)·L_margin`` (SPEC §3)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from multigrain.losses.margin import MarginLoss
from multigrain.losses.sampling import distance_weighted_sampling
from multigrain.runtime.errors import MultiGrainError


@dataclass
class JointLossOutput:
    """``total`` = λ·``classification`` + (1 − λ)·``margin`` (0-dim tensors)."""

    total: Tensor
    classification: Tensor
    margin: Tensor
    num_triplets: int
    num_active: int


class JointLoss(nn.Module):
    """Cross-entropy on the logits plus margin loss on distance-weighted triplets.

    The margin boundary β is ``self.margin.beta``. With λ = 1 the miner and margin loss
    are skipped, with λ = 0 the cross-entropy is; the skipped term is reported as 0.
    Images labelled ``ignore_label`` (the data layer's ``UNLABELLED``) have no class: only
    the margin term sees them.
    """

    def __init__(
        self,
        *,
        classification_weight: float = 0.5,
        alpha: float = 0.2,
        beta_init: float = 1.2,
        cutoff: float = 0.5,
        nonzero_loss_cutoff: float = 1.4,
        ignore_label: int = -1,
    ) -> None:
        super().__init__()
        if not 0.0 <= classification_weight <= 1.0:
            raise MultiGrainError(
                f"λ (classification_weight) must be in [0, 1], got {classification_weight}; "
                "use 1 for classification only, 0.5 for the paper's joint models"
            )
        self.classification_weight = float(classification_weight)
        self.cutoff = cutoff
        self.nonzero_loss_cutoff = nonzero_loss_cutoff
        self.ignore_label = int(ignore_label)
        self.margin = MarginLoss(alpha=alpha, beta_init=beta_init)

    def forward(
        self,
        embeddings: Tensor,
        logits: Tensor,
        labels: Tensor,
        instance_ids: Tensor,
        *,
        generator: torch.Generator | None = None,
        margin_embeddings: Tensor | None = None,
        margin_instance_ids: Tensor | None = None,
    ) -> JointLossOutput:
        """Compute the joint loss.

        Args:
            embeddings: (N, D) raw embeddings (L2-normalised here for the margin term).
            logits: (N, K) classifier outputs.
            labels: (N,) class indices; ``ignore_label`` marks an image without a class,
                which only the margin term sees.
            instance_ids: (N,) source-image ids; equal ids are positive pairs.
            generator: random generator for the negative sampling.
            margin_embeddings: optional (M, D) raw embeddings to mine triplets from and
                score with the margin term instead of ``embeddings`` (e.g. the batch
                gathered over all ranks, "global sampling"); needs ``margin_instance_ids``.
            margin_instance_ids: (M,) source-image ids of ``margin_embeddings``.
        """
        if (margin_embeddings is None) != (margin_instance_ids is None):
            raise MultiGrainError(
                "pass margin_embeddings and margin_instance_ids together (or neither)"
            )
        if margin_embeddings is None or margin_instance_ids is None:
            margin_embeddings, margin_instance_ids = embeddings, instance_ids
        lam = self.classification_weight
        zero = logits.new_zeros(())
        classification = zero
        if lam > 0 and bool((labels != self.ignore_label).any()):
            # images without a class are instance sources only
            classification = F.cross_entropy(logits, labels, ignore_index=self.ignore_label)
        elif lam > 0:
            # no labelled image here: a zero that keeps the classifier in the graph (DDP)
            classification = logits.sum() * 0.0
        margin = zero
        num_triplets = num_active = 0
        if lam < 1:
            normalized = F.normalize(margin_embeddings, dim=1)
            triplets = distance_weighted_sampling(
                normalized,
                margin_instance_ids,
                cutoff=self.cutoff,
                nonzero_loss_cutoff=self.nonzero_loss_cutoff,
                generator=generator,
            )
            result = self.margin(normalized, triplets)
            margin, num_triplets, num_active = result.loss, result.num_triplets, result.num_active
        if lam == 1:
            total = classification
        elif lam == 0:
            total = margin
        else:
            total = lam * classification + (1 - lam) * margin
        return JointLossOutput(
            total=total,
            classification=classification,
            margin=margin,
            num_triplets=num_triplets,
            num_active=num_active,
        )
