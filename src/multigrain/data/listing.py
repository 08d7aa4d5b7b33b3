"""Which files are images, and which image files a job reads: a folder, a glob or a file list.

One suffix list (:data:`IMAGE_EXTENSIONS`) and one folder walk (:func:`image_files`) serve
every reader; a reader that reads fewer formats (the benchmark readers: .jpg/.png) passes its
narrower `suffixes`. Listings are sorted, so row i of every output belongs to the i-th path
whatever the file system's order; that order is also what splits work across `torchrun` ranks.
"""

from __future__ import annotations

import glob
import os
import unicodedata
from collections.abc import Iterator, Sequence
from pathlib import Path

from multigrain.runtime.errors import MultiGrainError

#: File name suffixes (lower case) that count as images, unless a reader narrows them.
IMAGE_EXTENSIONS: tuple[str, ...] = (
    ".jpg",
    ".jpeg",
    ".png",
    ".bmp",
    ".gif",
    ".tif",
    ".tiff",
    ".webp",
    ".ppm",
    ".pgm",
)

LIST_SUFFIXES = (".txt", ".lst", ".list")

#: Unicode categories that break a line of text: control characters (line break, tab ...),
#: line and paragraph separators, and the surrogates that stand for undecodable bytes.
_LINE_BREAKERS = frozenset({"Cc", "Zl", "Zp", "Cs"})

#: Why an image whose name is not UTF-8 text is skipped: an index (SQLite), search results and
#: the service's JSON answers hold names as text.
UNDECODABLE_NAME = (
    "the file name is not valid UTF-8 (it holds undecodable bytes), which outputs, indexes "
    "and search results cannot carry: rename it to UTF-8 (e.g. convmv -f latin1 -t utf8 "
    "--notest FILE)"
)


def is_utf8_name(path: str | os.PathLike[str]) -> bool:
    """Whether `path` is UTF-8 text: False when the file system gave undecodable bytes
    (Python holds them as surrogates, ``os.fsdecode(b"caf\\xe9.jpg")``)."""
    try:
        os.fspath(path).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def printable_path(path: str | os.PathLike[str]) -> str:
    """`path` for one line of text output: as it is, or quoted with escapes when it holds
    a line break, a tab or another control character (``'a\\nb.jpg'``), or undecodable
    bytes (``'caf\\xe9.jpg'``, the bytes the file system holds)."""
    text = os.fspath(path)
    if not any(unicodedata.category(char) in _LINE_BREAKERS for char in text):
        return text
    if not is_utf8_name(text):
        return repr(os.fsencode(text))[1:]  # b'caf\xe9.jpg' -> 'caf\xe9.jpg'
    return repr(text)


#: How many relative paths :func:`missing_relative_paths` checks, spread over the list.
CHECKED_RELATIVE_PATHS = 100


def missing_relative_paths(paths: Sequence[str]) -> list[str]:
    """Those of a sample of the relative `paths` (at most :data:`CHECKED_RELATIVE_PATHS`,
    spread over the list) that do not exist from the current folder: a quick test of
    whether stored relative paths were relative to here."""
    relative = [p for p in paths if not os.path.isabs(p)]
    step = max(1, len(relative) // CHECKED_RELATIVE_PATHS)
    sample = relative[::step][:CHECKED_RELATIVE_PATHS]
    return [p for p in sample if not os.path.exists(p)]


def is_image_name(name: str, *, suffixes: tuple[str, ...] = IMAGE_EXTENSIONS) -> bool:
    """Whether the file name (or path) `name` ends with one of `suffixes`, in any case."""
    return name.lower().endswith(suffixes)


def image_files(
    folder: str | os.PathLike[str],
    *,
    recursive: bool = True,
    suffixes: tuple[str, ...] = IMAGE_EXTENSIONS,
) -> list[Path]:
    """The image files in `folder` (and below it when `recursive`), sorted by path.

    Only files (or links to files) whose name ends with one of `suffixes` (lower case, matched
    in any case) are kept. Symlinked folders are not followed, so a link cycle cannot trap
    the walk. An empty list when there is none; MultiGrainError when a folder is unreadable.
    """
    return sorted(_walk(Path(folder), recursive=recursive, suffixes=suffixes))


def _walk(folder: Path, *, recursive: bool, suffixes: tuple[str, ...]) -> Iterator[Path]:
    try:
        with os.scandir(folder) as listing:
            entries = list(listing)
    except OSError as error:
        raise MultiGrainError(f"cannot list {folder}: {error.strerror}") from error
    for entry in entries:
        if entry.is_dir(follow_symlinks=False):
            if recursive:
                yield from _walk(Path(entry.path), recursive=True, suffixes=suffixes)
        elif entry.is_file() and is_image_name(entry.name, suffixes=suffixes):
            yield Path(entry.path)


def list_images(source: str | os.PathLike[str]) -> list[Path]:
    """All image paths under `source`, sorted (a list file keeps its own order).

    - a folder: every image file below it, recursively (:func:`image_files`);
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
        paths = image_files(path)
        if not paths:
            extensions = ", ".join(IMAGE_EXTENSIONS)
            raise MultiGrainError(f"no image files ({extensions}) found under {path}")
        return paths
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
