"""The data choices, as Enums free of torch and PIL: the CLI types its options with them.

Kept apart from :mod:`multigrain.data.sources` and :mod:`multigrain.data.transforms`
(which act on them with PIL and torchvision) so that `multigrain --help` loads neither;
those modules re-export the names.
"""

from __future__ import annotations

from enum import Enum


class DatasetKind(str, Enum):
    """Which labelled image collection a run reads (:func:`multigrain.data.sources`)."""

    FASHION_MNIST = "fashion-mnist"  # the built-in labelled set (Debian dataset-fashion-mnist)
    FOLDER = "folder"  # ImageFolder layout: ROOT/<class>/<image>
    FILE_LIST = "file-list"  # text file of "path label" lines


class AugmentationKind(str, Enum):
    """Training augmentation recipes."""

    NONE = "none"  # resize + center crop only (the evaluation transform)
    FULL = "full"  # RandomResizedCrop + flip + colour jitter + PCA lighting (the paper's)
    AUTOAUGMENT = "autoaugment"  # RandomResizedCrop + flip + AutoAugment ImageNet policy
    COPY = "copy"  # FULL + copy-detection edits (rotation, frames, overlays, blur, JPEG, ...)
    # COPY's edits made stronger and wider (picture-in-picture, kept corners, text bars,
    # pixelation, hue): the shipped model's recipe
    COPY_STRONG = "copy-strong"
