"""ResNet-18 ... 152 (He et al., 2016) without global pooling and classifier, torch only.

The same network as torchvision's ``resnet18`` ... ``resnet152`` (v1.5: the stride-2 3x3
convolution in a bottleneck's middle), built from the same modules in the same order:

- state-dict keys and shapes are torchvision's (``layer1.0.conv1.weight``,
  ``layer2.0.downsample.0.weight``, ...), so every checkpoint and bundle loads unchanged,
  and the parameters come in the same order (an optimiser's saved state still fits);
- a block computes in the same order (convolution, batch norm, ReLU, ..., the shortcut
  added in place, ReLU), so the outputs are bitwise the same;
- a seeded construction draws the same random numbers in the same order, so the initial
  weights are bitwise torchvision's too (:func:`resnet_layers` explains the classifier
  that is built only for that).

Written here so that building or running a model does not import torchvision, whose
import (it brings in torch._dynamo) cost more than torch's in `multigrain embed`'s start-up.
tests/test_models.py compares all of it with torchvision.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from torch import Tensor, nn


def conv3x3(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=stride, padding=1, bias=False)


def conv1x1(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions and a shortcut: (N, C_in, H, W) -> (N, C, H/stride, W/stride)."""

    expansion = 1

    def __init__(
        self, in_channels: int, channels: int, stride: int, downsample: nn.Module | None
    ) -> None:
        super().__init__()
        self.conv1 = conv3x3(in_channels, channels, stride)
        self.bn1 = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(channels, channels)
        self.bn2 = nn.BatchNorm2d(channels)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        identity = x if self.downsample is None else self.downsample(x)
        out += identity
        result: Tensor = self.relu(out)
        return result


class Bottleneck(nn.Module):
    """1x1, 3x3 (strided), 1x1 convolutions and a shortcut: C_in -> 4C channels."""

    expansion = 4

    def __init__(
        self, in_channels: int, channels: int, stride: int, downsample: nn.Module | None
    ) -> None:
        super().__init__()
        self.conv1 = conv1x1(in_channels, channels)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = conv3x3(channels, channels, stride)
        self.bn2 = nn.BatchNorm2d(channels)
        self.conv3 = conv1x1(channels, channels * self.expansion)
        self.bn3 = nn.BatchNorm2d(channels * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        identity = x if self.downsample is None else self.downsample(x)
        out += identity
        result: Tensor = self.relu(out)
        return result


@dataclass(frozen=True)
class ResNetLayout:
    """Block type and number of blocks in layer1..layer4."""

    block: type[BasicBlock] | type[Bottleneck]
    blocks: tuple[int, int, int, int]

    @property
    def out_channels(self) -> int:
        """Channels of the last feature map: 512 (basic blocks) or 2048 (bottlenecks)."""
        return 512 * self.block.expansion


def _layer(
    layout: ResNetLayout, in_channels: int, channels: int, blocks: int, stride: int
) -> nn.Sequential:
    block = layout.block
    downsample = None
    if stride != 1 or in_channels != channels * block.expansion:
        # built before the block, as torchvision does (the order of the random draws)
        downsample = nn.Sequential(
            conv1x1(in_channels, channels * block.expansion, stride),
            nn.BatchNorm2d(channels * block.expansion),
        )
    layers = [block(in_channels, channels, stride, downsample)]
    layers += [block(channels * block.expansion, channels, 1, None) for _ in range(1, blocks)]
    return nn.Sequential(*layers)


def resnet_layers(layout: ResNetLayout) -> OrderedDict[str, nn.Module]:
    """The children ``conv1, bn1, relu, maxpool, layer1..layer4``, randomly initialised.

    As ``torchvision.models.resnet*(weights=None)``: convolutions He-normal (fan out),
    batch norms at weight 1 and bias 0. Run in order on (N, 3, H, W) they give
    (N, out_channels, H/32, W/32).
    """
    children: OrderedDict[str, nn.Module] = OrderedDict()
    children["conv1"] = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
    children["bn1"] = nn.BatchNorm2d(64)
    children["relu"] = nn.ReLU(inplace=True)
    children["maxpool"] = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
    in_channels = 64
    for index, (channels, stride) in enumerate(((64, 1), (128, 2), (256, 2), (512, 2))):
        children[f"layer{index + 1}"] = _layer(
            layout, in_channels, channels, layout.blocks[index], stride
        )
        in_channels = channels * layout.block.expansion
    # torchvision's ResNet builds its 1000-class classifier here, before re-initialising
    # the convolutions: built and dropped, so that the random draws after it (and so the
    # seeded initial weights) are the ones torchvision's construction gives.
    nn.Linear(layout.out_channels, 1000)
    for module in children.values():
        for sub in module.modules():
            if isinstance(sub, nn.Conv2d):
                init_conv(sub)
            elif isinstance(sub, nn.BatchNorm2d):
                nn.init.constant_(sub.weight, 1)
                nn.init.constant_(sub.bias, 0)
    return children


def init_conv(conv: nn.Conv2d) -> None:
    """He-normal weights (fan out, ReLU gain), as torchvision initialises a ResNet's.

    Nothing on the meta device (a model built there to be filled from a file): torch's
    ``normal_`` for meta tensors imports torch._dynamo, a second of `embed`'s start-up.
    """
    if not conv.weight.is_meta:
        nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
