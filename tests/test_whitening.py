"""PCA whitening: identity covariance, top components, folding into the classifier, files."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from multigrain.models import MultiGrain
from multigrain.runtime.errors import MultiGrainError
from multigrain.search.classifier_fold import descriptor_classifier, fold_into_classifier
from multigrain.search.whitening import CONSTANT_SCALE, Whitening, WhiteningInput, fit_whitening


def correlated(num: int, dim: int, seed: int = 0) -> torch.Tensor:
    """(num, dim) L2-normalised rows with a strongly anisotropic covariance."""
    generator = torch.Generator().manual_seed(seed)
    mixing = torch.randn(dim, dim, generator=generator, dtype=torch.float64)
    scales = torch.logspace(0, -2, dim, dtype=torch.float64)
    x = torch.randn(num, dim, generator=generator, dtype=torch.float64) * scales @ mixing
    x = x + 0.5 * torch.randn(dim, generator=generator, dtype=torch.float64)
    return nn.functional.normalize(x, dim=1)


def covariance(x: torch.Tensor) -> torch.Tensor:
    centred = x - x.mean(dim=0)
    return centred.T @ centred / (x.shape[0] - 1)


def test_whitened_descriptors_have_identity_covariance():
    x = correlated(500, 16)
    whitening = fit_whitening(x)
    w = whitening.transform_unnormalised(x)
    assert w.dtype == torch.float64 and w.shape == (500, 16)
    torch.testing.assert_close(covariance(w), torch.eye(16, dtype=torch.float64), atol=1e-6, rtol=0)
    torch.testing.assert_close(
        w.mean(dim=0), torch.zeros(16, dtype=torch.float64), atol=1e-9, rtol=0
    )
    # float32 input: same transform, float32 output
    w32 = whitening.transform_unnormalised(x.float())
    assert w32.dtype == torch.float32
    torch.testing.assert_close(
        covariance(w32.double()), torch.eye(16, dtype=torch.float64), atol=1e-4, rtol=0
    )


def test_apply_is_unit_norm_and_power_zero_is_a_rotation():
    x = correlated(200, 8)
    descriptors = fit_whitening(x).apply(x.float())
    assert descriptors.dtype == torch.float32
    torch.testing.assert_close(descriptors.norm(dim=1), torch.ones(200))
    rotation = fit_whitening(x, power=0.0)
    projection = rotation.projection
    torch.testing.assert_close(projection.T @ projection, torch.eye(8, dtype=torch.float64))
    # a rotation keeps distances between centred descriptors
    w = rotation.transform_unnormalised(x)
    torch.testing.assert_close(torch.cdist(w, w), torch.cdist(x, x))


def test_dimension_reduction_keeps_the_top_principal_components():
    x = correlated(300, 12, seed=1)
    whitening = fit_whitening(x, dim=4, power=0.0)
    centred = (x - x.mean(dim=0)).numpy()
    _, singular, vt = np.linalg.svd(centred, full_matrices=False)
    expected_eigenvalues = singular[:4] ** 2 / (300 - 1)
    np.testing.assert_allclose(whitening.eigenvalues.numpy(), expected_eigenvalues, rtol=1e-8)
    # the same subspaces up to sign: |<v_k, u_k>| = 1
    overlaps = np.abs(np.sum(whitening.projection.numpy() * vt[:4].T, axis=0))
    np.testing.assert_allclose(overlaps, np.ones(4), atol=1e-6)
    # whitened: each kept component has unit variance
    w = fit_whitening(x, dim=4).transform_unnormalised(x)
    torch.testing.assert_close(covariance(w), torch.eye(4, dtype=torch.float64), atol=1e-6, rtol=0)


def test_shrinkage_damps_the_weakest_components():
    x = correlated(300, 12, seed=2)
    full = fit_whitening(x)
    shrunk = fit_whitening(x, shrinkage=0.5)
    full_scale = full.projection.norm(dim=0)
    shrunk_scale = shrunk.projection.norm(dim=0)
    assert torch.all(shrunk_scale < full_scale)
    ratio = shrunk_scale / full_scale
    assert ratio[-1] < ratio[0]  # the smallest eigenvalue is damped the most


def _classifier_and_embeddings() -> tuple[nn.Linear, torch.Tensor, torch.Tensor]:
    """A ResNet-18 head with a non-trivial bias and its (600, 512) raw embeddings, logits."""
    torch.manual_seed(0)
    model = MultiGrain(trunk="resnet18", num_classes=10, small_input=True).eval()
    with torch.no_grad():
        model.classifier.weight.normal_(0, 1.0)
        features = model.forward_features(torch.randn(600, 3, 8, 8))
        # random-init embeddings share a large mean: cancel it in the bias so the
        # predictions vary from image to image, and keep a non-trivial bias
        mean_logits = model.classifier(model.pool(features)).mean(dim=0)
        model.classifier.bias.sub_(mean_logits).add_(0.1 * torch.randn(10))
        embeddings, logits = model.forward_head(features)
    assert logits.argmax(dim=1).unique().numel() > 3
    assert embeddings.shape == (600, 512)
    return model.classifier, embeddings, logits


@pytest.mark.parametrize("kind", [WhiteningInput.RAW, WhiteningInput.UNIT_WITH_ONE])
def test_fold_into_classifier_reproduces_the_logits(kind: WhiteningInput):
    classifier, embeddings, logits = _classifier_and_embeddings()
    whitening = fit_whitening(embeddings, shrinkage=1e-3, input=kind)  # full d, well conditioned
    folded = fold_into_classifier(classifier, whitening)
    assert (folded.in_features, folded.out_features) == (whitening.kept_dim, 10)
    with torch.no_grad():
        unnormalised = whitening.transform_unnormalised(embeddings.double()).float()
        scale = whitening.logit_scale(embeddings.double()).float()  # ||[e, 1]|| or 1
        torch.testing.assert_close(folded(unnormalised) * scale, logits, atol=1e-4, rtol=1e-4)


def test_unit_with_one_whitens_the_authors_input():
    """UNIT_WITH_ONE is a PCA of l2n([e, 1]) (reference: numpy on that input)."""
    generator = torch.Generator().manual_seed(7)
    raw = torch.randn(300, 6, generator=generator, dtype=torch.float64).abs() * 3
    whitening = fit_whitening(raw, input=WhiteningInput.UNIT_WITH_ONE, constant=False)
    assert whitening.input_dim == 6 and whitening.projection.shape == (7, 7)  # D + 1 inputs
    x = np.concatenate([raw.numpy(), np.ones((300, 1))], axis=1)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    np.testing.assert_allclose(whitening.mean.numpy(), x.mean(axis=0), rtol=1e-12)
    w = whitening.transform_unnormalised(raw)
    torch.testing.assert_close(covariance(w), torch.eye(7, dtype=torch.float64), atol=1e-6, rtol=0)


def test_an_older_demo_whitening_applies_to_normalised_embeddings(tmp_path):
    """Demo whitenings written before the input map was stored were fitted on l2n(e): they
    load as UNIT, whiten what they were fitted on, and refuse to fold (the bias is gone)."""
    raw = correlated(200, 8) * 5.0
    old = fit_whitening(nn.functional.normalize(raw, dim=1), constant=False,
                        fitted_on={"input": "normalised embedding"})  # fmt: skip
    path = tmp_path / "whitening.pt"
    torch.save(old.to_dict(), path)
    loaded = Whitening.load(path)
    assert loaded.input is WhiteningInput.UNIT
    torch.testing.assert_close(loaded.apply(raw), old.apply(nn.functional.normalize(raw, dim=1)))
    with pytest.raises(MultiGrainError, match="cannot be folded"):
        fold_into_classifier(nn.Linear(8, 3), loaded)


@pytest.mark.parametrize("kind", [WhiteningInput.RAW, WhiteningInput.UNIT_WITH_ONE])
def test_the_stored_unit_descriptor_classifies_as_the_raw_embedding(kind: WhiteningInput):
    """Issue 18 item 2: top-1 from the vector users keep equals top-1 from the raw one."""
    classifier, embeddings, logits = _classifier_and_embeddings()
    whitening = fit_whitening(embeddings, shrinkage=1e-3, input=kind)  # full dimension
    stored = whitening.apply(embeddings)  # unit vectors, what embed writes
    assert stored.shape == (600, whitening.kept_dim + 1)
    torch.testing.assert_close(stored.norm(dim=1), torch.ones(600))
    scores_of = descriptor_classifier(classifier, whitening)
    assert (scores_of.in_features, scores_of.bias) == (whitening.output_dim, None)
    with torch.no_grad():
        scores = scores_of(stored)
        # scores = logits / (||[w, c]|| x logit_scale), a positive multiple per image
        # (reference: the raw embedding through the original classifier)
        w = whitening.transform_unnormalised(embeddings.double())
        lengths = torch.cat([w, torch.full_like(w[:, :1], whitening.constant)], 1).norm(dim=1)
        lengths = lengths[:, None] * whitening.logit_scale(embeddings.double())
        torch.testing.assert_close(scores * lengths.float(), logits, atol=2e-4, rtol=1e-4)
        assert torch.equal(scores.argmax(dim=1), logits.argmax(dim=1))
        assert torch.equal(scores.topk(3).indices, logits.topk(3).indices)
        # what failed before: the folded classifier on the unit vector without the
        # constant (its bias b' = b + W mu is not scaled by 1 / ||w||)
        folded = fold_into_classifier(classifier, whitening)
        naive = folded(nn.functional.normalize(w.float(), dim=1))
    assert (naive.argmax(dim=1) == logits.argmax(dim=1)).float().mean() < 0.9


def test_the_constant_leaves_retrieval_unchanged():
    x = correlated(300, 12, seed=4)
    plain = fit_whitening(x, constant=False)
    with_constant = fit_whitening(x)
    assert plain.constant == 0 and plain.output_dim == 12 and with_constant.output_dim == 13
    # c = CONSTANT_SCALE x the RMS norm of w on the fitting set
    w = plain.transform_unnormalised(x)
    rms = w.pow(2).sum(dim=1).mean().sqrt() * ((300 - 1) / 300) ** -0.5  # unbiased covariance
    assert with_constant.constant == pytest.approx(CONSTANT_SCALE * float(rms), rel=1e-9)
    a, b = plain.apply(x), with_constant.apply(x)
    torch.testing.assert_close(b[:, :12] @ b[:, :12].T + b[:, 12:] @ b[:, 12:].T, b @ b.T)
    assert (b @ b.T - a @ a.T).abs().max() < 10 * CONSTANT_SCALE**2
    assert plain.fingerprint != with_constant.fingerprint


def test_a_whitening_without_the_constant_refuses_to_classify_descriptors():
    whitening = fit_whitening(correlated(100, 8), constant=False)
    with pytest.raises(MultiGrainError, match="refit it with `multigrain whiten`"):
        descriptor_classifier(nn.Linear(8, 3), whitening)


def test_fold_with_reduced_dimension_projects_on_the_kept_subspace():
    x = correlated(300, 12, seed=3)
    classifier = nn.Linear(12, 5)
    whitening = fit_whitening(x, dim=6)
    folded = fold_into_classifier(classifier, whitening)
    basis = whitening.projection / whitening.projection.norm(dim=0)  # orthonormal V_d
    reconstructed = (x - whitening.mean) @ basis @ basis.T + whitening.mean
    with torch.no_grad():
        expected = classifier(reconstructed.float())
        got = folded(whitening.transform_unnormalised(x).float())
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_save_load_round_trip(tmp_path):
    x = correlated(100, 8)
    whitening = fit_whitening(x, dim=5, fitted_on={"source": "synthetic", "s": 500, "p": 3.0})
    path = whitening.save(tmp_path / "sub" / "whitening.pt")
    state = torch.load(path, weights_only=True)
    assert state["kind"] == "multigrain.whitening"
    loaded = Whitening.load(path)
    assert loaded.fitted_on == {
        "num_descriptors": 100,
        "power": 0.5,
        "shrinkage": 0.0,
        "source": "synthetic",
        "s": 500,
        "p": 3.0,
    }
    for name in ("mean", "projection", "eigenvalues"):
        assert torch.equal(getattr(loaded, name), getattr(whitening, name))
    assert loaded.constant == whitening.constant > 0 and state["format_version"] == 2
    assert loaded.fingerprint == whitening.fingerprint
    assert not list(path.parent.glob(".*.tmp"))


def test_a_file_from_before_the_constant_keeps_its_descriptors(tmp_path):
    """A format-1 file (no constant) loads as it was: d-long descriptors, same fingerprint."""
    x = correlated(100, 8)
    old = fit_whitening(x, dim=5, constant=False)
    state = old.to_dict()
    assert state["format_version"] == 1 and "constant" not in state
    path = tmp_path / "old.pt"
    torch.save(state, path)
    loaded = Whitening.load(path)
    assert loaded.constant == 0 and loaded.output_dim == 5
    assert loaded.fingerprint == old.fingerprint
    torch.testing.assert_close(loaded.apply(x), old.apply(x))


def test_load_errors(tmp_path):
    with pytest.raises(MultiGrainError, match="does not exist"):
        Whitening.load(tmp_path / "missing.pt")
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a torch file")
    with pytest.raises(MultiGrainError, match="cannot load whitening"):
        Whitening.load(garbage)
    other = tmp_path / "other.pt"
    torch.save({"model_state": {}}, other)
    with pytest.raises(MultiGrainError, match="not a multigrain whitening"):
        Whitening.load(other)


def test_bad_inputs_raise():
    x = correlated(20, 8)
    with pytest.raises(MultiGrainError, match="descriptor size"):
        fit_whitening(x, dim=9)
    with pytest.raises(MultiGrainError, match="needs at least"):
        fit_whitening(correlated(5, 8), dim=6)
    with pytest.raises(MultiGrainError, match=r"\(N, D\)"):
        fit_whitening(x[0])
    with pytest.raises(MultiGrainError, match="NaN"):
        fit_whitening(torch.full((4, 3), float("nan")))
    # rank 2 data in 8 dimensions: full whitening of 4 components is ill-defined
    low_rank = torch.randn(50, 2, dtype=torch.float64) @ torch.randn(2, 8, dtype=torch.float64)
    with pytest.raises(MultiGrainError, match="shrinkage"):
        fit_whitening(low_rank, dim=4)
    fit_whitening(low_rank, dim=4, shrinkage=0.1)  # regularised: fine
    whitening = fit_whitening(x, dim=4)
    with pytest.raises(MultiGrainError, match="expects 8"):
        whitening.apply(torch.randn(3, 7))
    with pytest.raises(MultiGrainError, match="fitted on 8-d"):
        fold_into_classifier(nn.Linear(7, 3), whitening)
