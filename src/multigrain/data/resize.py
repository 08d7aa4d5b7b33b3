"""Test-time image preparation: longest side to s, aspect kept, no crop (SPEC §4)."""

from __future__ import annotations

import torch
from PIL import Image
from torchvision.transforms.v2 import functional as TF

from multigrain.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from multigrain.runtime.errors import MultiGrainError


def resized_shape(width: int, height: int, longest_side: int) -> tuple[int, int]:
    """(width, height) scaled so that max(width, height) == longest_side, each side >= 1."""
    if longest_side < 1:
        raise MultiGrainError(f"resolution s must be >= 1 pixel, got {longest_side}")
    scale = longest_side / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def resize_longest_side(image: Image.Image, longest_side: int) -> Image.Image:
    """Resize a PIL image so its longest side is `longest_side` (bicubic, antialiased)."""
    size = resized_shape(image.width, image.height, longest_side)
    if size == image.size:
        return image
    return image.resize(size, Image.Resampling.BICUBIC)


def to_uint8_tensor(image: Image.Image) -> torch.Tensor:
    """RGB PIL image -> (3, H, W) uint8 tensor (a quarter of the float32 size to pass around)."""
    return TF.pil_to_tensor(image.convert("RGB"))


def normalise(images: torch.Tensor) -> torch.Tensor:
    """(..., 3, H, W) uint8 -> float32 in [0, 1], normalised with the ImageNet mean and std.

    Elementwise, so normalising a stacked batch gives exactly the per-image values.
    """
    tensor = TF.to_dtype(images, torch.float32, scale=True)
    return TF.normalize(tensor, list(IMAGENET_MEAN), list(IMAGENET_STD))


def to_model_input(image: Image.Image) -> torch.Tensor:
    """RGB PIL image -> (3, H, W) float32 tensor normalised with the ImageNet mean and std."""
    return normalise(to_uint8_tensor(image))


def prepare(image: Image.Image, longest_side: int) -> torch.Tensor:
    """PIL image -> (3, H, W) model input with max(H, W) == longest_side."""
    return to_model_input(resize_longest_side(image, longest_side))
