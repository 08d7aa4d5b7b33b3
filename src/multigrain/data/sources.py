"""Which labelled image collection a training run reads, chosen by an Enum."""

from __future__ import annotations

from PIL import Image

from multigrain.data.datasets import (
    FileListImages,
    ImageFolderImages,
    LabelledImages,
    WithUnlabelled,
)
from multigrain.data.fashion_mnist import FashionMNISTImages
from multigrain.data.kinds import DatasetKind
from multigrain.data.listing import list_images
from multigrain.runtime.errors import MultiGrainError


class FirstImages:
    """The first `limit` images of a collection (same classes, same labels)."""

    def __init__(self, images: LabelledImages, limit: int) -> None:
        if limit < 1:
            raise MultiGrainError(f"--limit must be >= 1, got {limit}")
        self._images = images
        self._size = min(limit, len(images))
        self.classes: list[str] = list(images.classes)
        self.labels = images.labels[: self._size]

    def __len__(self) -> int:
        return self._size

    def load(self, index: int) -> Image.Image:
        if not 0 <= index < self._size:
            raise IndexError(index)
        return self._images.load(index)


def open_training_images(
    kind: DatasetKind | str,
    *,
    data_root: str | None = None,
    file_list: str | None = None,
    limit: int | None = None,
    unlabelled: str | None = None,
) -> LabelledImages:
    """Open the labelled training collection `kind` (see DatasetKind for the layouts).

    ``unlabelled`` (a folder, glob or list file) adds images without labels after the
    labelled ones: instance sources for the margin loss, ignored by the classifier.
    """
    kind = DatasetKind(kind)
    if kind is DatasetKind.FASHION_MNIST:
        images: LabelledImages = (
            FashionMNISTImages(data_root, split="train")
            if data_root
            else FashionMNISTImages(split="train")
        )
    elif kind is DatasetKind.FOLDER:
        if not data_root:
            raise MultiGrainError("an image-folder dataset needs --data DIR")
        images = ImageFolderImages(data_root)
    else:
        if not file_list:
            raise MultiGrainError("a file-list dataset needs --file-list FILE")
        images = FileListImages(file_list, root=data_root)
    if limit is not None:
        images = FirstImages(images, limit)
    if unlabelled:
        images = WithUnlabelled(images, list_images(unlabelled))
    return images


def open_heldout_images(
    kind: DatasetKind | str,
    *,
    data_root: str | None = None,
    file_list: str | None = None,
) -> LabelledImages:
    """Open a labelled held-out collection: Fashion-MNIST's test split, or a folder/list."""
    kind = DatasetKind(kind)
    if kind is DatasetKind.FASHION_MNIST:
        return (
            FashionMNISTImages(data_root, split="test")
            if data_root
            else FashionMNISTImages(split="test")
        )
    return open_training_images(kind, data_root=data_root, file_list=file_list)
