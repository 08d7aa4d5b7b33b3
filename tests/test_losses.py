"""Distance-weighted sampling, margin loss and joint loss against brute-force references."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from multigrain.losses import (
    JointLoss,
    MarginLoss,
    Triplets,
    distance_weighted_sampling,
    margin_loss,
    negative_sampling_weights,
)
from multigrain.losses.rows import gather_rows, occurrence_rank, sum_rows_in_order
from multigrain.losses.sampling import log_inverse_sphere_density
from multigrain.runtime.errors import MultiGrainError

DIM = 8


def _points_at_distances(distances: list[float], dim: int = DIM) -> torch.Tensor:
    """Row 0 is an anchor; row k + 1 lies on the unit sphere at distances[k] from it."""
    rows = [torch.eye(dim)[0]]
    for k, d in enumerate(distances):
        theta = 2.0 * math.asin(d / 2.0)
        rows.append(math.cos(theta) * torch.eye(dim)[0] + math.sin(theta) * torch.eye(dim)[1 + k])
    return torch.stack(rows)


def _reference_probabilities(distances: list[float], dim: int = DIM) -> np.ndarray:
    """Independent float64 computation of the normalised sampling probabilities."""
    d = np.maximum(np.asarray(distances, dtype=np.float64), 0.5)
    log_w = -(dim - 2) * np.log(d) - (dim - 3) / 2 * np.log(1 - d**2 / 4)
    log_w = np.where(np.asarray(distances) < 1.4, log_w, -np.inf)
    w = np.exp(log_w - log_w.max())
    return w / w.sum()


def _chi_square(counts: np.ndarray, probabilities: np.ndarray) -> float:
    expected = counts.sum() * probabilities
    return float(((counts - expected) ** 2 / expected).sum())


def _negative_counts(embeddings: torch.Tensor, num_draws: int) -> np.ndarray:
    """Anchor 0 and row 1 share an id (one positive pair); every other row is a singleton."""
    ids = torch.tensor([0, 0, *range(1, len(embeddings) - 1)])
    generator = torch.Generator().manual_seed(123)
    counts = np.zeros(len(embeddings), dtype=np.int64)
    for _ in range(num_draws):
        triplets = distance_weighted_sampling(embeddings, ids, generator=generator)
        counts[int(triplets.negatives[triplets.anchors == 0])] += 1
    return counts[2:]


# Critical value of chi-square with 4 degrees of freedom at p = 1e-4 is ~23.5.
CHI2_CRITICAL_4DOF = 23.5


def test_negative_frequencies_follow_inverse_density() -> None:
    # Row 1 (the positive) sits at distance 0.2; negatives at varied distances.
    negative_distances = [0.3, 0.6, 0.9, 1.1, 1.3, 1.5]
    embeddings = _points_at_distances([0.2, *negative_distances])
    probabilities = _reference_probabilities(negative_distances)
    counts = _negative_counts(embeddings, num_draws=3000)
    assert counts[-1] == 0  # d >= 1.4 never drawn while others exist
    assert _chi_square(counts[:-1], probabilities[:-1]) < CHI2_CRITICAL_4DOF


def test_all_negatives_beyond_cutoff_fall_back_to_uniform() -> None:
    negative_distances = [1.5, 1.6, 1.7, 1.8, 1.9]
    embeddings = _points_at_distances([0.2, *negative_distances])
    counts = _negative_counts(embeddings, num_draws=2000)
    assert _chi_square(counts, np.full(5, 0.2)) < CHI2_CRITICAL_4DOF


def test_weights_match_reference_and_are_finite_in_high_dimension() -> None:
    negative_distances = [0.3, 0.6, 0.9, 1.1, 1.3, 1.5]
    embeddings = _points_at_distances(negative_distances)
    distances = torch.cdist(embeddings, embeddings)
    mask = torch.zeros(7, 7, dtype=torch.bool)
    mask[0, 1:] = True
    weights = negative_sampling_weights(distances, mask, DIM)[0, 1:].double()
    reference = _reference_probabilities(negative_distances)
    np.testing.assert_allclose((weights / weights.sum()).numpy(), reference, rtol=1e-4)

    # 2048-d, clustered so that distances (hence log-weights) spread widely.
    generator = torch.Generator().manual_seed(0)
    centers = torch.randn(8, 2048, generator=generator)
    noise = torch.randn(64, 2048, generator=generator) * torch.linspace(0.05, 2.0, 64)[:, None]
    embeddings = F.normalize(centers.repeat_interleave(8, dim=0) + noise, dim=1)
    ids = torch.arange(64) // 2
    distances = torch.cdist(embeddings, embeddings)
    weights = negative_sampling_weights(distances, ids[:, None] != ids[None, :], 2048)
    assert torch.isfinite(weights).all() and (weights.amax(dim=1) == 1).all()
    triplets = distance_weighted_sampling(embeddings, ids, generator=generator)
    output = margin_loss(embeddings, triplets, torch.tensor(1.2))
    assert len(triplets) == 64 and torch.isfinite(output.loss)


def test_sampler_structure_and_counts() -> None:
    generator = torch.Generator().manual_seed(1)
    embeddings = F.normalize(torch.randn(30, 16, generator=generator), dim=1)
    # Groups of size 3, 2, 1 (singleton anchors contribute nothing), 4.
    ids = torch.tensor([0, 0, 0, 1, 1, 2, 3, 3, 3, 3] * 3) + torch.arange(30) // 10 * 10
    triplets = distance_weighted_sampling(embeddings, ids, generator=generator)
    ordered_positive_pairs = sum(n * (n - 1) for n in (3, 2, 1, 4)) * 3
    assert len(triplets) == ordered_positive_pairs
    assert (ids[triplets.anchors] == ids[triplets.positives]).all()
    assert (triplets.anchors != triplets.positives).all()
    assert (ids[triplets.anchors] != ids[triplets.negatives]).all()
    pairs = set(zip(triplets.anchors.tolist(), triplets.positives.tolist(), strict=True))
    assert len(pairs) == ordered_positive_pairs
    for anchor in range(30):  # enough candidates: negatives drawn without replacement
        negatives = triplets.negatives[triplets.anchors == anchor].tolist()
        assert len(set(negatives)) == len(negatives)


def test_same_seed_same_triplets() -> None:
    embeddings = F.normalize(torch.randn(24, 8, generator=torch.Generator().manual_seed(2)), dim=1)
    ids = torch.arange(24) // 3
    first, second = (
        distance_weighted_sampling(embeddings, ids, generator=torch.Generator().manual_seed(7))
        for _ in range(2)
    )
    for a, b in zip(
        (first.anchors, first.positives, first.negatives),
        (second.anchors, second.positives, second.negatives),
        strict=True,
    ):
        assert torch.equal(a, b)


def test_every_pair_beyond_nonzero_cutoff() -> None:
    # Orthogonal-ish pairs of antipodal points: all negatives at distance >= 1.4.
    basis = torch.eye(4)
    embeddings = torch.cat([basis, -basis])[[0, 4, 1, 5]]  # ids pair antipodes
    ids = torch.tensor([0, 0, 1, 1])
    triplets = distance_weighted_sampling(embeddings, ids, generator=torch.Generator())
    assert len(triplets) == 4 and (ids[triplets.negatives] != ids[triplets.anchors]).all()
    output = margin_loss(embeddings, triplets, torch.tensor(1.2))
    assert torch.isfinite(output.loss)


def test_single_source_image_gives_no_triplets_and_zero_loss() -> None:
    embeddings = F.normalize(torch.randn(6, 8), dim=1).requires_grad_(True)
    triplets = distance_weighted_sampling(embeddings, torch.zeros(6, dtype=torch.long))
    assert len(triplets) == 0
    loss_module = MarginLoss()
    output = loss_module(embeddings, triplets)
    assert output.loss.item() == 0.0 and output.num_active == 0 and output.num_triplets == 0
    output.loss.backward()
    assert loss_module.beta.grad is not None and embeddings.grad is not None


def _brute_force_margin(e: torch.Tensor, triplets: Triplets, beta: float, alpha: float) -> float:
    total, active = 0.0, 0
    for a, p, n in zip(*(t.tolist() for t in (triplets.anchors, triplets.positives,
                                              triplets.negatives)), strict=True):  # fmt: skip
        d_ap = math.dist(e[a].tolist(), e[p].tolist())
        d_an = math.dist(e[a].tolist(), e[n].tolist())
        for term in (max(0.0, alpha + d_ap - beta), max(0.0, alpha - d_an + beta)):
            total += term
            active += term > 0
    return total / active if active else 0.0


def test_margin_loss_matches_brute_force() -> None:
    e = F.normalize(torch.randn(10, 6, generator=torch.Generator().manual_seed(3)), dim=1)
    triplets = Triplets(
        torch.tensor([0, 1, 2, 3, 4, 5]),
        torch.tensor([1, 0, 3, 2, 5, 4]),
        torch.tensor([6, 7, 8, 9, 6, 7]),
    )
    for beta in (0.3, 1.2, 1.9):
        output = margin_loss(e, triplets, torch.tensor(beta), alpha=0.2)
        assert output.loss.item() == pytest.approx(_brute_force_margin(e, triplets, beta, 0.2))


def test_margin_loss_counts_terms_not_triplets() -> None:
    # Triplet 1: positive at 0.1 (term 0), negative at 1.0 (term 0.4); triplet 2: positive at
    # 1.5 (term 0.5), negative at 1.0 (term 0.4). Three non-zero terms: 1.3 / 3. Adding the
    # two bool masks (a logical OR) would count two triplets and give 1.3 / 2.
    e = _points_at_distances([0.1, 1.0, 1.5, 1.0])
    triplets = Triplets(torch.tensor([0, 0]), torch.tensor([1, 3]), torch.tensor([2, 4]))
    beta = torch.tensor(1.2, requires_grad=True)
    output = margin_loss(e, triplets, beta, alpha=0.2)
    # Terms: (0, 0.4) and (0.5, 0.4) -> 3 non-zero terms, loss 1.3 / 3.
    assert output.num_active == 3 and output.num_triplets == 2
    assert output.loss.item() == pytest.approx(1.3 / 3, abs=1e-5)
    assert output.loss.item() == pytest.approx(_brute_force_margin(e, triplets, 1.2, 0.2))
    assert output.positive_distance_mean == pytest.approx(0.8, abs=1e-5)
    output.loss.backward()  # d/dβ: -1 per active positive term, +1 per active negative
    assert beta.grad is not None and beta.grad.item() == pytest.approx(1 / 3)


def _batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    embeddings = torch.randn(12, 16, generator=generator, requires_grad=True)
    logits = torch.randn(12, 5, generator=generator, requires_grad=True)
    labels = torch.randint(0, 5, (12,), generator=generator)
    return embeddings, logits, labels, torch.arange(12) // 3


def test_joint_loss_extremes() -> None:
    embeddings, logits, labels, ids = _batch()
    classification_only = JointLoss(classification_weight=1.0)(embeddings, logits, labels, ids)
    expected = F.cross_entropy(logits, labels)
    torch.testing.assert_close(classification_only.total, expected)
    assert classification_only.margin.item() == 0 and classification_only.num_triplets == 0

    joint = JointLoss(classification_weight=0.0)
    margin_only = joint(embeddings, logits, labels, ids, generator=torch.Generator().manual_seed(5))
    normalized = F.normalize(embeddings, dim=1)
    triplets = distance_weighted_sampling(
        normalized, ids, generator=torch.Generator().manual_seed(5)
    )
    expected_margin = margin_loss(normalized, triplets, joint.margin.beta)
    torch.testing.assert_close(margin_only.total, expected_margin.loss)
    assert margin_only.classification.item() == 0
    assert margin_only.num_triplets == 24 and margin_only.num_active == expected_margin.num_active


def test_joint_loss_combines_and_reaches_beta() -> None:
    embeddings, logits, labels, ids = _batch(seed=1)
    loss = JointLoss(classification_weight=0.5)
    output = loss(embeddings, logits, labels, ids, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(output.total, 0.5 * output.classification + 0.5 * output.margin)
    output.total.backward()
    assert loss.margin.beta.grad is not None and torch.isfinite(loss.margin.beta.grad)
    assert embeddings.grad is not None and logits.grad is not None


def test_joint_loss_margin_on_separate_batch() -> None:
    embeddings, logits, labels, ids = _batch(seed=2)
    loss = JointLoss(classification_weight=0.5)
    local = embeddings[:6]
    output = loss(
        local, logits[:6], labels[:6], ids[:6],
        generator=torch.Generator().manual_seed(0),
        margin_embeddings=embeddings, margin_instance_ids=ids,
    )  # fmt: skip
    reference = loss(embeddings, logits, labels, ids, generator=torch.Generator().manual_seed(0))
    assert output.num_triplets == 24
    torch.testing.assert_close(output.margin, reference.margin)
    torch.testing.assert_close(output.classification, F.cross_entropy(logits[:6], labels[:6]))
    with pytest.raises(MultiGrainError, match="together"):
        loss(local, logits[:6], labels[:6], ids[:6], margin_embeddings=embeddings)


@pytest.mark.parametrize("weight", [-0.1, 1.5])
def test_joint_loss_validates_lambda(weight: float) -> None:
    with pytest.raises(MultiGrainError, match=r"classification_weight\) must be in \[0, 1\]"):
        JointLoss(classification_weight=weight)


def test_sampler_validates_inputs() -> None:
    with pytest.raises(MultiGrainError, match="instance_ids"):
        distance_weighted_sampling(torch.randn(4, 3), torch.zeros(5, dtype=torch.long))
    with pytest.raises(MultiGrainError, match="cutoff"):
        distance_weighted_sampling(torch.randn(4, 3), torch.zeros(4), cutoff=2.0)


def test_sampling_without_replacement_survives_float32_underflow() -> None:
    """2048-d: an anchor with 2 positives, one hard negative (d = 1.0) and 8 others at
    d = 1.3, whose weights are ~1e-117 of the hard one's (0 in float32, not in float64):
    it has 9 candidates, so its 2 negatives are always distinct (issue 18, item 3)."""
    dim = 2048
    basis = torch.eye(dim, dtype=torch.float64)

    def at_distance(d: float, axis: int) -> torch.Tensor:
        cos = 1 - d * d / 2
        return cos * basis[0] + (1 - cos * cos) ** 0.5 * basis[axis]

    rows = [basis[0], at_distance(0.05, 1), at_distance(0.05, 2), at_distance(1.0, 3)]
    rows += [at_distance(1.3, 4 + k) for k in range(8)]
    embeddings = torch.stack(rows).float()
    ids = torch.tensor([0, 0, 0, *range(1, 10)])
    log_w = log_inverse_sphere_density(torch.tensor([1.0, 1.3], dtype=torch.float64), dim)
    assert float(torch.exp(log_w[1] - log_w[0]).float()) == 0.0  # what float32 did
    assert float(torch.exp(log_w[1] - log_w[0])) > 0.0
    for seed in range(50):
        triplets = distance_weighted_sampling(
            embeddings, ids, generator=torch.Generator().manual_seed(seed)
        )
        of_anchor = triplets.negatives[triplets.anchors == 0].tolist()
        assert len(of_anchor) == 2 and len(set(of_anchor)) == 2, of_anchor


@pytest.fixture
def two_threads():
    """torch's intra-op threads set to 2 for the test (the parallel kernels' path)."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def _margin_gradient(embeddings: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """d(joint margin loss)/d(embeddings) with a fixed negative draw."""
    e = embeddings.clone().requires_grad_(True)
    output = JointLoss(classification_weight=0.0)(
        e, torch.zeros(len(e), 2), torch.zeros(len(e), dtype=torch.long), ids,
        generator=torch.Generator().manual_seed(5),
    )  # fmt: skip
    output.total.backward()
    assert e.grad is not None
    return e.grad


def _reference_margin_gradient(embeddings: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """The same gradient through plain advanced indexing, on one thread (serial sums)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        e = embeddings.clone().requires_grad_(True)
        normalized = F.normalize(e, dim=1)
        triplets = distance_weighted_sampling(
            normalized, ids, generator=torch.Generator().manual_seed(5)
        )
        a, p, n = (
            normalized[triplets.anchors],
            normalized[triplets.positives],
            normalized[triplets.negatives],
        )
        beta, alpha = 1.2, 0.2
        positive = torch.relu(alpha + (a - p).pow(2).sum(1).clamp(min=1e-12).sqrt() - beta)
        negative = torch.relu(alpha - (a - n).pow(2).sum(1).clamp(min=1e-12).sqrt() + beta)
        active = int((positive > 0).sum()) + int((negative > 0).sum())
        ((positive.sum() + negative.sum()) / max(active, 1)).backward()
    finally:
        torch.set_num_threads(before)
    assert e.grad is not None
    return e.grad


def test_margin_gradient_is_reproducible_with_two_threads(two_threads) -> None:
    # 48 sources x 3 copies of 512-d: 288 triplets, 147k gradient entries gathered back onto
    # 144 rows, enough for torch's parallel (unordered) accumulation on CPU: issue 16
    embeddings = torch.randn(144, 512, generator=torch.Generator().manual_seed(0))
    ids = torch.arange(48).repeat_interleave(3)
    first = _margin_gradient(embeddings, ids)
    different = sum(not torch.equal(first, _margin_gradient(embeddings, ids)) for _ in range(10))
    assert different == 0
    reference = _reference_margin_gradient(embeddings, ids)
    torch.testing.assert_close(first, reference, rtol=1e-6, atol=1e-9)


def test_occurrence_rank_counts_earlier_equal_entries() -> None:
    index = torch.tensor([4, 1, 4, 4, 1, 0])
    assert occurrence_rank(index).tolist() == [0, 0, 1, 2, 1, 0]
    assert occurrence_rank(torch.zeros(0, dtype=torch.long)).tolist() == []


def test_rows_are_summed_in_index_order() -> None:
    generator = torch.Generator().manual_seed(0)
    # magnitudes far apart, so that another order of the additions rounds differently
    values = torch.randn(200, 7, generator=generator) * 10.0 ** torch.randint(
        -6, 6, (200, 1), generator=generator
    )
    index = torch.randint(0, 9, (200,), generator=generator)
    expected = torch.zeros(11, 7)  # rows 9 and 10 are never picked: they stay 0
    for t in range(200):  # the serial reference, one addition at a time
        expected[index[t]] += values[t]
    assert torch.equal(sum_rows_in_order(values, index, 11), expected)
    empty = sum_rows_in_order(values[:0], index[:0], 3)
    assert torch.equal(empty, torch.zeros(3, 7))


def test_gather_rows_matches_indexing(two_threads) -> None:
    source = torch.randn(30, 600, generator=torch.Generator().manual_seed(1))
    index = torch.randint(0, 30, (400,), generator=torch.Generator().manual_seed(2))
    weights = torch.randn(400, 600, generator=torch.Generator().manual_seed(3))
    leaf = source.clone().requires_grad_(True)
    picked = gather_rows(leaf, index)
    assert torch.equal(picked, source[index])
    (picked * weights).sum().backward()
    expected = torch.zeros(30, 600)
    for t in range(400):
        expected[index[t]] += weights[t]
    assert leaf.grad is not None and torch.equal(leaf.grad, expected)
