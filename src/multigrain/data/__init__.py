"""Data: image decoding, labelled collections, augmentations and repeated-augmentation batches.

The names below are imported from their modules on first use, not when the package is:
importing a torch-free module of this package (``multigrain.data.kinds``, the Enums the
CLI types its options with) must not load torch and torchvision (start-up time).
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from multigrain.data.datasets import FileListImages, ImageFolderImages, LabelledImages
    from multigrain.data.fashion_mnist import (
        DEFAULT_FASHION_MNIST_ROOT,
        FASHION_MNIST_CLASSES,
        FashionMNISTImages,
    )
    from multigrain.data.images import load_rgb
    from multigrain.data.kinds import AugmentationKind
    from multigrain.data.listing import IMAGE_EXTENSIONS
    from multigrain.data.samplers import RepeatedAugmentationSampler
    from multigrain.data.training_batches import (
        AugmentedDataset,
        TrainingBatch,
        collate_training,
        make_training_loader,
    )
    from multigrain.data.transforms import (
        IMAGENET_MEAN,
        IMAGENET_STD,
        Lighting,
        eval_transform,
        train_transform,
    )

#: public name -> the module defining it
_MODULES = {
    "FileListImages": "datasets",
    "ImageFolderImages": "datasets",
    "LabelledImages": "datasets",
    "DEFAULT_FASHION_MNIST_ROOT": "fashion_mnist",
    "FASHION_MNIST_CLASSES": "fashion_mnist",
    "FashionMNISTImages": "fashion_mnist",
    "load_rgb": "images",
    "AugmentationKind": "kinds",
    "IMAGE_EXTENSIONS": "listing",
    "RepeatedAugmentationSampler": "samplers",
    "AugmentedDataset": "training_batches",
    "TrainingBatch": "training_batches",
    "collate_training": "training_batches",
    "make_training_loader": "training_batches",
    "IMAGENET_MEAN": "transforms",
    "IMAGENET_STD": "transforms",
    "Lighting": "transforms",
    "eval_transform": "transforms",
    "train_transform": "transforms",
}

__all__ = [
    "DEFAULT_FASHION_MNIST_ROOT",
    "FASHION_MNIST_CLASSES",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "IMAGE_EXTENSIONS",
    "AugmentationKind",
    "AugmentedDataset",
    "FashionMNISTImages",
    "FileListImages",
    "ImageFolderImages",
    "LabelledImages",
    "Lighting",
    "RepeatedAugmentationSampler",
    "TrainingBatch",
    "collate_training",
    "eval_transform",
    "load_rgb",
    "make_training_loader",
    "train_transform",
]


def __getattr__(name: str) -> Any:
    if name not in _MODULES:
        raise AttributeError(f"module 'multigrain.data' has no attribute {name!r}")
    value = getattr(import_module(f"multigrain.data.{_MODULES[name]}"), name)
    globals()[name] = value  # looked up once
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_MODULES])
