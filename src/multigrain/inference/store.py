"""Descriptors on disk: self-describing shards while a job runs, one merged output at the end.

Layout of an output folder OUT:

    OUT/shards/part-r000-00000.npz   descriptors (n, D) float32, paths (n,) str, metadata JSON
    OUT/failures-r000.jsonl          {"path": ..., "reason": ...}, a line per unreadable image
    OUT/descriptors.npy              (N, D) float32, row i <-> line i of paths.jsonl
    OUT/paths.jsonl                  N paths as JSON strings, in the order of the input listing
    OUT/metadata.json                model identity, s, p, whitening, dimension, count (and
                                     the int8 trunk's fingerprint for int8 descriptors)

The lists of paths are JSON lines so that any file name, a line break or a tab in it
included, comes back exactly (path_lists.py); the plain paths.txt and failures-r*.tsv of
earlier versions are still read.

Why npz for the self-describing format: numpy alone reads it (`allow_pickle=False`, no
extra dependency), it holds the paths as a plain unicode array next to the float32
descriptors and a JSON metadata string, and every shard stands on its own. The merged
`descriptors.npy` is written row block by row block, so merging a million rows never holds
them all in memory. Every file is written to a temporary name and renamed into place.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import BinaryIO

import numpy as np

from multigrain.inference import path_lists
from multigrain.inference.path_lists import failures_name as failures_name
from multigrain.inference.path_lists import read_failures as read_failures
from multigrain.runtime.atomic import atomic_write, atomic_write_text
from multigrain.runtime.errors import MultiGrainError

# EmbeddingMetadata lives on the search floor (an index holds it too); still importable here
from multigrain.search.descriptors import INT8_FIX, EmbeddingMetadata, only_int8_differs

SHARD_FOLDER = "shards"


@dataclass(frozen=True)
class Embeddings:
    descriptors: np.ndarray  # (N, D) float32
    paths: list[str]
    metadata: EmbeddingMetadata


def shard_name(rank: int, index: int) -> str:
    return f"part-r{rank:03d}-{index:05d}.npz"


def write_shard(
    path: Path, descriptors: np.ndarray, paths: list[str], metadata: EmbeddingMetadata
) -> None:
    """One self-describing shard: descriptors (n, D) float32, their paths, the metadata."""
    assert len(paths) == descriptors.shape[0]
    atomic_write(
        path,
        lambda handle: np.savez(
            handle,
            descriptors=descriptors.astype(np.float32, copy=False),
            paths=np.asarray(paths, dtype=np.str_),
            metadata=np.asarray(metadata.to_json()),
        ),
    )


def read_shard(path: Path) -> Embeddings:
    try:
        with np.load(path, allow_pickle=False) as data:
            return Embeddings(
                descriptors=data["descriptors"],
                paths=[str(p) for p in data["paths"]],
                metadata=EmbeddingMetadata.from_json(str(data["metadata"])),
            )
    except (OSError, KeyError, ValueError) as error:
        raise MultiGrainError(
            f"cannot read embedding shard {path}: {error}; delete it and rerun with --resume"
        ) from error


def list_shards(output_dir: Path) -> list[Path]:
    return sorted((output_dir / SHARD_FOLDER).glob("part-r*-*.npz"))


def next_shard_index(output_dir: Path, rank: int) -> int:
    prefix = f"part-r{rank:03d}-"
    indices = [
        int(p.stem[len(prefix) :]) for p in list_shards(output_dir) if p.name.startswith(prefix)
    ]
    return max(indices, default=-1) + 1


def iter_shards(output_dir: Path) -> Iterator[Embeddings]:
    for path in list_shards(output_dir):
        yield read_shard(path)


def embedded_paths(output_dir: Path) -> set[str]:
    """The paths of every descriptor in the shards of `output_dir` (all ranks)."""
    embedded: set[str] = set()
    for shard in iter_shards(output_dir):
        embedded.update(shard.paths)
    return embedded


def count_done(output_dir: Path, paths: Iterable[str]) -> int:
    """How many of `paths` the embed job in `output_dir` has done: embedded in its shards
    or listed as unreadable (what `--resume` skips)."""
    if not output_dir.is_dir():
        return 0
    done = embedded_paths(output_dir) | set(read_failures(output_dir))
    return sum(1 for path in paths if path in done)


def check_kept(output_dir: Path, embedded: set[str], inputs: set[str]) -> None:
    """Refuse to resume with inputs that leave out images already embedded in `output_dir`.

    The merged output holds the inputs only, so those rows would be dropped without a word.
    More inputs than before (images added to a folder) are fine: every earlier row is kept.
    """
    left_out = len(embedded - inputs)
    if left_out:
        raise MultiGrainError(
            f"{output_dir} holds descriptors of {len(embedded)} images, {left_out} of them not "
            f"among the {len(inputs)} inputs given: --resume continues the same job, so give "
            "the same inputs (adding new ones is fine), or choose another --output folder"
        )


def check_metadata(output_dir: Path, metadata: EmbeddingMetadata) -> None:
    """Refuse to mix descriptors computed with different settings in one output."""
    for path in list_shards(output_dir)[:1]:
        found = read_shard(path).metadata
        if only_int8_differs(found, metadata):
            raise MultiGrainError(
                f"{output_dir} holds int8 descriptors of the quantised model {found.int8}, "
                f"this run's is {metadata.int8}: {INT8_FIX}; or embed into another output folder"
            )
        if found.precision != metadata.precision and replace(
            found, precision=metadata.precision, int8=metadata.int8
        ).matches(metadata):
            raise MultiGrainError(
                f"{output_dir} holds {found.precision} descriptors, this run makes "
                f"{metadata.precision} ones (--precision auto is chosen per machine: int8 on a "
                f"CPU with VNNI and no AMX, `multigrain info` says which): pass --precision "
                f"{found.precision} to continue it, or embed into another output folder"
            )
        if not found.matches(metadata):
            raise MultiGrainError(
                f"{output_dir} holds descriptors made with other settings ({found}); "
                "use another output folder or the same model, s, p and whitening"
            )


def merge_shards(output_dir: Path, order: Iterable[str], metadata: EmbeddingMetadata) -> int:
    """Write descriptors.npy / paths.jsonl / metadata.json in the order of `order`.

    Paths listed in `order` but absent from the shards (unreadable images) are left out.
    Memory: one shard at a time plus a path -> row dictionary. Rows are written with
    positioned writes rather than through a memory map, whose written pages would count
    in the process's resident memory (N x D x 4 bytes) until the file is closed.
    """
    embedded: set[str] = set()
    quantised: set[str] = set()  # int8 fingerprints: one output holds one quantisation
    for shard in iter_shards(output_dir):
        embedded.update(shard.paths)
        quantised.update([shard.metadata.int8] if shard.metadata.int8 else [])
    if len(quantised) > 1:
        raise MultiGrainError(
            f"{output_dir} holds int8 descriptors of {len(quantised)} quantisations of the "
            f"model ({', '.join(sorted(quantised))}), which do not compare: the processes "
            "quantised it apart (int8 cache turned off?); embed again into a new folder with "
            "the int8 cache on (MULTIGRAIN_CACHE_DIR unset or a folder) or with --precision bf16"
        )
    if quantised and metadata.int8 is None:  # this process had nothing left to embed
        metadata = replace(metadata, int8=quantised.pop())
    rows = [path for path in order if path in embedded]
    row_of = {path: row for row, path in enumerate(rows)}
    row_bytes = metadata.dim * 4

    def write(handle: BinaryIO) -> None:
        header = {"descr": "<f4", "fortran_order": False, "shape": (len(rows), metadata.dim)}
        np.lib.format.write_array_header_1_0(handle, header)
        handle.flush()
        start = handle.tell()
        handle.truncate(start + len(rows) * row_bytes)
        for shard in iter_shards(output_dir):
            pairs = sorted(
                (row_of[path], i) for i, path in enumerate(shard.paths) if path in row_of
            )
            values = np.ascontiguousarray(shard.descriptors, dtype="<f4")
            for run in _consecutive_runs(pairs):
                block = values[[i for _, i in run]].tobytes()
                os.pwrite(handle.fileno(), block, start + run[0][0] * row_bytes)

    atomic_write(output_dir / "descriptors.npy", write)
    atomic_write_text(output_dir / path_lists.PATHS_FILE, path_lists.paths_text(rows))
    (output_dir / path_lists.LEGACY_PATHS_FILE).unlink(missing_ok=True)  # an older output's
    info = {**metadata.as_dict(), "count": len(rows)}
    atomic_write_text(output_dir / "metadata.json", json.dumps(info, indent=2))
    return len(rows)


def _consecutive_runs(pairs: list[tuple[int, int]]) -> Iterator[list[tuple[int, int]]]:
    """Sorted (row, i) pairs -> lists of pairs whose rows follow each other (one write each)."""
    run: list[tuple[int, int]] = []
    for pair in pairs:
        if run and pair[0] != run[-1][0] + 1:
            yield run
            run = []
        run.append(pair)
    if run:
        yield run


def load_embeddings(source: str | os.PathLike[str], *, mmap: bool = False) -> Embeddings:
    """Read an `embed` output folder (merged files) or a single shard (.npz)."""
    source = Path(source)
    if source.suffix == ".npz":
        return read_shard(source)
    paths_file = source / path_lists.PATHS_FILE
    if not paths_file.exists() and (source / path_lists.LEGACY_PATHS_FILE).exists():
        paths_file = source / path_lists.LEGACY_PATHS_FILE  # written by an earlier version
    needed = [source / "descriptors.npy", paths_file, source / "metadata.json"]
    missing = [str(p) for p in needed if not p.exists()]
    if missing:
        raise MultiGrainError(
            f"{source} is not a finished embedding output (missing {', '.join(missing)}): "
            "run `multigrain embed` (with --resume to finish an interrupted job)"
        )
    info = json.loads(needed[2].read_text())
    info.pop("count", None)
    descriptors = np.load(needed[0], mmap_mode="r" if mmap else None, allow_pickle=False)
    paths = path_lists.read_paths(paths_file)
    if len(paths) != descriptors.shape[0]:
        legacy = paths_file.name == path_lists.LEGACY_PATHS_FILE
        cause = " (a file name with a line break, which paths.txt cannot hold?)" if legacy else ""
        raise MultiGrainError(
            f"{source}: {descriptors.shape[0]} descriptors but {len(paths)} paths in "
            f"{paths_file.name}{cause}; rerun `multigrain embed --resume` with the same inputs "
            f"and --output: it rewrites the paths as {path_lists.PATHS_FILE}"
        )
    return Embeddings(descriptors, paths, EmbeddingMetadata(**info))
