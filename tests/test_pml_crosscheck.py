"""Cross-check of the miner and the margin loss against pytorch-metric-learning (issue 18).

Same inputs, unit vectors, to both; the definitional differences, which the tests keep apart:

* PML's distances normalise the embeddings themselves (``LpDistance(normalize_embeddings=
  True)``); ours expect unit vectors. Unit inputs make the two the same.
* PML's miner draws, per anchor, as many triplets as the anchor has positives, each negative
  *with* replacement (``get_random_triplet_indices``) and each positive at random; ours pairs
  every ordered positive pair with one negative drawn *without* replacement when there are
  enough candidates. So the triplets differ; the sampling probabilities must not.
* PML subtracts one *global* maximum of the log-weights before ``exp``; we subtract each
  row's. In 2048-d log-weights span over a thousand nats across rows, so PML's weights of an
  anchor whose negatives are all far underflow to 0 (its row then becomes 0/0 and the anchor
  is dropped), where ours keep its distribution.
"""

from __future__ import annotations

from typing import Any

import torch
from pytorch_metric_learning import losses as pml_losses
from pytorch_metric_learning import miners as pml_miners
from pytorch_metric_learning.miners import distance_weighted_miner

from multigrain.losses.margin import margin_loss
from multigrain.losses.sampling import distance_weighted_sampling, negative_sampling_weights


def clustered_unit_vectors(num_ids: int, copies: int, dim: int, seed: int) -> tuple[Any, Any]:
    """(num_ids * copies, dim) unit rows, copies of an id close together; their ids."""
    generator = torch.Generator().manual_seed(seed)
    centres = torch.randn(num_ids, dim, generator=generator)
    ids = torch.arange(num_ids).repeat_interleave(copies)
    rows = centres[ids] + 0.6 * torch.randn(len(ids), dim, generator=generator)
    return torch.nn.functional.normalize(rows, dim=1), ids


def pml_weights(embeddings: torch.Tensor, ids: torch.Tensor, monkeypatch: Any) -> torch.Tensor:
    """The row-normalised weights PML's DistanceWeightedMiner hands to its triplet draw."""
    seen: dict[str, torch.Tensor] = {}
    original = distance_weighted_miner.lmu.get_random_triplet_indices

    def capture(labels: Any, ref_labels: Any = None, t_per_anchor: Any = None, weights: Any = None):
        seen["weights"] = weights.detach().clone()
        return original(labels, ref_labels=ref_labels, t_per_anchor=t_per_anchor, weights=weights)

    monkeypatch.setattr(distance_weighted_miner.lmu, "get_random_triplet_indices", capture)
    miner = pml_miners.DistanceWeightedMiner(cutoff=0.5, nonzero_loss_cutoff=1.4)
    miner(embeddings, ids)
    return seen["weights"]


def test_margin_loss_equals_pmls_on_the_same_triplets() -> None:
    embeddings, ids = clustered_unit_vectors(8, 3, 32, seed=0)
    triplets = distance_weighted_sampling(
        embeddings, ids, generator=torch.Generator().manual_seed(1)
    )
    assert len(triplets) == 8 * 3 * 2
    ours_input = embeddings.clone().requires_grad_(True)
    ours = margin_loss(ours_input, triplets, torch.tensor(1.2), alpha=0.2)
    theirs_input = embeddings.clone().requires_grad_(True)
    loss = pml_losses.MarginLoss(margin=0.2, nu=0.0, beta=1.2, learn_beta=False)
    theirs = loss(
        theirs_input, ids, indices_tuple=(triplets.anchors, triplets.positives, triplets.negatives)
    )
    assert 0 < ours.num_active <= 2 * len(triplets)
    torch.testing.assert_close(ours.loss, theirs, rtol=1e-5, atol=1e-6)
    ours.loss.backward()
    theirs.backward()
    assert ours_input.grad is not None and theirs_input.grad is not None
    # PML differentiates through its own normalisation x / ||x||, which at a unit vector
    # removes the radial part of the gradient: (I - e e^T) g
    radial = (ours_input.grad * embeddings).sum(dim=1, keepdim=True) * embeddings
    torch.testing.assert_close(ours_input.grad - radial, theirs_input.grad, rtol=1e-4, atol=1e-6)


def test_sampling_probabilities_equal_pmls_in_low_dimension(monkeypatch: Any) -> None:
    embeddings, ids = clustered_unit_vectors(10, 3, 32, seed=2)
    theirs = pml_weights(embeddings, ids, monkeypatch).double()
    e = embeddings.double()
    distances = torch.cdist(e, e, compute_mode="donot_use_mm_for_euclid_dist")
    ours = negative_sampling_weights(distances, ids[:, None] != ids[None, :], 32)
    ours = ours / ours.sum(dim=1, keepdim=True)
    assert torch.isfinite(theirs).all() and (theirs.sum(dim=1) > 0).all()  # no underflow at 32-d
    torch.testing.assert_close(ours, theirs, rtol=2e-4, atol=1e-7)


def test_in_2048_dimensions_pmls_global_maximum_drops_anchors_ours_keep(monkeypatch) -> None:
    """Near negatives (d ~ 0.6) for some anchors, only far ones (d ~ 1.3) for others."""
    dim, generator = 2048, torch.Generator().manual_seed(3)
    basis = torch.linalg.qr(torch.randn(dim, 12, generator=generator, dtype=torch.float64))[0].T
    common = basis[0]
    far = [(0.16**0.5) * common + (0.84**0.5) * basis[k] for k in range(1, 6)]  # cos ~ 0.16
    near = 0.82 * far[0] + (1 - 0.82**2) ** 0.5 * basis[6]  # cos 0.82 with far[0]: d ~ 0.6
    centres = torch.stack([far[0], near, *far[1:]])  # 6 instances
    ids = torch.arange(6).repeat_interleave(2)
    noise = 0.02 * torch.randn(len(ids), dim, generator=generator, dtype=torch.float64)
    embeddings = torch.nn.functional.normalize(centres[ids] + noise, dim=1).float()
    theirs = pml_weights(embeddings, ids, monkeypatch)
    e = embeddings.double()
    distances = torch.cdist(e, e, compute_mode="donot_use_mm_for_euclid_dist")
    negatives = ids[:, None] != ids[None, :]
    assert distances[negatives].max() < 1.4  # every negative is a candidate for both
    ours = negative_sampling_weights(distances, negatives, dim)
    far_rows = ids >= 2  # anchors whose negatives are all at d ~ 1.3
    assert (ours[far_rows].sum(dim=1) > 0).all()  # every anchor keeps a distribution
    dropped = ~(theirs[far_rows].nan_to_num(0.0).sum(dim=1) > 0)
    assert dropped.all()  # PML: exp(-1000 nats) = 0 for all of them
    # where PML's rows survive (the anchors with a near negative), both agree
    kept = ~far_rows
    normalised = ours[kept] / ours[kept].sum(dim=1, keepdim=True)
    torch.testing.assert_close(normalised, theirs[kept].double(), rtol=1e-3, atol=1e-6)
