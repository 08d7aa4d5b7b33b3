"""Small filesystem checks shared by the benchmark readers; each failure names what is missing."""

from __future__ import annotations

from pathlib import Path

from multigrain.data.listing import image_files
from multigrain.runtime.errors import MultiGrainError

#: The formats the standard benchmarks are distributed in: their readers read only these.
BENCHMARK_SUFFIXES = (".jpg", ".jpeg", ".png")


def require_dir(path: Path, *, what: str, layout: str) -> Path:
    """Return `path` if it is a folder, else raise saying what it should hold."""
    if not path.is_dir():
        raise MultiGrainError(f"{what}: folder {path} not found; expected layout: {layout}")
    return path


def require_file(path: Path, *, what: str, layout: str) -> Path:
    """Return `path` if it is a file, else raise saying what it should hold."""
    if not path.is_file():
        raise MultiGrainError(f"{what}: file {path} not found; expected layout: {layout}")
    return path


def benchmark_images(folder: Path, *, recursive: bool = False) -> list[Path]:
    """Image files (.jpg/.jpeg/.png, any case) in `folder`, sorted by path."""
    return image_files(folder, recursive=recursive, suffixes=BENCHMARK_SUFFIXES)


def first_dir_with_images(candidates: list[Path]) -> Path | None:
    """The first existing folder of `candidates` that holds at least one image, else None."""
    for folder in candidates:
        if folder.is_dir() and benchmark_images(folder):
            return folder
    return None
