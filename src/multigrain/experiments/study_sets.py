"""The image sets of the Fashion-MNIST study: class-balanced, seeded, disjoint.

- training: ``per_class`` images of each class from the training split, written once as
  PNG files into ``<folder>/<label:02d>/`` so that ``multigrain train`` reads them as an
  image folder (the folders sort in label order, so labels match Fashion-MNIST's);
- whitening fit: images of the training split outside the training subset;
- test: images of the test split (curves read its first ones, the RQ4 grid its first
  ``grid_images``).
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from multigrain.data.datasets import LabelledImages

_COMPLETE = ".complete"


class IndexedImages:
    """The images of `images` at `indices`, in that order (same classes and labels)."""

    def __init__(self, images: LabelledImages, indices: Sequence[int]) -> None:
        self._images = images
        self.indices = [int(i) for i in indices]
        self.classes: list[str] = list(images.classes)
        self.labels = [int(images.labels[i]) for i in self.indices]

    def __len__(self) -> int:
        return len(self.indices)

    def load(self, index: int) -> Image.Image:
        return self._images.load(self.indices[index])

    def first(self, count: int) -> IndexedImages:
        """The first `count` of these images."""
        return IndexedImages(self._images, self.indices[:count])


def balanced_indices(
    labels: Sequence[int], per_class: int, *, seed: int, exclude: Sequence[int] = ()
) -> list[int]:
    """`per_class` indices of each label, drawn without replacement (seeded), skipping
    `exclude`; interleaved by class (c0, c1, ..., c0, c1, ...) so any prefix is balanced."""
    labels_array = np.asarray(labels)
    rng = np.random.default_rng(seed)
    excluded = np.zeros(len(labels_array), dtype=bool)
    excluded[np.asarray(list(exclude), dtype=int)] = True
    chosen = []
    for label in np.unique(labels_array):
        pool = np.flatnonzero((labels_array == label) & ~excluded)
        if len(pool) < per_class:
            raise ValueError(f"class {label} has {len(pool)} images, {per_class} asked")
        chosen.append(rng.permutation(pool)[:per_class])
    return [int(i) for i in np.stack(chosen, axis=1).reshape(-1)]


def write_image_folder(images: IndexedImages, folder: Path) -> Path:
    """Write `images` as ``folder/<label:02d>/<position:05d>.png`` (once: a complete folder
    is kept as it is; a half-written one is rewritten)."""
    if (folder / _COMPLETE).exists():
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    for position in range(len(images)):
        target = folder / f"{images.labels[position]:02d}" / f"{position:05d}.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        images.load(position).save(target)
    (folder / _COMPLETE).write_text(f"{len(images)} images\n")
    return folder


@dataclass(frozen=True)
class StudySets:
    train_folder: Path
    whitening: IndexedImages
    test: IndexedImages


def study_sets(
    train_split: LabelledImages,
    test_split: LabelledImages,
    folder: Path,
    *,
    train_per_class: int,
    whitening_per_class: int,
    test_per_class: int,
    seed: int = 0,
) -> StudySets:
    """The three sets (module docstring); the training images are written under `folder`."""
    train = balanced_indices(train_split.labels, train_per_class, seed=seed)
    whitening = balanced_indices(
        train_split.labels, whitening_per_class, seed=seed + 1, exclude=train
    )
    test = balanced_indices(test_split.labels, test_per_class, seed=seed + 2)
    train_folder = write_image_folder(IndexedImages(train_split, train), folder)
    return StudySets(
        train_folder, IndexedImages(train_split, whitening), IndexedImages(test_split, test)
    )
