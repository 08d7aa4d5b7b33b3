"""Labelled image collections: an ImageFolder tree, a list file, extra unlabelled images.

Readers (these, and :class:`~multigrain.data.fashion_mnist.FashionMNISTImages`) expose the
:class:`LabelledImages` protocol: ``len()``, ``load(index) -> PIL.Image``, ``labels`` and
``classes``; they only decode. Augmentation and batching live in
:mod:`multigrain.data.training_batches`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

from PIL import Image

from multigrain.data.images import load_rgb
from multigrain.data.listing import image_files
from multigrain.runtime.errors import MultiGrainError

__all__ = [
    "UNLABELLED",
    "FileListImages",
    "ImageFolderImages",
    "LabelledImages",
    "WithUnlabelled",
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


class ImageFolderImages:
    """Images laid out as ``root/<class>/**/<image>.<ext>`` (torchvision's ImageFolder layout).

    Classes are the sorted names of the non-hidden subdirectories of ``root``; images are
    found recursively inside each class directory (:func:`~multigrain.data.listing.image_files`:
    extensions in ``IMAGE_EXTENSIONS``, any case) and sorted by path, so the index of an
    image is deterministic. Empty class directories keep their label (a warning is logged).
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
            found = image_files(class_dir)
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
