"""Image transforms: the paper's training augmentations and the evaluation resize/crop.

Every random draw comes from torch's global RNG, so a caller that seeds it
(see :class:`multigrain.data.training_batches.AugmentedDataset`) gets a reproducible
augmentation.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from PIL import Image
from torch import Tensor, nn
from torchvision.transforms import v2

from multigrain.data.copy_augment import copy_distortions, strong_copy_distortions
from multigrain.data.kinds import AugmentationKind
from multigrain.runtime.errors import MultiGrainError
from multigrain.runtime.imagenet import IMAGENET_MEAN, IMAGENET_STD

#: Principal components of ImageNet RGB pixels (Krizhevsky et al., 2012), for :class:`Lighting`.
IMAGENET_EIGENVALUES: tuple[float, float, float] = (0.2175, 0.0188, 0.0045)
IMAGENET_EIGENVECTORS: tuple[tuple[float, float, float], ...] = (
    (-0.5675, 0.7192, 0.4009),
    (-0.5808, -0.0045, -0.8140),
    (-0.5836, -0.6948, 0.4203),
)

#: Inputs at most this large use a milder RandomResizedCrop (see :func:`train_transform`).
SMALL_INPUT_SIZE = 64
SMALL_INPUT_CROP_SCALE = (0.25, 1.0)
DEFAULT_CROP_SCALE = (0.08, 1.0)
#: The copy recipe keeps at least a quarter of the image: two copies of a source must
#: overlap for the margin loss to teach copy detection (8% crops rarely do).
COPY_CROP_SCALE = (0.25, 1.0)

ImageTransform = Callable[[Image.Image], Tensor]


def lighting(image: Tensor, alpha: Tensor, eigenvalues: Tensor, eigenvectors: Tensor) -> Tensor:
    """AlexNet PCA lighting noise: add ``eigenvectors @ (alpha * eigenvalues)`` to every pixel.

    Args:
        image: (3, H, W) float RGB image in [0, 1].
        alpha: (3,) random weights of the principal components.
        eigenvalues: (3,) variances of the principal components.
        eigenvectors: (3, 3), column j is principal component j.

    Returns:
        (3, H, W) shifted image (not clipped, as in the reference implementation).
    """
    shift = eigenvectors.to(image) @ (alpha.to(image) * eigenvalues.to(image))
    return image + shift.view(3, 1, 1)


class Lighting(nn.Module):
    """PCA lighting noise with ``alpha ~ N(0, alphastd^2)`` drawn from torch's global RNG.

    Input and output: (3, H, W) float tensors. ``alphastd=0`` is the identity.
    """

    eigenvalues: Tensor
    eigenvectors: Tensor

    def __init__(
        self,
        alphastd: float = 0.1,
        *,
        eigenvalues: Sequence[float] = IMAGENET_EIGENVALUES,
        eigenvectors: Sequence[Sequence[float]] = IMAGENET_EIGENVECTORS,
    ) -> None:
        super().__init__()
        if alphastd < 0:
            raise MultiGrainError(f"lighting alphastd {alphastd} is negative: use a value >= 0")
        self.alphastd = float(alphastd)
        self.register_buffer("eigenvalues", torch.tensor(eigenvalues, dtype=torch.float32))
        self.register_buffer("eigenvectors", torch.tensor(eigenvectors, dtype=torch.float32))

    def forward(self, image: Tensor) -> Tensor:
        """(3, H, W) float -> (3, H, W) float."""
        if self.alphastd == 0:
            return image
        alpha = torch.randn(3) * self.alphastd
        return lighting(image, alpha, self.eigenvalues, self.eigenvectors)

    def extra_repr(self) -> str:
        return f"alphastd={self.alphastd}"


class ToRGB(nn.Module):
    """PIL image of any mode -> RGB PIL image (a module rather than a lambda so it pickles)."""

    def forward(self, image: Image.Image) -> Image.Image:
        return image if image.mode == "RGB" else image.convert("RGB")


def _check_size(input_size: int) -> None:
    if input_size < 1:
        raise MultiGrainError(f"input size {input_size} is not positive: use e.g. 224")


def _to_normalized_tensor(mean: Sequence[float], std: Sequence[float]) -> list[nn.Module]:
    return [
        v2.ToImage(),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(mean=list(mean), std=list(std)),
    ]


def train_transform(
    kind: AugmentationKind | str,
    *,
    input_size: int,
    grayscale_to_rgb: bool = True,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> ImageTransform:
    """The training transform: PIL image -> (C, input_size, input_size) float tensor.

    ``FULL`` is the paper's recipe: RandomResizedCrop, horizontal flip,
    ColorJitter(0.4, 0.4, 0.4) and PCA lighting (alphastd 0.1, applied to the
    [0, 1] image before normalisation). ``AUTOAUGMENT`` replaces jitter and
    lighting by torchvision's AutoAugment ImageNet policy. ``COPY`` is ``FULL`` with
    stronger colour jitter plus the copy edits of
    :func:`multigrain.data.copy_augment.copy_distortions` (rotation, borders and caption
    bands, text and sticker overlays, blur, low resolution, JPEG), for training copy
    detection; ``COPY_STRONG`` uses the wider edits of
    :func:`multigrain.data.copy_augment.strong_copy_distortions` (the shipped model's).
    ``NONE`` is :func:`eval_transform`.

    RandomResizedCrop keeps at least 8% of the image area (the ImageNet default)
    but 25% when ``input_size <= 64``: tiny images such as Fashion-MNIST's 28 px
    ones keep too few pixels of the object with the default. ``COPY`` always keeps
    25%, so that the m copies of a source overlap.

    Args:
        kind: the augmentation recipe (an :class:`AugmentationKind` or its value).
        input_size: side S of the square output.
        grayscale_to_rgb: convert every input to RGB first (C = 3). With False the
            image is used as given and C follows its mode; ``mean``/``std`` must match.
        mean, std: per-channel normalisation.
    """
    _check_size(input_size)
    try:
        kind = AugmentationKind(kind)
    except ValueError:
        choices = ", ".join(k.value for k in AugmentationKind)
        raise MultiGrainError(f"unknown augmentation {kind!r}: use one of {choices}") from None
    if kind is AugmentationKind.NONE:
        return eval_transform(
            input_size=input_size, grayscale_to_rgb=grayscale_to_rgb, mean=mean, std=std
        )
    if kind in (AugmentationKind.COPY, AugmentationKind.COPY_STRONG):
        scale = COPY_CROP_SCALE
    else:
        scale = SMALL_INPUT_CROP_SCALE if input_size <= SMALL_INPUT_SIZE else DEFAULT_CROP_SCALE
    steps: list[nn.Module] = [ToRGB()] if grayscale_to_rgb else []
    steps += [
        v2.RandomResizedCrop(input_size, scale=scale, antialias=True),
        v2.RandomHorizontalFlip(),
    ]
    if kind in (AugmentationKind.COPY, AugmentationKind.COPY_STRONG):
        steps += copy_distortions() if kind is AugmentationKind.COPY else strong_copy_distortions()
        steps += [
            v2.ToImage(),
            v2.ToDtype(torch.float32, scale=True),
            Lighting(0.1),
            v2.Normalize(mean=list(mean), std=list(std)),
        ]
    elif kind is AugmentationKind.FULL:
        steps += [
            v2.ColorJitter(brightness=0.4, contrast=0.4, saturation=0.4),
            v2.ToImage(),
            v2.ToDtype(torch.float32, scale=True),
            Lighting(0.1),
            v2.Normalize(mean=list(mean), std=list(std)),
        ]
    else:
        steps += [v2.AutoAugment(v2.AutoAugmentPolicy.IMAGENET)]
        steps += _to_normalized_tensor(mean, std)
    return v2.Compose(steps)


def eval_transform(
    *,
    input_size: int,
    crop_fraction: float = 0.875,
    grayscale_to_rgb: bool = True,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> ImageTransform:
    """Resize the shorter side to ``round(input_size / crop_fraction)``, center-crop ``input_size``.

    PIL image -> (C, input_size, input_size) float tensor, normalised. The
    default ``crop_fraction`` gives the usual 256 -> 224; use 1.0 to keep the
    whole (square) image.
    """
    _check_size(input_size)
    if not 0 < crop_fraction <= 1:
        raise MultiGrainError(f"crop fraction {crop_fraction} is not in (0, 1]: use e.g. 0.875")
    resize = max(input_size, round(input_size / crop_fraction))
    steps: list[nn.Module] = [ToRGB()] if grayscale_to_rgb else []
    steps += [v2.Resize(resize, antialias=True), v2.CenterCrop(input_size)]
    steps += _to_normalized_tensor(mean, std)
    return v2.Compose(steps)
