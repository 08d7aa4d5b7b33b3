"""Per-image input standardisation: each colour channel of each image to mean 0, std 1.

    y_c = (x_c - mean_hw(x_c)) / max(std_hw(x_c), floor)

Brightness, contrast and a colour cast are, up to clipping, a per-channel affine map
x_c -> a_c x_c + b_c (a_c > 0) of the whole picture, and y is unchanged by any such map,
so a network that sees y cannot tell them apart: the copy families that a photo folder
holds most (an auto-enhanced or white-balanced copy) cost nothing. The ImageNet
normalisation before it is itself such a map, so y is the same whether it ran or not.
The result is clipped to the range an ImageNet-normalised [0, 1] picture has, the range
the trunk was trained on: a dark photo with a few bright lamps would otherwise feed it
values of 10 or more. Parameter-free, so a model's state-dict keys are the same with it
and without it.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import Tensor, nn

from multigrain.runtime.imagenet import IMAGENET_MEAN, IMAGENET_STD

#: The smallest std divided by (in the ImageNet-normalised scale: about 0.6 / 255 of the
#: raw range): a flat picture maps to zeros instead of amplified noise.
STD_FLOOR = 1e-2


#: Per channel, the values 0 and 1 take after the ImageNet normalisation.
LOW = tuple(-mean / std for mean, std in zip(IMAGENET_MEAN, IMAGENET_STD, strict=True))
HIGH = tuple((1 - mean) / std for mean, std in zip(IMAGENET_MEAN, IMAGENET_STD, strict=True))


def standardise_channels(x: Tensor, *, floor: float = STD_FLOOR) -> Tensor:
    """x: (N, 3, H, W) -> (N, 3, H, W) each (image, channel) plane standardised and clipped
    to [LOW, HIGH] of its channel, computed in float32 whatever x's dtype and returned in it."""
    planes = x.float()
    mean = planes.mean(dim=(2, 3), keepdim=True)
    std = planes.std(dim=(2, 3), keepdim=True, unbiased=False).clamp_min(floor)
    low = torch.tensor(LOW, device=x.device).view(1, -1, 1, 1)
    high = torch.tensor(HIGH, device=x.device).view(1, -1, 1, 1)
    return torch.clamp((planes - mean) / std, low, high).to(x.dtype)


class StandardiseChannels(nn.Module):
    """The module form of :func:`standardise_channels` (no parameters, no buffers)."""

    def forward(self, x: Tensor) -> Tensor:
        return standardise_channels(x)


def with_standardised_input(trunk: nn.Sequential) -> nn.Sequential:
    """`trunk` with :class:`StandardiseChannels` as its first child, named ``standardise``
    (the other children keep their names, so the state-dict keys do not change)."""
    children = [("standardise", StandardiseChannels()), *trunk.named_children()]
    return nn.Sequential(OrderedDict(children))


def has_standardised_input(trunk: nn.Module) -> bool:
    return isinstance(getattr(trunk, "standardise", None), StandardiseChannels)
