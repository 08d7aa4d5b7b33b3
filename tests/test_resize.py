"""Test-time preparation without torchvision gives exactly torchvision's tensors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms.v2 import functional as TF

from multigrain.data.resize import normalise, prepare, resize_longest_side, to_uint8_tensor
from multigrain.runtime.errors import MultiGrainError
from multigrain.runtime.imagenet import IMAGENET_MEAN, IMAGENET_STD

MODES = ["RGB", "L", "RGBA", "P", "CMYK", "LA", "I;16", "1"]
SIZES = [(1, 1), (7, 3), (64, 48), (48, 64), (333, 217)]


def reference(image: Image.Image, longest_side: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(uint8, normalised float32) as the torchvision-based code made them before."""
    pixels = TF.pil_to_tensor(resize_longest_side(image, longest_side).convert("RGB"))
    scaled = TF.to_dtype(pixels, torch.float32, scale=True)
    return pixels, TF.normalize(scaled, list(IMAGENET_MEAN), list(IMAGENET_STD))


def random_image(mode: str, size: tuple[int, int], seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    rgb = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    if mode == "I;16":
        return Image.fromarray(rng.integers(0, 65536, (size[1], size[0]), dtype=np.uint16))
    return rgb.convert(mode)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("size", SIZES)
def test_same_tensors_as_torchvision(mode, size):
    image = random_image(mode, size, seed=size[0] * 1000 + size[1])
    for longest_side in (1, 32, 224):
        expected_pixels, expected_input = reference(image, longest_side)
        pixels = to_uint8_tensor(resize_longest_side(image, longest_side))
        assert pixels.dtype == torch.uint8 and pixels.shape == expected_pixels.shape
        assert torch.equal(pixels, expected_pixels)
        assert torch.equal(prepare(image, longest_side), expected_input)


def test_batch_normalisation_is_per_image():
    images = [random_image("RGB", (40, 30), seed) for seed in range(4)]
    batch = torch.stack([to_uint8_tensor(image) for image in images])
    expected = torch.stack([reference(image, 40)[1] for image in images])
    assert torch.equal(normalise(batch), expected)
    assert torch.equal(normalise(batch[1]), expected[1])  # (3, H, W) too


def test_normalise_refuses_float_input():
    with pytest.raises(MultiGrainError, match="uint8"):
        normalise(torch.zeros(1, 3, 4, 4))
