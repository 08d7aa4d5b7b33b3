"""Synthetic copies of a collection's own images, for calibrating a threshold on it.

The training families of edits (:mod:`multigrain.data.copy_augment`) at the strength copies
in a photo folder have: crops, resizing, colour and gray, text and bars, small rotations,
frames, blur and JPEG, each applied with its own probability; seeded.
"""

from __future__ import annotations

import torch
from PIL import Image
from torch import nn
from torchvision.transforms import v2

from multigrain.data.copy_augment import (
    Bars,
    Frame,
    GaussianBlur,
    JpegReencode,
    LowResolution,
    Overlay,
    RotateCropped,
)
from multigrain.data.resize import resize_longest_side


class Crop(nn.Module):
    """Keep a random window of `low`-`high` of each side (a framing edit)."""

    def __init__(self, low: float, high: float) -> None:
        super().__init__()
        self.low, self.high = low, high

    def forward(self, image: Image.Image) -> Image.Image:
        width, height = image.size
        keep_w = float(torch.empty(()).uniform_(self.low, self.high))
        keep_h = float(torch.empty(()).uniform_(self.low, self.high))
        w, h = max(1, round(width * keep_w)), max(1, round(height * keep_h))
        x = int(torch.randint(0, width - w + 1, ()))
        y = int(torch.randint(0, height - h + 1, ()))
        return image.crop((x, y, x + w, y + h))


def calibration_distortions() -> list[nn.Module]:
    """The training families (:mod:`multigrain.data.copy_augment`) at the strength of the
    copies found in photo folders: crops, resizing, colour and gray, text and bars, small
    rotations, frames, blur and JPEG; each applied with its own probability."""
    return [
        v2.RandomApply([Crop(0.7, 1.0)], p=0.5),
        v2.RandomApply([RotateCropped(10.0)], p=0.15),
        v2.RandomApply([Frame()], p=0.1),
        v2.RandomApply(
            [v2.ColorJitter(brightness=0.4, contrast=0.4, saturation=0.5, hue=0.05)], p=0.5
        ),
        v2.RandomGrayscale(p=0.1),
        v2.RandomApply([v2.RandomChoice([Overlay(), Bars()])], p=0.2),
        v2.RandomApply([GaussianBlur((0.5, 1.5))], p=0.1),
        v2.RandomApply([LowResolution((0.3, 0.8))], p=0.3),
        v2.RandomApply([JpegReencode((20, 90))], p=0.6),
    ]


def synthetic_copies(
    image: Image.Image, *, count: int, longest_side: int, seed: int
) -> list[Image.Image]:
    """`count` edited copies of `image` (resized so its longest side is `longest_side`,
    the size the model sees) through the training distortions, seeded."""
    base = resize_longest_side(image.convert("RGB"), longest_side)
    steps = calibration_distortions()
    copies = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for _ in range(count):
            copy = base
            for step in steps:
                copy = step(copy)
            copies.append(copy)
    return copies
