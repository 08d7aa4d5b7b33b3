"""PCA whitening of retrieval descriptors, and folding it into the classifier (SPEC §4).

Fit on the raw (not L2-normalised) GeM embeddings x of a separate image set, at the same
s and p* as the descriptors it will whiten:

    mu = mean_i x_i,    C = cov(x) = V diag(lambda) V^T   (eigenvalues sorted descending)
    P  = V_d diag((lambda_d + shrinkage * mean(lambda))^(-power))          (D, d)
    w(x) = (x - mu) P,   descriptor(x) = normalise([w(x), c])              (d + 1,)

Raw, not unit-length, because the classifier reads the raw embedding: logits(x) = x W^T + b
is then an affine function of w, and the stored descriptor alone gives the class. The
constant coordinate c (the authors' appended constant) carries the folded bias: with
W' = W P^-T and b' = b + W mu (:func:`fold_into_classifier`),

    descriptor · [W', b' / c]^T = (w W'^T + b') / ||[w, c]|| = logits(x) / ||[w, c]||,

a positive multiple of the logits, so :func:`descriptor_classifier` gives the raw
embedding's top-k from the unit vector users store (exactly when d = D). Without it, the
bias b' is not scaled by 1/||w|| and top-1 agreed with the raw embedding's on 77 % of the
shipped model's held-out photos. c = :data:`CONSTANT_SCALE` x the RMS norm of w over the
fitting set, so it moves a cosine by at most ~CONSTANT_SCALE^2: retrieval is unchanged.
Measured (``benchmarks/whitened_classification.py``): fitting on raw embeddings against
fitting on L2-normalised ones, and top-1 for each kept dimension d.

``power = 0.5`` is full whitening (the whitened training descriptors have identity
covariance), ``power = 0`` a PCA rotation/projection only; ``shrinkage > 0`` damps the
weakest directions, which full whitening would otherwise amplify the most.

Everything is stored and computed in float64; :meth:`Whitening.apply` returns the dtype
of its input.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from multigrain.runtime.atomic import atomic_write
from multigrain.runtime.errors import MultiGrainError
from multigrain.runtime.tensor_files import load_tensor_file

logger = logging.getLogger(__name__)

#: The appended coordinate c as a share of the RMS norm of the whitened fitting vectors:
#: small enough that cosines move by ~1e-6, large enough to be exact in float32 and to
#: survive float16 storage (relative precision 1e-3 of a ~1e-3 value).
CONSTANT_SCALE = 1e-3

FORMAT_VERSION = 2  # 2: the constant coordinate (files without one are written as 1)
Metadata = dict[str, str | int | float]


@dataclass(frozen=True)
class Whitening:
    """A fitted PCA whitening ``x -> normalise((x - mean) @ projection)``.

    Attributes:
        mean: (D,) float64 mean of the fitting descriptors.
        projection: (D, d) float64 matrix ``V_d diag(scale)``.
        eigenvalues: (d,) float64 covariance eigenvalues of the kept components, descending.
        fitted_on: free metadata (number of descriptors, source, s, p, model identity, ...).
        constant: c > 0, the coordinate appended before normalising (descriptors are then
            d + 1 long and classify: :func:`descriptor_classifier`); 0 for none (whitenings
            fitted before it existed, whose descriptors stay as they were).
    """

    mean: Tensor
    projection: Tensor
    eigenvalues: Tensor
    fitted_on: Metadata = field(default_factory=dict)
    constant: float = 0.0

    @property
    def input_dim(self) -> int:
        """D, the dimension of the raw descriptors."""
        return int(self.projection.shape[0])

    @property
    def kept_dim(self) -> int:
        """d, the number of principal components kept."""
        return int(self.projection.shape[1])

    @property
    def output_dim(self) -> int:
        """The dimension of the descriptors: d, plus one with the constant coordinate."""
        return self.kept_dim + (1 if self.constant > 0 else 0)

    @property
    def fingerprint(self) -> str:
        """``sha256:<16 hex>`` of the mean, projection (float64 bytes) and constant."""
        digest = hashlib.sha256()
        for tensor in (self.mean, self.projection):
            digest.update(tensor.detach().cpu().double().contiguous().numpy().tobytes())
        if self.constant > 0:  # whitenings without one keep the fingerprint they had
            digest.update(f"constant={self.constant!r}".encode())
        return f"sha256:{digest.hexdigest()[:16]}"

    def with_constant(self, scale: float = CONSTANT_SCALE) -> Whitening:
        """This whitening with the constant coordinate c = scale x RMS ||w|| on its fitting
        set, computed from the stored spectrum: E||w||^2 = sum_k lambda_k ||P[:, k]||^2."""
        if scale <= 0:
            raise MultiGrainError(f"the constant's scale must be > 0, got {scale}")
        column_norms = self.projection.double().pow(2).sum(dim=0)
        mean_square = float((self.eigenvalues.double() * column_norms).sum())
        if not mean_square > 0:  # NaN eigenvalues (a format-1 index) or a zero spectrum
            raise MultiGrainError(
                "this whitening has no spectrum to size the constant from: refit it with "
                "`multigrain whiten`"
            )
        return dataclasses.replace(self, constant=scale * mean_square**0.5)

    def transform_unnormalised(self, x: Tensor) -> Tensor:
        """x: (N, D) -> (N, d) ``(x - mean) @ projection``, in x's dtype (computed in float64)."""
        _check_descriptors(x, self.input_dim)
        mean = self.mean.to(x.device)
        projection = self.projection.to(x.device)
        return ((x.double() - mean) @ projection).to(x.dtype)

    def apply(self, x: Tensor) -> Tensor:
        """x: (N, D) raw embeddings -> (N, output_dim) unit-norm descriptors
        ``normalise([(x - mean) @ projection, constant])`` (no constant column when 0)."""
        whitened = self.transform_unnormalised(x.double())
        if self.constant > 0:
            column = torch.full_like(whitened[:, :1], self.constant)
            whitened = torch.cat([whitened, column], dim=1)
        return nn.functional.normalize(whitened, dim=1).to(x.dtype)

    def to_dict(self) -> dict[str, Any]:
        """Plain tensors and primitives, loadable with ``torch.load(weights_only=True)``."""
        state: dict[str, Any] = {
            "format_version": FORMAT_VERSION if self.constant > 0 else 1,
            "kind": "multigrain.whitening",
            "mean": self.mean.cpu(),
            "projection": self.projection.cpu(),
            "eigenvalues": self.eigenvalues.cpu(),
            "fitted_on": dict(self.fitted_on),
        }
        if self.constant > 0:  # a version-1 reader would drop it silently: version 2
            state["constant"] = float(self.constant)
        return state

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write to ``path`` atomically (temporary file in the same folder, fsync, rename)."""
        state = self.to_dict()
        return atomic_write(path, lambda handle: torch.save(state, handle))

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Whitening:
        """Read a file written by :meth:`save` (``weights_only=True``: no arbitrary code)."""
        path = Path(path)
        if not path.is_file():
            raise MultiGrainError(
                f"whitening file {path} does not exist: fit one with fit_whitening(...).save()"
            )
        state = load_tensor_file(
            path, what="whitening",
            fix="it is not a whitening file written by multigrain; fit one with "
            "`multigrain whiten` (or fit_whitening(...).save())",
        )  # fmt: skip
        if not isinstance(state, dict) or state.get("kind") != "multigrain.whitening":
            raise MultiGrainError(
                f"{path} is not a multigrain whitening file: fit one with fit_whitening(...).save()"
            )
        if int(state.get("format_version", 0)) > FORMAT_VERSION:
            raise MultiGrainError(
                f"whitening {path} has format version {state['format_version']}, newer than this "
                f"multigrain ({FORMAT_VERSION}): upgrade multigrain"
            )
        mean, projection = state["mean"].double(), state["projection"].double()
        eigenvalues = state["eigenvalues"].double()
        if projection.dim() != 2 or mean.shape != (projection.shape[0],):
            raise MultiGrainError(f"whitening {path} is inconsistent: refit and save it again")
        constant = float(state.get("constant", 0.0))
        return cls(mean, projection, eigenvalues, dict(state.get("fitted_on", {})), constant)


def fit_whitening(
    descriptors: Tensor,
    *,
    dim: int | None = None,
    power: float = 0.5,
    shrinkage: float = 0.0,
    eps: float = 1e-9,
    fitted_on: Metadata | None = None,
    constant: bool = True,
) -> Whitening:
    """Fit PCA whitening on descriptors (SPEC §4), as in the module docstring.

    Args:
        descriptors: (N, D) embeddings of the fitting image set, as :meth:`Whitening.apply`
            will receive them (``embed`` passes the raw GeM embedding).
        dim: number d of principal components kept (default ``min(D, N - 1)``).
        power: eigenvalue exponent, scale_k = (lambda_k + shrinkage * mean(lambda))^(-power);
            0.5 = full whitening, 0 = PCA rotation only.
        shrinkage: added to every eigenvalue, as a multiple of the mean eigenvalue, before
            the power (0 = none). Makes the transform well defined for tiny eigenvalues.
        eps: a kept eigenvalue below ``eps * lambda_max`` counts as zero (rank deficiency).
        fitted_on: metadata stored with the result; ``num_descriptors``, ``power`` and
            ``shrinkage`` are added (so that the same fit can be repeated on other descriptors).
        constant: append the constant coordinate (:meth:`Whitening.with_constant`), so the
            stored descriptors classify; False keeps d-dimensional descriptors.

    Returns:
        A :class:`Whitening` with projection (D, d).

    Raises:
        MultiGrainError: wrong shape, non-finite values, ``dim`` larger than ``D`` or than
            the rank ``N - 1``, or (with power > 0 and no shrinkage) a kept eigenvalue ~ 0.
    """
    _check_descriptors(descriptors, None)
    num, size = descriptors.shape
    if num < 2:
        raise MultiGrainError(f"whitening needs at least 2 descriptors, got {num}")
    if power < 0 or shrinkage < 0:
        raise MultiGrainError(f"power and shrinkage must be >= 0, got {power} and {shrinkage}")
    max_rank = min(size, num - 1)  # centring removes one degree of freedom
    if dim is None:
        dim = max_rank
        if dim < size:
            logger.warning(
                "only %d descriptors for %d dimensions: keeping %d components", num, size, dim
            )
    if not 1 <= dim <= size:
        raise MultiGrainError(f"whitening dim must be in [1, {size}] (the descriptor size)")
    if dim > num - 1:
        raise MultiGrainError(
            f"whitening dim {dim} needs at least {dim + 1} descriptors, got {num}: "
            f"fit on more images or pass dim <= {num - 1}"
        )
    x = descriptors.detach().double()
    mean = x.mean(dim=0)
    centred = x - mean
    covariance = centred.T @ centred / (num - 1)
    eigenvalues, eigenvectors = torch.linalg.eigh(covariance)  # ascending
    order = torch.argsort(eigenvalues, descending=True)
    all_eigenvalues = eigenvalues[order].clamp(min=0.0)
    eigenvectors = eigenvectors[:, order]
    kept = all_eigenvalues[:dim]
    if power > 0 and shrinkage == 0 and kept[-1] <= eps * all_eigenvalues[0]:
        rank = int((all_eigenvalues > eps * all_eigenvalues[0]).sum())
        raise MultiGrainError(
            f"the descriptors span only {rank} dimensions but dim={dim} components were asked "
            f"for: pass dim <= {rank} or shrinkage > 0 (e.g. 0.1)"
        )
    scale = (kept + shrinkage * all_eigenvalues.mean()).pow(-power)
    projection = eigenvectors[:, :dim] * scale
    metadata: Metadata = {
        "num_descriptors": num,
        "power": power,
        "shrinkage": shrinkage,
        **(fitted_on or {}),
    }
    logger.info("fitted whitening %d -> %d on %d descriptors", size, dim, num)
    fitted = Whitening(mean, projection, kept, metadata)
    return fitted.with_constant() if constant else fitted


def fold_into_classifier(classifier: nn.Linear, whitening: Whitening) -> nn.Linear:
    """A linear classifier on whitened descriptors that reproduces ``classifier`` on raw ones.

    With w = (e - mu) P (row vectors) and P invertible (d = D), e = w P^-1 + mu, so

        classifier(e) = e W^T + b = w (W P^-T)^T + (b + W mu)
        => W' = W P^-T  (K, d),   b' = b + W mu  (K,)

    and ``folded(w) == classifier(e)`` up to float round-off. With d < D, P^-1 is the
    pseudo-inverse and e is replaced by its projection on the kept principal subspace, so
    the logits are only an approximation.

    The retrieval descriptor is ŵ = w / ||w||. Exact logits are
    ``folded(ŵ * ||w||)``; equivalently ``ŵ W'^T + b' / ||w||`` is the logit vector divided
    by ||w|| > 0, so it has the same top-k. ``folded(ŵ)`` alone does not: its bias
    b' = b + W mu is not scaled by 1 / ||w|| (b' is nonzero in general even when b = 0).

    Args:
        classifier: (K, D) linear layer on raw embeddings.
        whitening: a fitted :class:`Whitening` with input dimension D.

    Returns:
        A new ``nn.Linear(d, K)`` on the un-normalised w, the constant coordinate aside
        (float32 parameters, on the classifier's device).
    """
    if classifier.in_features != whitening.input_dim:
        raise MultiGrainError(
            f"the classifier takes {classifier.in_features}-d embeddings but the whitening "
            f"was fitted on {whitening.input_dim}-d descriptors: fit it with the same model"
        )
    device = classifier.weight.device
    weight = classifier.weight.detach().double()
    bias = (
        classifier.bias.detach().double()
        if classifier.bias is not None
        else torch.zeros(classifier.out_features, dtype=torch.float64, device=device)
    )
    projection = whitening.projection.to(device)
    inverse = (
        torch.linalg.inv(projection)
        if whitening.kept_dim == whitening.input_dim
        else torch.linalg.pinv(projection)
    )  # (d, D)
    folded = nn.Linear(whitening.kept_dim, classifier.out_features, device=device)
    with torch.no_grad():
        folded.weight.copy_(weight @ inverse.T)
        folded.bias.copy_(bias + weight @ whitening.mean.to(device))
    return folded


def descriptor_classifier(classifier: nn.Linear, whitening: Whitening) -> nn.Linear:
    """The classifier on stored descriptors: (N, d + 1) unit vectors -> (N, K) scores.

    ``nn.Linear(d + 1, K, bias=False)`` with weight ``[W', b' / c]`` (module docstring):
    its scores are the raw embedding's logits divided by ||[w, c]|| > 0, so top-k and
    argmax agree with ``classifier`` on the raw embedding (exactly when d = D; through the
    pseudo-inverse when d < D). Softmax of these scores is not the model's probability.
    """
    if whitening.constant <= 0:
        raise MultiGrainError(
            "this whitening appends no constant coordinate (fitted by an older multigrain), so "
            "its unit descriptors cannot be classified: refit it with `multigrain whiten`, or "
            "classify the images with `multigrain classify --whitening`"
        )
    folded = fold_into_classifier(classifier, whitening)
    scores = nn.Linear(whitening.output_dim, classifier.out_features, bias=False)
    scores = scores.to(classifier.weight.device)
    with torch.no_grad():
        weight = torch.cat(
            [folded.weight.double(), folded.bias.double()[:, None] / whitening.constant], dim=1
        )
        scores.weight.copy_(weight)
    return scores


def _check_descriptors(x: Tensor, expected_dim: int | None) -> None:
    if x.dim() != 2:
        raise MultiGrainError(f"descriptors must be a (N, D) matrix, got shape {tuple(x.shape)}")
    if expected_dim is not None and x.shape[1] != expected_dim:
        raise MultiGrainError(
            f"descriptors have {x.shape[1]} dimensions but the whitening expects {expected_dim}: "
            "use descriptors from the model the whitening was fitted with"
        )
    if not torch.isfinite(x).all():
        raise MultiGrainError("descriptors contain NaN or inf: check the model and the images")
