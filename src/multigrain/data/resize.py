"""Test-time image preparation: longest side to s, aspect kept, no crop (SPEC §4).

PIL, numpy and torch only: embedding loads no torchvision (its import, which brings in
torch._dynamo, was most of `multigrain embed`'s start-up). The tensor conversions give
exactly what torchvision's ``pil_to_tensor``, ``to_dtype(scale=True)`` and ``normalize``
gave before (tests/test_resize.py compares them with torch.equal).
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from multigrain.runtime.errors import MultiGrainError
from multigrain.runtime.imagenet import IMAGENET_MEAN, IMAGENET_STD


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
    """PIL image -> (3, H, W) uint8 tensor of its RGB pixels (a channels-first view).

    uint8: a quarter of the float32 size to pass between processes.
    """
    pixels = np.array(image.convert("RGB"), dtype=np.uint8, copy=True)  # (H, W, 3), writable
    return torch.from_numpy(pixels).permute(2, 0, 1)


def normalise(images: torch.Tensor) -> torch.Tensor:
    """(..., 3, H, W) uint8 -> float32 (x / 255 - mean) / std, ImageNet mean and std.

    x / 255 is computed as x * (1 / 255), as torchvision's ``to_dtype(scale=True)`` does.
    Elementwise, so normalising a stacked batch gives exactly the per-image values.
    """
    if images.dtype != torch.uint8:
        raise MultiGrainError(f"normalise takes uint8 images, got {images.dtype}")
    tensor = images.to(torch.float32).mul_(1.0 / 255)
    mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float32, device=tensor.device).view(-1, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=torch.float32, device=tensor.device).view(-1, 1, 1)
    return tensor.sub_(mean).div_(std)


def to_model_input(image: Image.Image) -> torch.Tensor:
    """RGB PIL image -> (3, H, W) float32 tensor normalised with the ImageNet mean and std."""
    return normalise(to_uint8_tensor(image))


def prepare(image: Image.Image, longest_side: int) -> torch.Tensor:
    """PIL image -> (3, H, W) model input with max(H, W) == longest_side."""
    return to_model_input(resize_longest_side(image, longest_side))
