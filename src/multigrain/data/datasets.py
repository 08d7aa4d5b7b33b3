"""Labelled image collections and the training loader built on them.

Readers (an ImageFolder tree, a list file, Fashion-MNIST) expose the
:class:`LabelledImages` protocol: ``len()``, ``load(index) -> PIL.Image``,
``labels`` and ``classes``; they only decode. :class:`AugmentedDataset` applies
a random transform reproducibly from the per-sample seed chosen by
:class:`~multigrain.data.samplers.RepeatedAugmentationSampler`, so the images a
training run sees depend neither on the number of DataLoader workers nor on
where it was resumed.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from multigrain.data.fashion_mnist import DEFAULT_FASHION_MNIST_ROOT, FashionMNISTImages
from multigrain.data.images import IMAGE_EXTENSIONS, load_rgb
from multigrain.data.samplers import RepeatedAugmentationSampler
from multigrain.runtime.errors import MultiGrainError

__all__ = [
    "DEFAULT_FASHION_MNIST_ROOT",
    "AugmentedDataset",
    "FashionMNISTImages",
    "FileListImages",
    "ImageFolderImages",
    "LabelledImages",
    "TrainingBatch",
    "collate_training",
    "make_training_loader",
]

logger = logging.getLogger(__name__)


@runtime_checkable
class LabelledImages(Protocol):
    """A finite, indexable collection of images with integer class labels."""

    labels: list[int]  # labels[i] in [0, len(classes))
    classes: list[str]  # class names, indexed by label

    def __len__(self) -> int: ...

    def load(self, index: int) -> Image.Image:
        """Decode image ``index`` (any PIL mode; transforms convert to RGB)."""
        ...


def _is_image(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS


class ImageFolderImages:
    """Images laid out as ``root/<class>/**/<image>.<ext>`` (torchvision's ImageFolder layout).

    Classes are the sorted names of the non-hidden subdirectories of ``root``;
    images are found recursively inside each class directory (extensions in
    :data:`IMAGE_EXTENSIONS`, any case) and sorted by path, so the index of an
    image is deterministic. Empty class directories keep their label (a warning
    is logged).
    """

    def __init__(self, root: str | Path) -> None:
        root = Path(root)
        if not root.exists():
            raise MultiGrainError(
                f"image folder {root} does not exist: pass a directory laid out as "
                f"{root}/<class>/<image>.jpg"
            )
        if not root.is_dir():
            raise MultiGrainError(
                f"image folder {root} is not a directory: pass a directory laid out as "
                f"<root>/<class>/<image>.jpg"
            )
        class_dirs = sorted(
            (d for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")),
            key=lambda d: d.name,
        )
        self.root = root
        self.classes: list[str] = [d.name for d in class_dirs]
        self.paths: list[Path] = []
        self.labels: list[int] = []
        for label, class_dir in enumerate(class_dirs):
            found = sorted(p for p in class_dir.rglob("*") if _is_image(p))
            if not found:
                logger.warning("class directory %s holds no images", class_dir)
            self.paths += found
            self.labels += [label] * len(found)
        if not self.paths:
            raise MultiGrainError(
                f"no images found under {root}: expected {root}/<class>/<image>.jpg"
            )
        logger.info("%s: %d images in %d classes", root, len(self.paths), len(self.classes))

    def __len__(self) -> int:
        return len(self.paths)

    def load(self, index: int) -> Image.Image:
        """Decode image ``index`` as RGB (raises MultiGrainError naming a bad file)."""
        return load_rgb(self.paths[index])


#: Label of an image without a class: the classification loss ignores it.
UNLABELLED = -1


class WithUnlabelled:
    """A labelled collection followed by extra images without labels (label ``UNLABELLED``).

    The extra images serve as instance sources only: repeated augmentations of them
    train the margin loss, and the classification loss skips them. Classes are those
    of the labelled collection; the extra images come after its images, in sorted order.
    """

    def __init__(self, labelled: LabelledImages, extra_paths: Sequence[Path]) -> None:
        self._labelled = labelled
        self._extra = list(extra_paths)
        self.classes: list[str] = list(labelled.classes)
        self.labels: list[int] = list(labelled.labels) + [UNLABELLED] * len(self._extra)
        logger.info("%d labelled + %d unlabelled training images", len(labelled), len(self._extra))

    def __len__(self) -> int:
        return len(self.labels)

    def load(self, index: int) -> Image.Image:
        if index >= len(self._labelled):
            return load_rgb(self._extra[index - len(self._labelled)])
        return self._labelled.load(index)


class FileListImages:
    """Images listed in a text file, one ``<path><TAB or spaces><label>`` per line.

    The label is the last whitespace-separated field, so paths may contain
    spaces. Blank lines and lines starting with ``#`` are ignored. Relative paths
    are resolved against ``root`` (default: the list file's directory). Files are
    not checked until loaded.

    Labels: if every label is a non-negative integer they are used as is and
    ``classes`` is ``["0", ..., str(max)]``; otherwise every label is a class
    name and ``classes`` is the sorted set of names (so ``"3"`` next to ``"cat"``
    is a name too).
    """

    def __init__(self, list_file: str | Path, *, root: str | Path | None = None) -> None:
        list_file = Path(list_file)
        if not list_file.is_file():
            raise MultiGrainError(
                f"image list {list_file} does not exist or is not a file: pass a text file "
                "with one '<path> <label>' per line"
            )
        base = Path(root) if root is not None else list_file.parent
        paths: list[Path] = []
        raw_labels: list[str] = []
        try:
            text = list_file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as error:
            raise MultiGrainError(
                f"cannot read image list {list_file}: {error}; save it as UTF-8 text"
            ) from error
        for number, line in enumerate(text.splitlines(), start=1):
            stripped = line.strip()
            if not stripped or stripped.startswith("#"):
                continue
            fields = stripped.rsplit(maxsplit=1)
            if len(fields) != 2:
                raise MultiGrainError(
                    f"{list_file} line {number}: expected '<path> <label>', got {stripped!r}"
                )
            path = Path(fields[0])
            paths.append(path if path.is_absolute() else base / path)
            raw_labels.append(fields[1])
        if not paths:
            raise MultiGrainError(
                f"image list {list_file} lists no images: add '<path> <label>' lines"
            )
        if all(label.isdecimal() for label in raw_labels):
            self.labels: list[int] = [int(label) for label in raw_labels]
            self.classes: list[str] = [str(i) for i in range(max(self.labels) + 1)]
        else:
            self.classes = sorted(set(raw_labels))
            index = {name: i for i, name in enumerate(self.classes)}
            self.labels = [index[label] for label in raw_labels]
        self.paths = paths
        logger.info("%s: %d images in %d classes", list_file, len(paths), len(self.classes))

    def __len__(self) -> int:
        return len(self.paths)

    def load(self, index: int) -> Image.Image:
        """Decode image ``index`` as RGB (raises MultiGrainError naming a bad file)."""
        return load_rgb(self.paths[index])


class AugmentedDataset(Dataset[tuple[Tensor, int, int]]):
    """Applies ``transform`` to ``images`` reproducibly: the key is ``(index, sample_seed)``.

    The transform runs with torch's CPU RNG and Python's ``random`` seeded from
    ``sample_seed``; both generators are restored afterwards, so the caller's
    random streams are untouched and the result depends only on the key.
    """

    def __init__(self, images: LabelledImages, transform: Callable[[Image.Image], Tensor]) -> None:
        self.images = images
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, key: tuple[int, int]) -> tuple[Tensor, int, int]:
        """``(index, sample_seed) -> (image (3, S, S) float, label, index)``."""
        index, sample_seed = key
        return self._augment(self.images.load(index), index, sample_seed)

    def __getitems__(self, keys: Sequence[tuple[int, int]]) -> list[tuple[Tensor, int, int]]:
        """A whole batch of keys, decoding each source image once.

        Repeated augmentations put m copies of each source in a batch; the DataLoader
        hands the batch's keys here (``__getitems__``), so a file is read and decoded
        once per batch instead of m times. Each item equals ``self[key]``.
        """
        decoded: dict[int, Image.Image] = {}
        items = []
        for index, sample_seed in keys:
            if index not in decoded:
                decoded[index] = self.images.load(index)
            items.append(self._augment(decoded[index], index, sample_seed))
        return items

    def _augment(self, image: Image.Image, index: int, sample_seed: int) -> tuple[Tensor, int, int]:
        python_state = random.getstate()
        try:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(sample_seed)
                random.seed(sample_seed)
                tensor = self.transform(image)
        finally:
            random.setstate(python_state)
        return tensor, self.images.labels[index], index


@dataclass(frozen=True)
class TrainingBatch:
    """A collated training batch.

    Attributes:
        images: (B, 3, S, S) float.
        labels: (B,) int64 class labels.
        instance_ids: (B,) int64 source-image indices; equal ids are positives.
    """

    images: Tensor
    labels: Tensor
    instance_ids: Tensor

    def to(self, device: torch.device | str, *, non_blocking: bool = False) -> TrainingBatch:
        """Copy of the batch on ``device``."""
        return TrainingBatch(
            images=self.images.to(device, non_blocking=non_blocking),
            labels=self.labels.to(device, non_blocking=non_blocking),
            instance_ids=self.instance_ids.to(device, non_blocking=non_blocking),
        )

    def pin_memory(self) -> TrainingBatch:
        """Copy in page-locked memory (called by ``DataLoader(pin_memory=True)``)."""
        return TrainingBatch(
            images=self.images.pin_memory(),
            labels=self.labels.pin_memory(),
            instance_ids=self.instance_ids.pin_memory(),
        )

    def __len__(self) -> int:
        return len(self.labels)


def collate_training(batch: Sequence[tuple[Tensor, int, int]]) -> TrainingBatch:
    """Stack ``AugmentedDataset`` items: B x ((3, S, S), label, index) -> :class:`TrainingBatch`."""
    images, labels, indices = zip(*batch, strict=True)
    return TrainingBatch(
        images=torch.stack(images),
        labels=torch.tensor(labels, dtype=torch.long),
        instance_ids=torch.tensor(indices, dtype=torch.long),
    )


def _init_worker(worker_id: int) -> None:
    # One intra-op thread per worker: N workers x N threads would oversubscribe the CPUs.
    torch.set_num_threads(1)


def make_training_loader(
    dataset: AugmentedDataset,
    sampler: RepeatedAugmentationSampler,
    *,
    num_workers: int = 0,
    pin_memory: bool = False,
) -> DataLoader[tuple[Tensor, int, int]]:
    """A DataLoader yielding :class:`TrainingBatch` in the sampler's order.

    The loader gets its own ``torch.Generator`` (it only seeds worker processes),
    so creating an iterator does not consume the global RNG: a resumed run's
    global random stream matches the original run's.
    """
    if num_workers < 0:
        raise MultiGrainError(f"number of workers {num_workers} is negative: use 0 or more")
    if sampler.dataset_size != len(dataset):
        raise MultiGrainError(
            f"sampler covers {sampler.dataset_size} images but the dataset has {len(dataset)}: "
            "build the sampler with dataset_size=len(dataset)"
        )
    return DataLoader(
        dataset,
        batch_sampler=sampler,
        num_workers=num_workers,
        collate_fn=collate_training,
        pin_memory=pin_memory,
        worker_init_fn=_init_worker,
        persistent_workers=False,
        generator=torch.Generator(),
    )
