"""Which image files a job reads: a folder (recursive), a glob pattern, or a file list.

The listing is sorted, so row i of every output belongs to the i-th path whatever the
file system's order; that order is also what splits work across `torchrun` ranks.
"""

from __future__ import annotations

import glob
import os
from pathlib import Path

from multigrain.data.images import IMAGE_EXTENSIONS
from multigrain.runtime.errors import MultiGrainError

LIST_SUFFIXES = (".txt", ".lst", ".list")


def is_image_name(name: str) -> bool:
    return name.lower().endswith(tuple(ext.lower() for ext in IMAGE_EXTENSIONS))


def list_images(source: str | os.PathLike[str]) -> list[Path]:
    """All image paths under `source`, sorted (a list file keeps its own order).

    - a folder: every file with an image extension below it, recursively (symlinked
      folders are not followed, so a link cycle cannot trap the walk);
    - a glob pattern (contains `*`, `?` or `[`; `**` recurses): the matching image files;
    - a text file (.txt/.lst/.list): one path per line, relative to the list's folder,
      blank lines and lines starting with '#' ignored, kept even without an image extension.
    """
    text = str(source)
    if any(char in text for char in "*?["):
        paths = [Path(p) for p in glob.glob(text, recursive=True) if is_image_name(p)]
        paths = [p for p in paths if p.is_file()]
        if not paths:
            raise MultiGrainError(f"no image files match the pattern {text!r}: check the pattern")
        return sorted(paths)
    path = Path(source)
    if not path.exists():
        raise MultiGrainError(f"input {path} does not exist: give a folder, a glob or a list file")
    if path.is_dir():
        paths = []
        for folder, dirs, files in os.walk(path, onerror=_raise_walk_error):
            dirs.sort()
            paths.extend(Path(folder) / name for name in files if is_image_name(name))
        if not paths:
            extensions = ", ".join(IMAGE_EXTENSIONS)
            raise MultiGrainError(f"no image files ({extensions}) found under {path}")
        return sorted(paths)
    if path.suffix.lower() in LIST_SUFFIXES:
        return _read_list(path)
    if is_image_name(path.name):
        return [path]
    raise MultiGrainError(
        f"input {path} is neither a folder, an image, nor a list file ({', '.join(LIST_SUFFIXES)})"
    )


def _read_list(path: Path) -> list[Path]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise MultiGrainError(f"cannot read the file list {path}: {error}") from error
    paths = []
    for line in lines:
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        entry = Path(line)
        paths.append(entry if entry.is_absolute() else path.parent / entry)
    if not paths:
        raise MultiGrainError(f"the file list {path} names no images")
    return paths


def _raise_walk_error(error: OSError) -> None:
    raise MultiGrainError(f"cannot list {error.filename}: {error.strerror}") from error
