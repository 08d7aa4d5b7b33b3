"""The ImageNet input normalisation every trunk here expects (per RGB channel, on [0, 1])."""

from __future__ import annotations

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
