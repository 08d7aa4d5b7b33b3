"""ImageNet validation set (50000 images, 1000 classes) as labelled image paths.

Two accepted layouts::

    root/                          root/
      n01440764/                     ILSVRC2012_val_00000001.JPEG
        ILSVRC2012_val_00000293.JPEG ...
        ...                        labels.txt (or labels_file=): lines "<file name> <label>"
      n01443537/
      ...

Left: an ImageFolder, one folder per class (WordNet id); classes are the sorted folder names.
Right: a flat folder plus a label file; a label is an integer class index or a class name
(e.g. a wnid). With integer labels, `classes` names them (else they become "0", "1", ...);
with names, classes are `classes` if given, else the sorted distinct names.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from multigrain.data.standard._files import benchmark_images, require_dir, require_file
from multigrain.data.standard.types import ClassificationBenchmark
from multigrain.runtime.errors import MultiGrainError

LAYOUT = "root/<wnid>/*.JPEG (class folders), or root/*.JPEG plus a file of '<file name> <label>'"


def _read_label_file(path: Path) -> list[tuple[str, str]]:
    entries: list[tuple[str, str]] = []
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        parts = raw.split()
        if not parts or parts[0].startswith("#"):
            continue
        if len(parts) != 2:
            raise MultiGrainError(f"{path}:{number}: expected '<file name> <label>', got {raw!r}")
        entries.append((parts[0], parts[1]))
    if not entries:
        raise MultiGrainError(f"{path} lists no '<file name> <label>' lines")
    return entries


def _from_label_file(
    root: Path, labels_file: Path, classes: list[str] | None
) -> ClassificationBenchmark:
    entries = _read_label_file(require_file(labels_file, what="ImageNet labels", layout=LAYOUT))
    images = [root / name for name, _ in entries]
    missing = [p for p in images if not p.is_file()]
    if missing:
        raise MultiGrainError(
            f"ImageNet: {len(missing)} images listed in {labels_file} are missing, "
            f"e.g. {missing[0]}"
        )
    raw_labels = [label for _, label in entries]
    if all(label.lstrip("-").isdigit() for label in raw_labels):
        labels = np.asarray([int(label) for label in raw_labels], dtype=np.int64)
        if classes is None:
            classes = [str(i) for i in range(int(labels.max()) + 1)]
        if labels.min() < 0 or labels.max() >= len(classes):
            raise MultiGrainError(
                f"{labels_file}: labels must lie in [0, {len(classes)}), got {labels.min()}.."
                f"{labels.max()}"
            )
    else:
        if classes is None:
            classes = sorted(set(raw_labels))
        index = {name: i for i, name in enumerate(classes)}
        unknown = sorted(set(raw_labels) - set(index))
        if unknown:
            raise MultiGrainError(f"{labels_file}: label {unknown[0]!r} is not a known class")
        labels = np.asarray([index[label] for label in raw_labels], dtype=np.int64)
    return ClassificationBenchmark(
        name="imagenet-val", images=images, labels=labels, classes=list(classes)
    )


def read_imagenet_val(
    root: Path | str, *, labels_file: Path | str | None = None, classes: list[str] | None = None
) -> ClassificationBenchmark:
    """Read an ImageNet-style validation set (layouts in the module docstring)."""
    root = require_dir(Path(root), what="ImageNet validation set", layout=LAYOUT)
    if labels_file is None and (root / "labels.txt").is_file():
        labels_file = root / "labels.txt"
    if labels_file is not None:
        return _from_label_file(root, Path(labels_file), classes)

    folders = sorted(p for p in root.iterdir() if p.is_dir())
    if not folders:
        raise MultiGrainError(
            f"ImageNet: {root} has no class folders and no labels.txt; expected {LAYOUT}"
        )
    if classes is not None and sorted(classes) != [p.name for p in folders]:
        raise MultiGrainError(f"ImageNet: classes= does not match the folders in {root}")
    images: list[Path] = []
    labels: list[int] = []
    for label, folder in enumerate(folders):
        found = benchmark_images(folder)
        if not found:
            raise MultiGrainError(f"ImageNet: class folder {folder} holds no images")
        images += found
        labels += [label] * len(found)
    return ClassificationBenchmark(
        name="imagenet-val",
        images=images,
        labels=np.asarray(labels, dtype=np.int64),
        classes=[p.name for p in folders],
    )
