"""Which copy of a duplicate group to keep: the largest picture, then the largest file.

Only the image header is read (PIL opens lazily), so ranking a group costs no decoding.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, UnidentifiedImageError


@dataclass(frozen=True)
class FileFacts:
    """What the keep rule compares: pixel size from the header and bytes on disk."""

    path: str
    width: int
    height: int
    num_bytes: int

    @property
    def pixels(self) -> int:
        return self.width * self.height


def file_facts(path: str | Path) -> FileFacts:
    """Width and height from the image header (0 × 0 when unreadable) and the file size."""
    try:
        num_bytes = Path(path).stat().st_size
    except OSError:
        return FileFacts(str(path), 0, 0, 0)
    try:
        with Image.open(path) as image:
            width, height = image.size
    except (OSError, UnidentifiedImageError, ValueError):
        width = height = 0
    return FileFacts(str(path), width, height, num_bytes)


def rank_for_keeping(facts: Sequence[FileFacts]) -> list[FileFacts]:
    """`facts` best first: more pixels, then more bytes, then the path in sorted order."""
    return sorted(facts, key=lambda fact: (-fact.pixels, -fact.num_bytes, fact.path))
