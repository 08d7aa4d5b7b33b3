"""The image paths of an index, row for row, in flat arrays instead of Python objects.

A million paths as a ``list[str]`` and a path -> row ``dict`` cost ~50 bytes of object
header per string, 8 for its list slot and ~40 for its dict entry, on top of the
characters: ~100 bytes a path before its first letter, and a garbage collector that walks
them all. :class:`PathTable` keeps the UTF-8 bytes of every path in one array with the
end offset of each, and finds a path's row through a sorted array of 64-bit hashes: 24
bytes a path beside its characters, and no Python object until a path is read.

Paths are text: any ``str`` round-trips, lone surrogates included (``surrogatepass``, as
``os.fsdecode`` makes of undecodable bytes). The hashes are Python's ``hash`` of the path,
salted per process: they live in memory only and are rebuilt on load.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import overload

import numpy as np

ENCODING, ERRORS = "utf-8", "surrogatepass"


class PathTable(Sequence[str]):
    """N distinct paths: ``table[row]``, ``len``, iteration, ``in``, and :meth:`rows_of`."""

    def __init__(self, paths: Iterable[str] = ()) -> None:
        self._blob = np.zeros(0, dtype=np.uint8)  # every path's UTF-8 bytes, end to end
        self._ends = np.zeros(0, dtype=np.int64)  # row i is blob[ends[i-1]:ends[i]]
        self._hashes = np.zeros(0, dtype=np.int64)  # hash of every path, ascending
        self._rows = np.zeros(0, dtype=np.int64)  # the row of each of those hashes
        self.extend(paths)

    # ------------------------------------------------------------------ reading
    def __len__(self) -> int:
        return int(self._ends.shape[0])

    @overload
    def __getitem__(self, row: int) -> str: ...

    @overload
    def __getitem__(self, row: slice) -> list[str]: ...

    def __getitem__(self, row: int | slice) -> str | list[str]:
        if isinstance(row, slice):
            return [self._path(i) for i in range(*row.indices(len(self)))]
        if not -len(self) <= row < len(self):
            raise IndexError(f"row {row} of {len(self)} paths")
        return self._path(row % len(self))

    def _path(self, row: int) -> str:
        start = int(self._ends[row - 1]) if row > 0 else 0
        return self._blob[start : int(self._ends[row])].tobytes().decode(ENCODING, ERRORS)

    def __iter__(self) -> Iterator[str]:
        text = self._blob.tobytes()  # one copy of the bytes, not a slice per path
        start = 0
        for end in self._ends.tolist():
            yield text[start:end].decode(ENCODING, ERRORS)
            start = end

    def __contains__(self, path: object) -> bool:
        return isinstance(path, str) and self.row_of(path) >= 0

    def __eq__(self, other: object) -> bool:
        """Equal to any sequence of the same paths in the same order (a list included)."""
        if not isinstance(other, Sequence) or isinstance(other, str):
            return NotImplemented
        return len(self) == len(other) and all(a == b for a, b in zip(self, other, strict=True))

    __hash__ = None  # type: ignore[assignment]  # mutable, like the list it stands for

    def __repr__(self) -> str:
        return f"PathTable({len(self)} paths)"

    @property
    def nbytes(self) -> int:
        """Bytes held by the table's arrays."""
        return sum(a.nbytes for a in (self._blob, self._ends, self._hashes, self._rows))

    def row_of(self, path: str) -> int:
        """The row of `path`, -1 when absent."""
        return int(self.rows_of([path])[0])

    def rows_of(self, paths: Sequence[str]) -> np.ndarray:
        """(len(paths),) int64 rows, -1 for each path not in the table."""
        wanted = np.fromiter((hash(p) for p in paths), dtype=np.int64, count=len(paths))
        first = np.searchsorted(self._hashes, wanted, side="left")
        last = np.searchsorted(self._hashes, wanted, side="right")
        found = np.full(len(paths), -1, dtype=np.int64)
        for i in np.flatnonzero(last > first).tolist():
            for row in self._rows[first[i] : last[i]].tolist():  # > 1: a hash collision
                if self._path(row) == paths[i]:
                    found[i] = row
                    break
        return found

    # ------------------------------------------------------------------ changing
    def extend(self, paths: Iterable[str]) -> None:
        """Append paths as new rows (the caller keeps them distinct: :meth:`rows_of`)."""
        new = list(paths)
        if not new:
            return
        encoded = [path.encode(ENCODING, ERRORS) for path in new]
        lengths = np.fromiter(map(len, encoded), dtype=np.int64, count=len(encoded))
        offset = int(self._ends[-1]) if len(self) else 0
        rows = np.arange(len(self), len(self) + len(new), dtype=np.int64)
        self._blob = np.concatenate([self._blob, np.frombuffer(b"".join(encoded), np.uint8)])
        self._ends = np.concatenate([self._ends, offset + np.cumsum(lengths)])
        hashes = np.fromiter((hash(p) for p in new), dtype=np.int64, count=len(new))
        order = np.argsort(hashes, kind="stable")
        # merged into the sorted arrays: O(N) for a few new paths, not a full re-sort
        at = np.searchsorted(self._hashes, hashes[order], side="right")
        self._hashes = np.insert(self._hashes, at, hashes[order])
        self._rows = np.insert(self._rows, at, rows[order])

    def kept(self, keep: np.ndarray) -> PathTable:
        """A new table of the rows where the (N,) boolean `keep` is True, in order."""
        keep = np.asarray(keep, dtype=bool)
        if keep.shape != (len(self),):
            raise ValueError(f"keep has shape {keep.shape}, the table {len(self)} rows")
        starts = np.concatenate([[0], self._ends[:-1]]).astype(np.int64)
        lengths = self._ends - starts
        result = PathTable()
        result._blob = self._blob[np.repeat(keep, lengths)]
        result._ends = np.cumsum(lengths[keep]).astype(np.int64)
        new_row = np.cumsum(keep) - 1  # old row -> new row where kept
        stays = keep[self._rows]
        result._hashes = self._hashes[stays]  # still ascending: a subsequence
        result._rows = new_row[self._rows[stays]].astype(np.int64)
        return result
