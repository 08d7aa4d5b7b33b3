"""Load real weights into a MultiGrain model: our checkpoints, the authors', torchvision's.

Three file layouts are understood (:class:`WeightsFormat`), all read with
``torch.load(..., weights_only=True)`` so no arbitrary Python object is ever unpickled:

- ``multigrain``: our checkpoints (:mod:`multigrain.models.checkpoint`), which record the
  architecture and the class names;
- ``authors``: the released MultiGrain models, ``{'model_state': sd}`` with ``features.*``
  (torchvision ResNet names), ``pool.p`` and ``classifier.*`` (SPEC, last paragraph);
- ``torchvision``: a plain ResNet state dict (``conv1.weight`` ... ``fc.bias``), e.g.
  ``resnet50-0676ba61.pth``. With p = 1 (GeM = average pooling) the MultiGrain model gives
  exactly torchvision's logits.

The trunk depth (ResNet-18 ... 152), the stem (``small_input``) and the number of classes
are read off the tensor names and shapes, so no architecture needs to be given.
"""

from __future__ import annotations

import logging
import os
import pickle
import re
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torchvision.models import ResNet50_Weights

from multigrain.models import MultiGrain, TrunkName
from multigrain.models.checkpoint import FORMAT_VERSION
from multigrain.runtime.errors import MultiGrainError

logger = logging.getLogger(__name__)

# (blocks in layer1..layer4, bottleneck blocks?) -> trunk
_RESNET_LAYOUTS: dict[tuple[tuple[int, int, int, int], bool], TrunkName] = {
    ((2, 2, 2, 2), False): TrunkName.resnet18,
    ((3, 4, 6, 3), False): TrunkName.resnet34,
    ((3, 4, 6, 3), True): TrunkName.resnet50,
    ((3, 4, 23, 3), True): TrunkName.resnet101,
    ((3, 8, 36, 3), True): TrunkName.resnet152,
}
_BLOCK_KEY = re.compile(r"^layer([1-4])\.(\d+)\.")
_SHOWN_KEYS = 5  # how many missing / unexpected keys an error message lists


class WeightsFormat(str, Enum):
    """The layouts :func:`load_model` reads."""

    MULTIGRAIN = "multigrain"  # our checkpoints (multigrain.models.checkpoint)
    AUTHORS = "authors"  # the MultiGrain authors' released models
    TORCHVISION = "torchvision"  # a plain torchvision ResNet state dict


@dataclass
class LoadedModel:
    """A model ready for inference (eval mode, on CPU) and where it came from."""

    model: MultiGrain
    classes: list[str]  # one name per logit
    source_format: WeightsFormat
    path: Path


def load_model(
    path: str | os.PathLike[str],
    *,
    format: WeightsFormat | str | None = None,
    pooling_exponent: float | None = None,
) -> LoadedModel:
    """Build the MultiGrain model stored in ``path``, in any :class:`WeightsFormat`.

    Args:
        path: a ``.pth``/``.pt`` file.
        format: the layout; None detects it from the keys (``architecture`` recorded:
            multigrain; ``model_state`` only: authors; bare ``conv1``/``fc`` keys: torchvision).
        pooling_exponent: the GeM exponent p to use. None keeps the file's (``pool.p``), or
            1.0 for torchvision files (plain average pooling, as the network was trained).

    Returns:
        A :class:`LoadedModel`; its model maps (N, 3, H, W) -> (embedding (N, D),
        logits (N, K)). Class names come from our checkpoints; 1000-class authors' and
        torchvision models get torchvision's ImageNet-1k names; others ``class_0 ...``.

    Raises:
        MultiGrainError: missing/corrupt file, a pickle with arbitrary objects, an
            unknown layout, or keys that do not match the inferred architecture (the
            message lists the first missing and unexpected keys).
    """
    path = Path(path)
    raw = _read(path)
    source_format = _detect_format(path, raw) if format is None else WeightsFormat(format)
    architecture: dict[str, Any] = {}
    classes: list[str] = []
    if source_format is WeightsFormat.MULTIGRAIN:
        state, architecture, classes = _from_multigrain(path, raw)
    elif source_format is WeightsFormat.AUTHORS:
        state = _from_authors(path, raw, pooling_exponent)
    else:
        state = _from_torchvision(path, raw, 1.0 if pooling_exponent is None else pooling_exponent)

    if not architecture:
        architecture = {
            "trunk": _infer_trunk(path, state),
            "num_classes": _num_classes(path, state),
            "pooling_exponent": float(state["pool.p"]),
            "small_input": _is_small_input(state),
        }
    try:
        model = MultiGrain(**architecture)
    except TypeError as error:
        raise MultiGrainError(
            f"weights file {path} records an architecture this multigrain cannot build "
            f"({error}): upgrade multigrain"
        ) from error
    _check_keys(path, source_format, model.state_dict(), state)
    model.load_state_dict(state)
    if pooling_exponent is not None:
        model.pool.set_p(pooling_exponent)
        model.pooling_exponent = float(pooling_exponent)
    model.eval()
    if not classes:
        imagenet = source_format is not WeightsFormat.MULTIGRAIN
        classes = _default_classes(model.num_classes, imagenet=imagenet)
    if len(classes) != model.num_classes:
        raise MultiGrainError(
            f"weights file {path} names {len(classes)} classes for {model.num_classes} "
            "logits: the checkpoint is inconsistent, re-save it"
        )
    logger.info(
        "loaded %s (%s format): %s, %d classes, p=%.4g",
        path,
        source_format.value,
        model.trunk_name,
        model.num_classes,
        float(model.pool.p),
    )
    return LoadedModel(model=model, classes=classes, source_format=source_format, path=path)


# --------------------------------------------------------------------------- reading


def _read(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise MultiGrainError(f"weights file {path} does not exist: check the path")
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        found = re.search(r"GLOBAL (\S+)", str(error))
        if found is None:
            raise MultiGrainError(
                f"cannot load weights file {path}: not a PyTorch file or corrupt"
            ) from error
        raise MultiGrainError(
            f"refusing to load {path}: it holds Python objects ({found.group(1)}) besides "
            "tensors and plain containers, and only weights_only=True loading is allowed; "
            "re-save it with torch.save(model.state_dict(), path)"
        ) from error
    except Exception as error:  # torch raises several types for truncated or foreign files
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise MultiGrainError(
            f"cannot load weights file {path}: {reason}; the file is truncated, corrupt or "
            "not a PyTorch file"
        ) from error
    if not isinstance(raw, dict):
        raise MultiGrainError(
            f"weights file {path} holds a {type(raw).__name__}, not a dict of tensors: save "
            "a state dict (torch.save(model.state_dict(), path))"
        )
    return raw


def _detect_format(path: Path, raw: dict[str, Any]) -> WeightsFormat:
    if "model_state" in raw:
        return WeightsFormat.MULTIGRAIN if "architecture" in raw else WeightsFormat.AUTHORS
    keys = set(_strip_module_prefix(raw))
    if "conv1.weight" in keys and all(isinstance(v, Tensor) for v in raw.values()):
        return WeightsFormat.TORCHVISION
    shown = ", ".join(sorted(map(str, raw))[:_SHOWN_KEYS])
    raise MultiGrainError(
        f"cannot tell the format of weights file {path} (keys: {shown}, ...): expected a "
        "multigrain or MultiGrain-authors checkpoint ('model_state') or a torchvision ResNet "
        "state dict ('conv1.weight' ... 'fc.bias'); pass format= if it is one of these"
    )


def _strip_module_prefix(state: dict[str, Any]) -> dict[str, Any]:
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
    return _strip_module_prefix(state)


def _from_multigrain(
    path: Path, raw: dict[str, Any]
) -> tuple[dict[str, Tensor], dict[str, Any], list[str]]:
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


def _from_authors(
    path: Path, raw: dict[str, Any], pooling_exponent: float | None
) -> dict[str, Tensor]:
    state = dict(_model_state(path, raw))
    if "pool.p" in state:
        state["pool.p"] = state["pool.p"].detach().float().reshape(())
    elif pooling_exponent is not None:
        state["pool.p"] = torch.tensor(float(pooling_exponent))
    else:
        raise MultiGrainError(
            f"weights file {path} has no 'pool.p' (GeM exponent): pass pooling_exponent"
        )
    return _fold_constant_input(path, state)


def _fold_constant_input(path: Path, state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Fold a classifier input column that multiplies a constant 1 into the bias.

    The authors' whitened models have a classifier over D + 1 inputs (2049 for
    ResNet-50). We assume the extra input is a constant 1 appended to the embedding
    (homogeneous coordinates), so ``W [e; 1] + b = W[:, :D] e + (b + W[:, D])``. This is an
    assumption about the released files, not something they record.
    """
    weight = state.get("classifier.weight")
    if weight is None or "features.layer4.0.conv1.weight" not in state:
        return state  # the key check reports what is missing
    embedding_dim = _embedding_dim(state)
    if weight.dim() == 2 and weight.shape[1] == embedding_dim + 1:
        logger.warning(
            "%s: classifier takes %d inputs for a %d-d embedding; folding the last input "
            "column into the bias, assuming that input is a constant 1",
            path,
            weight.shape[1],
            embedding_dim,
        )
        bias = state.get("classifier.bias", torch.zeros(weight.shape[0], dtype=weight.dtype))
        state["classifier.bias"] = bias + weight[:, embedding_dim]
        state["classifier.weight"] = weight[:, :embedding_dim].contiguous()
    return state


def _from_torchvision(
    path: Path, raw: dict[str, Any], pooling_exponent: float
) -> dict[str, Tensor]:
    if "model_state" in raw:
        raise MultiGrainError(
            f"weights file {path} has a 'model_state' entry, so it is not a plain torchvision "
            "state dict: leave format unset"
        )
    state: dict[str, Tensor] = {}
    for key, value in _strip_module_prefix(raw).items():
        name = f"classifier.{key[3:]}" if key.startswith("fc.") else f"features.{key}"
        state[name] = value
    state["pool.p"] = torch.tensor(float(pooling_exponent))
    return state


# --------------------------------------------------------------------------- inference


def _infer_trunk(path: Path, state: dict[str, Tensor]) -> TrunkName:
    """ResNet depth from the number of blocks per stage and the block type."""
    blocks: dict[int, set[int]] = {stage: set() for stage in range(1, 5)}
    for key in state:
        match = _BLOCK_KEY.match(key.removeprefix("features."))
        if match:
            blocks[int(match.group(1))].add(int(match.group(2)))
    counts = (len(blocks[1]), len(blocks[2]), len(blocks[3]), len(blocks[4]))
    bottleneck = "features.layer1.0.conv3.weight" in state
    trunk = _RESNET_LAYOUTS.get((counts, bottleneck))
    if trunk is None:
        kind = "bottleneck" if bottleneck else "basic"
        supported = ", ".join(t.value for t in _RESNET_LAYOUTS.values())
        raise MultiGrainError(
            f"cannot infer the ResNet of weights file {path}: {kind} blocks per stage "
            f"{counts} match none of {supported}; is it a ResNet checkpoint?"
        )
    return trunk


def _embedding_dim(state: dict[str, Tensor]) -> int:
    last = "conv3" if "features.layer4.0.conv3.weight" in state else "conv2"
    return int(state[f"features.layer4.0.{last}.weight"].shape[0])


def _num_classes(path: Path, state: dict[str, Tensor]) -> int:
    weight = state.get("classifier.weight")
    if weight is None or weight.dim() != 2:
        raise MultiGrainError(
            f"weights file {path} has no 2-d classifier weight ('classifier.weight' or "
            "torchvision's 'fc.weight'): it is not a complete classification model"
        )
    return int(weight.shape[0])


def _is_small_input(state: dict[str, Tensor]) -> bool:
    stem = state.get("features.conv1.weight")
    return stem is not None and tuple(stem.shape[-2:]) == (3, 3)


def _check_keys(
    path: Path,
    source_format: WeightsFormat,
    expected: dict[str, Tensor],
    given: dict[str, Tensor],
) -> None:
    missing = sorted(set(expected) - set(given))
    unexpected = sorted(set(given) - set(expected))
    wrong_shape = [
        f"{key} {tuple(given[key].shape)} != {tuple(expected[key].shape)}"
        for key in sorted(set(expected) & set(given))
        if given[key].shape != expected[key].shape
    ]
    if not (missing or unexpected or wrong_shape):
        return
    parts = []
    for label, keys in [("missing", missing), ("unexpected", unexpected)]:
        if keys:
            more = f" (+{len(keys) - _SHOWN_KEYS} more)" if len(keys) > _SHOWN_KEYS else ""
            parts.append(f"{len(keys)} {label} keys: {', '.join(keys[:_SHOWN_KEYS])}{more}")
    if wrong_shape:
        parts.append(f"{len(wrong_shape)} wrong shapes: {', '.join(wrong_shape[:_SHOWN_KEYS])}")
    raise MultiGrainError(
        f"weights file {path} does not match a {source_format.value}-format MultiGrain model: "
        f"{'; '.join(parts)}. Check the file is complete and pass the right format="
    )


def _default_classes(num_classes: int, *, imagenet: bool) -> list[str]:
    """torchvision's bundled ImageNet-1k names for 1000 logits (no download), else class_i."""
    if imagenet and num_classes == 1000:
        return list(ResNet50_Weights.IMAGENET1K_V1.meta["categories"])
    return [f"class_{index}" for index in range(num_classes)]
