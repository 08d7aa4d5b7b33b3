"""Convolutional trunks: ResNets (torchvision's, built by models/resnet.py) without head."""

from __future__ import annotations

from enum import Enum

from torch import nn

from multigrain.models.resnet import (
    BasicBlock,
    Bottleneck,
    ResNetLayout,
    init_conv,
    resnet_layers,
)
from multigrain.runtime.errors import MultiGrainError


class TrunkName(str, Enum):
    """The supported trunk architectures."""

    resnet18 = "resnet18"
    resnet34 = "resnet34"
    resnet50 = "resnet50"
    resnet101 = "resnet101"
    resnet152 = "resnet152"


# name -> block type and blocks per stage, as torchvision's resnet18 ... resnet152
_TRUNKS: dict[TrunkName, ResNetLayout] = {
    TrunkName.resnet18: ResNetLayout(BasicBlock, (2, 2, 2, 2)),
    TrunkName.resnet34: ResNetLayout(BasicBlock, (3, 4, 6, 3)),
    TrunkName.resnet50: ResNetLayout(Bottleneck, (3, 4, 6, 3)),
    TrunkName.resnet101: ResNetLayout(Bottleneck, (3, 4, 23, 3)),
    TrunkName.resnet152: ResNetLayout(Bottleneck, (3, 8, 36, 3)),
}


def parse_trunk_name(name: str | TrunkName) -> TrunkName:
    """Return the :class:`TrunkName` for ``name``, or raise a MultiGrainError listing choices."""
    try:
        return TrunkName(name)
    except ValueError:
        valid = ", ".join(t.value for t in TrunkName)
        raise MultiGrainError(f"unknown trunk {name!r}; choose one of: {valid}") from None


def build_trunk(name: str | TrunkName, *, small_input: bool = False) -> tuple[nn.Sequential, int]:
    """Build a randomly initialised ResNet trunk: (N, 3, H, W) -> (N, C, H/32, W/32).

    Args:
        name: one of :class:`TrunkName` (e.g. ``"resnet50"``).
        small_input: for 28-64 px images, replace the 7x7 stride-2 stem convolution by a
            3x3 stride-1 one and the max-pool by an identity, so the map shrinks by 8
            instead of 32. Child names are kept either way.

    Returns:
        ``(trunk, out_channels)``: an ``nn.Sequential`` whose children are named
        ``conv1, bn1, relu, maxpool, layer1..layer4`` (state-dict keys match torchvision's,
        e.g. ``layer1.0.conv1.weight``), and C = 512 (ResNet-18/34) or 2048 (ResNet-50+).
    """
    layout = _TRUNKS[parse_trunk_name(name)]
    children = resnet_layers(layout)
    if small_input:
        conv = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        init_conv(conv)
        children["conv1"] = conv
        children["maxpool"] = nn.Identity()
    return nn.Sequential(children), layout.out_channels
