"""Data: image decoding, labelled collections, augmentations and repeated-augmentation batches."""

from multigrain.data.datasets import FileListImages, ImageFolderImages, LabelledImages
from multigrain.data.fashion_mnist import (
    DEFAULT_FASHION_MNIST_ROOT,
    FASHION_MNIST_CLASSES,
    FashionMNISTImages,
)
from multigrain.data.images import load_rgb
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
    AugmentationKind,
    Lighting,
    eval_transform,
    train_transform,
)

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
