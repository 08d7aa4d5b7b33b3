"""The architecture of a MultiGrain state dict, read off its tensor names and shapes.

The trunk depth (ResNet-18 ... 152), the stem (``small_input``), the embedding size and the
number of classes, so that a weights file loads without its architecture being given.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from torch import Tensor

from multigrain.models.trunk import TrunkName
from multigrain.runtime.errors import MultiGrainError

# (blocks in layer1..layer4, bottleneck blocks?) -> trunk
_RESNET_LAYOUTS: dict[tuple[tuple[int, int, int, int], bool], TrunkName] = {
    ((2, 2, 2, 2), False): TrunkName.resnet18,
    ((3, 4, 6, 3), False): TrunkName.resnet34,
    ((3, 4, 6, 3), True): TrunkName.resnet50,
    ((3, 4, 23, 3), True): TrunkName.resnet101,
    ((3, 8, 36, 3), True): TrunkName.resnet152,
}
_BLOCK_KEY = re.compile(r"^layer([1-4])\.(\d+)\.")


def architecture_of(path: Path, state: dict[str, Tensor]) -> dict[str, Any]:
    """The keyword arguments of ``MultiGrain(...)`` that build a model for ``state``.

    ``path`` only names the file in error messages.
    """
    return {
        "trunk": infer_trunk(path, state),
        "num_classes": num_classes(path, state),
        "pooling_exponent": float(state["pool.p"]),
        "small_input": is_small_input(state),
    }


def infer_trunk(path: Path, state: dict[str, Tensor]) -> TrunkName:
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


def embedding_dim(state: dict[str, Tensor]) -> int:
    """D: the output channels of the last trunk block (2048 for ResNet-50)."""
    last = "conv3" if "features.layer4.0.conv3.weight" in state else "conv2"
    return int(state[f"features.layer4.0.{last}.weight"].shape[0])


def num_classes(path: Path, state: dict[str, Tensor]) -> int:
    """K: the rows of the (K, D) classifier weight."""
    weight = state.get("classifier.weight")
    if weight is None or weight.dim() != 2:
        raise MultiGrainError(
            f"weights file {path} has no 2-d classifier weight ('classifier.weight' or "
            "torchvision's 'fc.weight'): it is not a complete classification model"
        )
    return int(weight.shape[0])


def is_small_input(state: dict[str, Tensor]) -> bool:
    """Whether the stem is the 3x3 one of ``small_input=True`` (28-64 px images)."""
    stem = state.get("features.conv1.weight")
    return stem is not None and tuple(stem.shape[-2:]) == (3, 3)
