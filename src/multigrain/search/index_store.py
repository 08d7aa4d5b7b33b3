"""An :class:`~multigrain.search.index.ImageIndex` on disk, saved atomically as a whole.

Layout of an index folder ROOT:

    ROOT/CURRENT                  one line: the name of the live version folder
    ROOT/v-<time>-<random>/
        index.faiss               faiss.write_index of the base index, labels = rows
        meta.sqlite               tables info(key, value) and images(id, path, added_at)
        descriptors.npy           (N, d) float32 prepared descriptors, row i <-> i-th id
                                  in `SELECT id FROM images ORDER BY id`: the exact copy
                                  that re-ranks (refine.py); absent for an index without
                                  it (own Refine stage), whose index.faiss is the whole
                                  IndexRefine, shortlist and refine codes
        whitening.pt              the Whitening, in its own file format (Whitening.save);
                                  only when whitened

Format 1 (still read): index.faiss labelled vectors by id -- IVF natively, other indexes
through an IndexIDMap2 -- and held the whitening as an IndexPreTransform, saved again as
whitening.npz (mean, projection). Loading turns it into format 2; the next save writes it.

Atomicity: three files cannot be replaced together by one rename, so every save writes a
complete new version folder (each file through a temporary name, fsynced), then swaps the
one-line CURRENT pointer with os.replace -- the single atomic step. A crash before the
swap leaves the previous version live; version folders no longer named by CURRENT are
deleted after a successful swap (and by the next save if a crash left one behind).

Why descriptors.npy and not a BLOB column: the reranking copy is the bulk of the data
(2 GB for 1M x 512), numpy reads it in one call (or memory-maps it), while one BLOB per
row would cost a Python round-trip per image; the SQLite file stays small and queryable.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import time
import uuid
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import torch

from multigrain.runtime.atomic import atomic_path, atomic_write, atomic_write_text
from multigrain.runtime.errors import MultiGrainError
from multigrain.search import refine
from multigrain.search.descriptors import index_metadata_from_json
from multigrain.search.index import ImageIndex
from multigrain.search.path_table import PathTable
from multigrain.search.whitening import Whitening

FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
POINTER = "CURRENT"
INDEX_FILE = "index.faiss"
META_FILE = "meta.sqlite"
DESCRIPTORS_FILE = "descriptors.npy"
WHITENING_FILE = "whitening.pt"
LEGACY_WHITENING_FILE = "whitening.npz"  # format 1
REBUILD = "rebuild it with `multigrain index build`"
READ_BLOCK = 65_536  # rows of the images table read at a time


def save_index(index: ImageIndex, folder: str | os.PathLike[str]) -> Path:
    """Write `index` as a new version of `folder` and make it the live one; returns it."""
    root = Path(folder)
    root.mkdir(parents=True, exist_ok=True)
    name = f"v-{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:8]}"
    version = root / name
    version.mkdir()
    with atomic_path(version / INDEX_FILE) as tmp:
        faiss.write_index(refine.saved_part(index.faiss_index), str(tmp))
    if refine.has_separate_copy(index.faiss_index):
        exact = refine.stored_vectors(index.faiss_index)
        atomic_write(version / DESCRIPTORS_FILE, lambda h: np.save(h, exact))
    if index.whitening is not None:
        index.whitening.save(version / WHITENING_FILE)
    info = {
        "format_version": FORMAT_VERSION,
        "factory": index.factory,
        "dim": index.dim,
        "next_id": index.next_id,
        "index_bytes": (version / INDEX_FILE).stat().st_size,
        "metadata": "{}" if index.metadata is None else index.metadata.to_json(),
    }
    with atomic_path(version / META_FILE) as tmp:
        _write_meta(tmp, info, index)
    _fsync_folder(version)
    atomic_write_text(root / POINTER, name + "\n")
    _fsync_folder(root)
    for old in root.glob("v-*"):
        if old.name != name and old.is_dir():
            shutil.rmtree(old, ignore_errors=True)
    return version


def current_version(folder: str | os.PathLike[str]) -> Path:
    """The live version folder of an index folder."""
    root = Path(folder)
    pointer = root / POINTER
    if not pointer.is_file():
        raise MultiGrainError(f"{root} is not a multigrain index folder (no {POINTER}): {REBUILD}")
    version = root / pointer.read_text(encoding="utf-8").strip()
    if not version.is_dir() or version.parent != root:
        raise MultiGrainError(f"{pointer} names a missing version folder: {REBUILD}")
    return version


def load_index(folder: str | os.PathLike[str]) -> ImageIndex:
    """Read the live version of an index folder, checking that its parts agree."""
    version = current_version(folder)
    info, ids, paths, added_at = _read_meta(version / META_FILE)
    index_file = version / INDEX_FILE
    damaged = f"{index_file} is truncated or not a multigrain index: {REBUILD}"
    if not index_file.is_file() or index_file.stat().st_size != int(info["index_bytes"]):
        raise MultiGrainError(damaged)
    try:
        faiss_index = faiss.read_index(str(index_file))
    except RuntimeError as error:
        raise MultiGrainError(damaged) from error
    if int(faiss_index.ntotal) != len(ids):
        raise MultiGrainError(
            f"{index_file} holds {faiss_index.ntotal} vectors but {version / META_FILE} lists "
            f"{len(ids)} images: {REBUILD}"
        )
    whitening = _read_whitening(version)
    if not refine.keeps_no_copy(faiss_index):  # own-refine and RaBitQ indexes keep no copy
        if int(info["format_version"]) == 1:
            faiss_index = _base_of_format_1(faiss_index, info, ids, whitened=whitening is not None)
        if not refine.is_flat(faiss_index):  # a Flat index is its own copy (older versions
            descriptors = _read_descriptors(version, len(ids))  # also wrote it apart)
            if int(faiss_index.d) != descriptors.shape[1]:
                raise MultiGrainError(f"{index_file} does not match {DESCRIPTORS_FILE}: {REBUILD}")
            faiss_index = refine.refined(faiss_index, descriptors)
    return ImageIndex(
        faiss_index=faiss_index,
        factory=str(info["factory"]),
        dim=int(info["dim"]),
        ids=ids,
        paths=paths,
        added_at=added_at,
        metadata=index_metadata_from_json(str(info["metadata"]), source=str(version / META_FILE)),
        whitening=whitening,
        next_id=int(info["next_id"]),
    )


def _read_descriptors(version: Path, count: int) -> np.ndarray:
    """The (count, d) float32 exact copy, memory-mapped: faiss copies it into the index once."""
    try:
        descriptors = np.load(version / DESCRIPTORS_FILE, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as error:
        raise MultiGrainError(f"cannot read {version / DESCRIPTORS_FILE}: {REBUILD}") from error
    if descriptors.ndim != 2 or descriptors.shape[0] != count or descriptors.dtype != np.float32:
        raise MultiGrainError(f"{version / DESCRIPTORS_FILE} does not match the images: {REBUILD}")
    return descriptors


def _read_whitening(version: Path) -> Whitening | None:
    if (version / WHITENING_FILE).exists():
        return Whitening.load(version / WHITENING_FILE)
    if not (version / LEGACY_WHITENING_FILE).exists():
        return None
    with np.load(version / LEGACY_WHITENING_FILE, allow_pickle=False) as data:
        mean, projection = torch.from_numpy(data["mean"]), torch.from_numpy(data["projection"])
    return Whitening(
        mean=mean.double(),
        projection=projection.double(),
        eigenvalues=torch.full((projection.shape[1],), float("nan"), dtype=torch.float64),
        fitted_on={"source": f"{LEGACY_WHITENING_FILE} of a format-1 index (no eigenvalues)"},
    )


def _base_of_format_1(index: Any, info: dict[str, str], ids: np.ndarray, *, whitened: bool) -> Any:
    """A format-1 faiss index -> the format-2 base index (labels = rows).

    The inner index of an IndexIDMap2 numbers its vectors by row already (it compacts them
    in order on removal); native IVF labels are ids, looked up in the sorted `ids`.
    """
    if info.get("id_mapping") == "idmap2":
        if not np.array_equal(faiss.vector_to_array(index.id_map), ids):
            raise MultiGrainError(f"the ids of the index disagree with its {META_FILE}: {REBUILD}")
        index = refine.unwrap(index)
    if whitened:  # the IndexPreTransform (whitening, L2 normalisation) around the factory's
        index = refine.unwrap(index)
    if info.get("id_mapping") == "native":

        def rows_of(labels: np.ndarray) -> np.ndarray:
            rows = np.searchsorted(ids, labels)
            if np.any(rows >= len(ids)) or not np.array_equal(ids[rows], labels):
                raise MultiGrainError(f"the IVF lists name ids missing from {META_FILE}: {REBUILD}")
            return rows

        refine.map_ivf_labels(faiss.extract_index_ivf(index), rows_of)
    return index


def _write_meta(path: Path, info: dict[str, object], index: ImageIndex) -> None:
    path.unlink(missing_ok=True)  # atomic_path created an empty file; sqlite wants its own
    connection = sqlite3.connect(path)
    try:
        # A fresh temporary file, fsynced below and made live only by the CURRENT swap: a
        # rollback journal and sqlite's own fsyncs would protect nothing (and cost ~3/4 of
        # a small index's save time).
        connection.execute("PRAGMA journal_mode = OFF")
        connection.execute("PRAGMA synchronous = OFF")
        with connection:
            connection.execute("CREATE TABLE info (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
            connection.execute(
                "CREATE TABLE images (id INTEGER PRIMARY KEY, path TEXT UNIQUE NOT NULL, "
                "added_at REAL NOT NULL)"
            )
            connection.executemany(
                "INSERT INTO info VALUES (?, ?)", [(k, str(v)) for k, v in info.items()]
            )
            connection.executemany(
                "INSERT INTO images VALUES (?, ?, ?)",
                zip(index.ids.tolist(), index.paths, index.added_at.tolist(), strict=True),
            )
    finally:
        connection.close()
    with open(path, "rb+") as handle:
        os.fsync(handle.fileno())


def _read_meta(
    path: Path,
) -> tuple[dict[str, str], np.ndarray, PathTable, np.ndarray]:
    if not path.is_file():
        raise MultiGrainError(f"{path} is missing: {REBUILD}")
    try:
        connection = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
        try:
            info = dict(connection.execute("SELECT key, value FROM info").fetchall())
            ids, paths, added_at = _read_images(connection)
        finally:
            connection.close()
    except sqlite3.DatabaseError as error:
        raise MultiGrainError(f"{path} is damaged or not a multigrain index: {REBUILD}") from error
    version = int(info.get("format_version", 0))
    if version not in READABLE_VERSIONS:
        raise MultiGrainError(
            f"{path} has index format version {version}, this multigrain reads versions "
            f"{READABLE_VERSIONS}: {REBUILD} (or use the multigrain version that wrote it)"
        )
    return info, ids, paths, added_at


def _read_images(connection: sqlite3.Connection) -> tuple[np.ndarray, PathTable, np.ndarray]:
    """The images table in id order, a block of rows at a time: never a million row tuples
    at once (~200 MB more at the peak of loading a million-image index)."""
    cursor = connection.execute("SELECT id, path, added_at FROM images ORDER BY id")
    ids, times, paths = [np.zeros(0, np.int64)], [np.zeros(0, np.float64)], PathTable()
    while rows := cursor.fetchmany(READ_BLOCK):
        ids.append(np.array([row[0] for row in rows], dtype=np.int64))
        times.append(np.array([row[2] for row in rows], dtype=np.float64))
        paths.extend(str(row[1]) for row in rows)
    return np.concatenate(ids), paths, np.concatenate(times)


def _fsync_folder(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
