"""Fashion-MNIST (Xiao et al., 2017) read from its gzipped IDX files."""

from __future__ import annotations

import functools
import gzip
import logging
import struct
from pathlib import Path

import numpy as np
from PIL import Image

from multigrain.runtime.errors import MultiGrainError

logger = logging.getLogger(__name__)

DEFAULT_FASHION_MNIST_ROOT = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES: tuple[str, ...] = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
_FILE_PREFIXES = {"train": "train", "test": "t10k"}
_IMAGES_MAGIC = 2051  # IDX: unsigned bytes, 3 dimensions
_LABELS_MAGIC = 2049  # IDX: unsigned bytes, 1 dimension


@functools.lru_cache(maxsize=8)
def read_idx(path: Path) -> np.ndarray:
    """Decode a gzipped IDX file of unsigned bytes: (N,) labels or (N, H, W) images.

    Cached per process; the returned array is read-only.

    Raises:
        MultiGrainError: the file is unreadable, not IDX uint8 data, or truncated.
    """
    try:
        with gzip.open(path, "rb") as stream:
            data = stream.read()
    except (OSError, EOFError) as error:
        raise MultiGrainError(
            f"cannot read {path}: {error}; reinstall Fashion-MNIST or fix --data-root"
        ) from error
    if len(data) < 8:
        raise MultiGrainError(f"{path} is too short to be an IDX file: reinstall Fashion-MNIST")
    (magic,) = struct.unpack(">i", data[:4])
    if magic not in (_IMAGES_MAGIC, _LABELS_MAGIC):
        raise MultiGrainError(
            f"{path} has magic number {magic}, expected {_IMAGES_MAGIC} (images) or "
            f"{_LABELS_MAGIC} (labels): reinstall Fashion-MNIST"
        )
    num_dims = magic & 0xFF
    header = 4 + 4 * num_dims
    shape = struct.unpack(f">{num_dims}i", data[4:header]) if len(data) >= header else ()
    expected = header + int(np.prod(shape)) if shape else -1
    if len(data) != expected:
        raise MultiGrainError(
            f"{path} holds {len(data)} bytes, expected {expected} for shape {shape}: "
            "the file is truncated or corrupt, reinstall Fashion-MNIST"
        )
    array = np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)
    array.flags.writeable = False
    return array


class FashionMNISTImages:
    """The 60,000 training or 10,000 test 28x28 grayscale images of Fashion-MNIST.

    Args:
        root: directory holding ``{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz``.
        split: ``"train"`` or ``"test"``.
        limit: keep only the first ``limit`` images (for quick runs).

    Attributes:
        images: (N, 28, 28) uint8, read-only.
        labels: N ints in [0, 10).
        classes: the 10 class names.
    """

    def __init__(
        self,
        root: str | Path = DEFAULT_FASHION_MNIST_ROOT,
        *,
        split: str = "train",
        limit: int | None = None,
    ) -> None:
        root = Path(root)
        if split not in _FILE_PREFIXES:
            raise MultiGrainError(f"unknown Fashion-MNIST split {split!r}: use 'train' or 'test'")
        if limit is not None and limit < 1:
            raise MultiGrainError(f"limit {limit} is not positive: use a limit >= 1 or None")
        prefix = _FILE_PREFIXES[split]
        image_file = root / f"{prefix}-images-idx3-ubyte.gz"
        label_file = root / f"{prefix}-labels-idx1-ubyte.gz"
        for path in (image_file, label_file):
            if not path.is_file():
                raise MultiGrainError(
                    f"Fashion-MNIST not found at {root} (missing {path.name}): install it with "
                    "`sudo apt-get install dataset-fashion-mnist` or pass --data-root DIR "
                    "holding train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, "
                    "t10k-images-idx3-ubyte.gz and t10k-labels-idx1-ubyte.gz"
                )
        images = read_idx(image_file)
        labels = read_idx(label_file)
        if images.ndim != 3 or labels.ndim != 1:
            raise MultiGrainError(
                f"{image_file} or {label_file} holds the wrong kind of IDX data "
                f"(shapes {images.shape} and {labels.shape}): reinstall Fashion-MNIST"
            )
        if len(images) != len(labels):
            raise MultiGrainError(
                f"{image_file} holds {len(images)} images but {label_file} holds "
                f"{len(labels)} labels: reinstall Fashion-MNIST"
            )
        if labels.size and int(labels.max()) >= len(FASHION_MNIST_CLASSES):
            raise MultiGrainError(f"{label_file} has labels above 9: reinstall Fashion-MNIST")
        self.root = root
        self.split = split
        self.images: np.ndarray = images[:limit]
        self.labels: list[int] = labels[:limit].tolist()
        self.classes: list[str] = list(FASHION_MNIST_CLASSES)

    def __len__(self) -> int:
        return len(self.labels)

    def load(self, index: int) -> Image.Image:
        """Image ``index`` as a 28x28 PIL image in mode ``"L"``."""
        return Image.fromarray(self.images[index])  # uint8 (28, 28) -> mode "L"
