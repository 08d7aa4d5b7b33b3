"""Exact duplicates: files whose bytes are identical, found before any pixel is decoded.

Files are first bucketed by size (one ``stat`` each); only files that share a size are
hashed (SHA-256, read in 1 MiB blocks), so a folder of distinct photos costs no reads.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

BLOCK_BYTES = 1 << 20


def content_digest(path: str | Path) -> str:
    """The SHA-256 of the file's bytes, as 64 hex digits."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(BLOCK_BYTES):
            digest.update(block)
    return digest.hexdigest()


def exact_groups(paths: Sequence[str | Path]) -> list[list[int]]:
    """Groups (size >= 2) of indices into `paths` whose files have identical bytes.

    Each group lists its indices in increasing order; groups are ordered by their first
    index. Unreadable files are left out (the embedding step reports them).
    """
    by_size: dict[int, list[int]] = defaultdict(list)
    for index, path in enumerate(paths):
        try:
            by_size[Path(path).stat().st_size].append(index)
        except OSError:
            continue
    groups: list[list[int]] = []
    for same_size in by_size.values():
        if len(same_size) < 2:
            continue
        by_digest: dict[str, list[int]] = defaultdict(list)
        for index in same_size:
            try:
                by_digest[content_digest(paths[index])].append(index)
            except OSError:
                continue
        groups.extend(group for group in by_digest.values() if len(group) >= 2)
    return sorted((sorted(group) for group in groups), key=lambda group: group[0])
