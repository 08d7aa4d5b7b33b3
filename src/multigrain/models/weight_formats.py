"""Foreign state dicts -> MultiGrain tensor names: ours, the authors' releases, torchvision's.

Each ``from_*`` takes the dict ``torch.load`` returned and gives a state dict with the names
of :class:`~multigrain.models.MultiGrain` (``features.*``, ``pool.p``, ``classifier.*``);
:func:`multigrain.models.weights.load_model` then builds the model and checks the keys.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from multigrain.models.checkpoint import FORMAT_VERSION
from multigrain.models.state_architecture import embedding_dim
from multigrain.runtime.errors import MultiGrainError

logger = logging.getLogger(__name__)


def strip_module_prefix(state: dict[str, Any]) -> dict[str, Any]:
    """Drop the ``module.`` prefix DataParallel/DDP add to every key, if present."""
    if state and all(str(key).startswith("module.") for key in state):
        logger.info("stripping the 'module.' prefix (a DataParallel/DDP state dict)")
        return {str(key)[len("module.") :]: value for key, value in state.items()}
    return state


def _model_state(path: Path, raw: dict[str, Any]) -> dict[str, Tensor]:
    state = raw.get("model_state")
    if not isinstance(state, dict):
        raise MultiGrainError(
            f"weights file {path} has no 'model_state' dict: pass format='torchvision' for a "
            "plain state dict"
        )
    return strip_module_prefix(state)


def from_multigrain(
    path: Path, raw: dict[str, Any]
) -> tuple[dict[str, Tensor], dict[str, Any], list[str]]:
    """Our checkpoint -> (state dict, recorded architecture, class names)."""
    version = raw.get("format_version", FORMAT_VERSION)
    if version > FORMAT_VERSION:
        raise MultiGrainError(
            f"checkpoint {path} has format version {version}, newer than this multigrain "
            f"({FORMAT_VERSION}): upgrade multigrain"
        )
    architecture = raw.get("architecture")
    if not isinstance(architecture, dict):
        raise MultiGrainError(
            f"checkpoint {path} does not record its architecture: pass format='authors' if it "
            "is one of the MultiGrain authors' released models"
        )
    classes = [str(name) for name in raw.get("classes", [])]
    return _model_state(path, raw), dict(architecture), classes


def from_authors(
    path: Path, raw: dict[str, Any], pooling_exponent: float | None
) -> dict[str, Tensor]:
    """A released MultiGrain model (``{'model_state': sd}``) -> our state dict.

    ``pool.p`` becomes a scalar (``pooling_exponent`` when the file has none); a file
    written by their whitening script has its classifier restored (:func:`unwhiten_authors`);
    a classifier over D + 1 inputs is folded (:func:`fold_constant_input`).
    """
    state = unwhiten_authors(path, dict(_model_state(path, raw)))
    if "pool.p" in state:
        state["pool.p"] = state["pool.p"].detach().float().reshape(())
    elif pooling_exponent is not None:
        state["pool.p"] = torch.tensor(float(pooling_exponent))
    else:
        raise MultiGrainError(
            f"weights file {path} has no 'pool.p' (GeM exponent): pass pooling_exponent"
        )
    return fold_constant_input(path, state)


#: The keys of the authors' PCA whitening (their ``scripts/whiten.py``): P and the mean m.
AUTHORS_WHITENING_KEYS = ("whitening.pca.pca_P", "whitening.pca.pca_m")


def unwhiten_authors(path: Path, state: dict[str, Tensor]) -> dict[str, Tensor]:
    """A checkpoint written after the authors' whitening script -> the classifier before it.

    Their script fits PCA on x = l2n([e, 1]) (the GeM embedding with a constant 1
    appended), u = (x - m) P, and replaces the classifier [W, b] (over [e, 1]) by
    W' = [W, b] P^-T with bias m [W, b]^T, so that W' u + m [W, b]^T = [W, b] x. Hence
    [W, b] = W' P^T, exactly when P is square: the raw embedding's classifier W e + b comes
    back (the logits of l2n([e, 1]) times ||[e, 1]||, so the same classes). Their whitening works on
    the L2-normalised, constant-extended embedding, which ours does not: it is dropped (with a
    warning), and ``multigrain whiten`` fits ours.
    """
    if not any(key in state for key in AUTHORS_WHITENING_KEYS):
        return state
    if not all(key in state for key in AUTHORS_WHITENING_KEYS) or "classifier.weight" not in state:
        raise MultiGrainError(
            f"{path} is an authors' whitened checkpoint but lacks one of "
            f"{', '.join(AUTHORS_WHITENING_KEYS)} or classifier.weight: the file is incomplete"
        )
    projection = state.pop(AUTHORS_WHITENING_KEYS[0]).detach().double()
    mean = state.pop(AUTHORS_WHITENING_KEYS[1]).detach().double().reshape(-1)
    weight = state["classifier.weight"].detach().double()
    if projection.dim() != 2 or weight.shape[1] != projection.shape[1]:
        raise MultiGrainError(
            f"{path}: whitening matrix {tuple(projection.shape)} does not fit the classifier "
            f"{tuple(weight.shape)}: not an authors' whitened checkpoint this version reads"
        )
    restored = weight @ projection.T  # (K, D + 1) = [W, b]
    bias = state.get("classifier.bias")
    if bias is not None and mean.numel() == restored.shape[1]:
        # their folded bias is m [W, b]^T: a file that disagrees was edited by other code
        expected = restored @ mean
        tolerance = 1e-3 * float(expected.abs().max())
        if not torch.allclose(bias.detach().double(), expected, rtol=1e-3, atol=tolerance):
            logger.warning("%s: classifier bias is not m [W, b]^T; restoring [W, b] anyway", path)
    approximate = projection.shape[1] < projection.shape[0]
    logger.warning(
        "%s: written by the authors' whitening script; its classifier is restored to the raw "
        "embedding's (%s) and its whitening is not used: fit one with `multigrain whiten`",
        path,
        "approximately: the PCA kept fewer components" if approximate else "exactly",
    )
    dim = restored.shape[1] - 1  # the input was [e, 1]: its last column multiplies the 1
    state["classifier.weight"] = restored[:, :dim].float().contiguous()
    state["classifier.bias"] = restored[:, dim].float().contiguous()
    return state


def fold_constant_input(path: Path, state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Fold a classifier input column that multiplies a constant 1 into the bias.

    The authors' whitened models have a classifier over D + 1 inputs (2049 for
    ResNet-50). We assume the extra input is a constant 1 appended to the embedding
    (homogeneous coordinates), so ``W [e; 1] + b = W[:, :D] e + (b + W[:, D])``. This is an
    assumption about the released files, not something they record.
    """
    weight = state.get("classifier.weight")
    if weight is None or "features.layer4.0.conv1.weight" not in state:
        return state  # the key check reports what is missing
    dim = embedding_dim(state)
    if weight.dim() == 2 and weight.shape[1] == dim + 1:
        logger.warning(
            "%s: classifier takes %d inputs for a %d-d embedding; folding the last input "
            "column into the bias, assuming that input is a constant 1",
            path,
            weight.shape[1],
            dim,
        )
        bias = state.get("classifier.bias", torch.zeros(weight.shape[0], dtype=weight.dtype))
        state["classifier.bias"] = bias + weight[:, dim]
        state["classifier.weight"] = weight[:, :dim].contiguous()
    return state


def from_torchvision(path: Path, raw: dict[str, Any], pooling_exponent: float) -> dict[str, Tensor]:
    """A plain torchvision ResNet state dict (``conv1.weight`` ... ``fc.bias``) -> ours.

    The trunk tensors go under ``features.``, ``fc`` becomes ``classifier`` and ``pool.p`` is
    ``pooling_exponent`` (1: average pooling, as the network was trained).
    """
    if "model_state" in raw:
        raise MultiGrainError(
            f"weights file {path} has a 'model_state' entry, so it is not a plain torchvision "
            "state dict: leave format unset"
        )
    state: dict[str, Tensor] = {}
    for key, value in strip_module_prefix(raw).items():
        name = f"classifier.{key[3:]}" if key.startswith("fc.") else f"features.{key}"
        state[name] = value
    state["pool.p"] = torch.tensor(float(pooling_exponent))
    return state
