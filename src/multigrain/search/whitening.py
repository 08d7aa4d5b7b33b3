"""PCA whitening of retrieval descriptors (SPEC §4).

Over 300 lines because the fit, the input map and the file format (versions, the
constant, the legacy demo input) describe one object, read and written together.

Fitted on the GeM embeddings e of a separate image set, at the same s and p* as the
descriptors it will whiten, after an input map x(e) (:class:`WhiteningInput`):

    x = l2n([e, 1])  (UNIT_WITH_ONE, the authors' input)   or   x = e  (RAW)
    mu = mean_i x_i,    C = cov(x) = V diag(lambda) V^T   (eigenvalues sorted descending)
    P  = V_d diag((lambda_d + shrinkage * mean(lambda))^(-power))
    w = (x - mu) P,    descriptor = normalise([w, c])                     (d + 1,)

The constant coordinate c (:data:`CONSTANT_SCALE` x the RMS norm of w on the fitting set;
cosines move by ~1e-6) lets the stored unit vector classify: :mod:`.classifier_fold`.

Which input: ``benchmarks/whitened_classification.py`` on the built-in benchmark (the
demo's model, d = 128): copy mAP 0.856 / µAP 0.812 with UNIT_WITH_ONE, 0.856 / 0.812 with
plain L2-normalised input, 0.825 / 0.739 with RAW; on the shipped model's validation
package (d = 256) 0.811 / 0.722 against 0.816 / 0.726 for RAW. UNIT_WITH_ONE is what the
commands fit (``whiten``, ``bundle``, the demo); RAW remains for whitenings fitted before
(the built-in bundle's) and is the default of :func:`fit_whitening`, a plain PCA.

``power = 0.5`` is full whitening (the whitened training descriptors have identity
covariance), ``power = 0`` a PCA rotation/projection only; ``shrinkage > 0`` damps the
weakest directions, which full whitening would otherwise amplify the most.

Everything is stored and computed in float64; :meth:`Whitening.apply` returns the dtype
of its input.
"""

from __future__ import annotations

import dataclasses
import enum
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


class WhiteningInput(str, enum.Enum):
    """What the PCA sees of a raw GeM embedding e (module docstring)."""

    RAW = "raw"  # e itself
    UNIT_WITH_ONE = "unit-with-one"  # l2n([e, 1]): normalised first, bias kept (the authors')
    UNIT = "unit"  # l2n(e): the demo's whitenings before UNIT_WITH_ONE; the classifier's
    # bias does not survive it, so these do not fold into the classifier


#: ``fitted_on["input"]`` of the demo's whitening files written before the input was stored.
LEGACY_UNIT_INPUT = "normalised embedding"


def whitening_input_map(x: Tensor, kind: WhiteningInput) -> Tensor:
    """(N, D) raw embeddings -> (N, D) or (N, D + 1) float64 inputs of the PCA."""
    x = x.double()
    if kind is WhiteningInput.RAW:
        return x
    if kind is WhiteningInput.UNIT:
        return nn.functional.normalize(x, dim=1)
    return nn.functional.normalize(torch.cat([x, torch.ones_like(x[:, :1])], dim=1), dim=1)


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
        input: the map from a raw embedding to the PCA's input (mean and projection live
            in its space: D + 1 rows for UNIT_WITH_ONE).
    """

    mean: Tensor
    projection: Tensor
    eigenvalues: Tensor
    fitted_on: Metadata = field(default_factory=dict)
    constant: float = 0.0
    input: WhiteningInput = WhiteningInput.RAW

    @property
    def input_dim(self) -> int:
        """D, the dimension of the raw embeddings :meth:`apply` takes."""
        extra = 1 if self.input is WhiteningInput.UNIT_WITH_ONE else 0
        return int(self.projection.shape[0]) - extra

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
        if self.input is not WhiteningInput.RAW:
            digest.update(f"input={self.input.value}".encode())
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
        """x: (N, D) raw embeddings -> (N, d) ``(input_map(x) - mean) @ projection``, in x's
        dtype (computed in float64)."""
        _check_descriptors(x, self.input_dim)
        mean = self.mean.to(x.device)
        projection = self.projection.to(x.device)
        return ((whitening_input_map(x, self.input) - mean) @ projection).to(x.dtype)

    def logit_scale(self, x: Tensor) -> Tensor:
        """x: (N, D) raw embeddings -> (N, 1) the factor by which the folded classifier's
        outputs fall short of the logits: ||[e, 1]|| for UNIT_WITH_ONE, 1 for RAW."""
        if self.input is WhiteningInput.RAW:
            return torch.ones_like(x[:, :1])
        return torch.cat([x, torch.ones_like(x[:, :1])], dim=1).norm(dim=1, keepdim=True)

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
        if self.input is not WhiteningInput.RAW:
            state["input"] = self.input.value
            state["format_version"] = FORMAT_VERSION
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
        fitted_on = dict(state.get("fitted_on", {}))
        legacy = fitted_on.get("input") == LEGACY_UNIT_INPUT  # an older demo's whitening.pt
        default = WhiteningInput.UNIT if legacy else WhiteningInput.RAW
        kind = WhiteningInput(state.get("input", default.value))
        return cls(mean, projection, eigenvalues, fitted_on, constant, kind)


def fit_whitening(
    descriptors: Tensor,
    *,
    dim: int | None = None,
    power: float = 0.5,
    shrinkage: float = 0.0,
    eps: float = 1e-9,
    fitted_on: Metadata | None = None,
    constant: bool = True,
    input: WhiteningInput = WhiteningInput.RAW,
) -> Whitening:
    """Fit PCA whitening on descriptors (SPEC §4), as in the module docstring.

    Args:
        descriptors: (N, D) embeddings of the fitting image set, as :meth:`Whitening.apply`
            will receive them (``embed`` passes the raw GeM embedding); the PCA sees them
            through `input` (module docstring).
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
        input: RAW (a plain PCA of `descriptors`) or UNIT_WITH_ONE (of l2n([e, 1]), what the
            commands fit).

    Returns:
        A :class:`Whitening` with projection (D, d).

    Raises:
        MultiGrainError: wrong shape, non-finite values, ``dim`` larger than ``D`` or than
            the rank ``N - 1``, or (with power > 0 and no shrinkage) a kept eigenvalue ~ 0.
    """
    _check_descriptors(descriptors, None)
    descriptors = whitening_input_map(descriptors, input)
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
    if dim > num - 1 and not (shrinkage > 0 or power == 0):
        # beyond the rank the eigenvalues are 0: only shrinkage (or no scaling) defines them
        raise MultiGrainError(
            f"whitening dim {dim} needs at least {dim + 1} descriptors, got {num}: "
            f"fit on more images, pass dim <= {num - 1}, or shrinkage > 0"
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
    fitted = Whitening(mean, projection, kept, metadata, input=input)
    return fitted.with_constant() if constant else fitted


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
