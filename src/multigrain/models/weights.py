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
are read off the tensor names and shapes (:mod:`multigrain.models.state_architecture`), so no
architecture needs to be given; the conversion of each layout to our tensor names is in
:mod:`multigrain.models.weight_formats`.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from multigrain.models.multigrain import MultiGrain
from multigrain.models.state_architecture import architecture_of
from multigrain.models.weight_formats import (
    from_authors,
    from_multigrain,
    from_torchvision,
    strip_module_prefix,
)
from multigrain.runtime.errors import MultiGrainError
from multigrain.runtime.tensor_files import load_tensor_file

logger = logging.getLogger(__name__)

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
        state, architecture, classes = from_multigrain(path, raw)
    elif source_format is WeightsFormat.AUTHORS:
        state = from_authors(path, raw, pooling_exponent)
    else:
        state = from_torchvision(path, raw, 1.0 if pooling_exponent is None else pooling_exponent)

    if not architecture:
        architecture = architecture_of(path, state)
    try:
        # on the meta device: no memory, no random initialisation (a second for a
        # ResNet-50 on 2 cores); every tensor comes from the file
        with torch.device("meta"):
            model = MultiGrain(**architecture)
    except TypeError as error:
        raise MultiGrainError(
            f"weights file {path} records an architecture this multigrain cannot build "
            f"({error}): upgrade multigrain"
        ) from error
    expected = model.state_dict()
    _check_keys(path, source_format, expected, state)
    # in the model's dtypes and contiguous, as copying into its own tensors gave them
    state = {key: value.to(expected[key].dtype).contiguous() for key, value in state.items()}
    model.load_state_dict(state, assign=True)
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


def _read(path: Path) -> dict[str, Any]:
    if path.is_dir():
        raise MultiGrainError(
            f"{path} is a folder, not a weights file: pass the weights file itself (e.g. "
            f"{path / 'checkpoint.pt'})"
        )
    if not path.is_file():
        raise MultiGrainError(f"weights file {path} does not exist: check the path")
    raw = load_tensor_file(
        path, what="weights file",
        fix="re-save the weights alone where the model loads, "
        "torch.save(model.state_dict(), path), and pass that file",
    )  # fmt: skip
    if not isinstance(raw, dict):
        raise MultiGrainError(
            f"weights file {path} holds a {type(raw).__name__}, not a dict of tensors: save "
            "a state dict (torch.save(model.state_dict(), path))"
        )
    return raw


def _detect_format(path: Path, raw: dict[str, Any]) -> WeightsFormat:
    if "model_state" in raw:
        return WeightsFormat.MULTIGRAIN if "architecture" in raw else WeightsFormat.AUTHORS
    keys = set(strip_module_prefix(raw))
    if "conv1.weight" in keys and all(isinstance(v, Tensor) for v in raw.values()):
        return WeightsFormat.TORCHVISION
    shown = ", ".join(sorted(map(str, raw))[:_SHOWN_KEYS])
    raise MultiGrainError(
        f"cannot tell the format of weights file {path} (keys: {shown}, ...): expected a "
        "multigrain or MultiGrain-authors checkpoint ('model_state') or a torchvision ResNet "
        "state dict ('conv1.weight' ... 'fc.bias'); pass format= if it is one of these"
    )


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
        # imported here: only these files need torchvision (start-up of the other commands)
        from torchvision.models import ResNet50_Weights

        return list(ResNet50_Weights.IMAGENET1K_V1.meta["categories"])
    return [f"class_{index}" for index in range(num_classes)]
