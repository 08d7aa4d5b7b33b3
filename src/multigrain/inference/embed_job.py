"""The bookkeeping of an embed job: its report, the shards and failure list it writes as
it goes (each shard self-describing, each failure a line), and its progress bar."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import numpy as np
from tqdm.auto import tqdm

from multigrain.data.listing import printable_path
from multigrain.inference import path_lists, store
from multigrain.inference.store import EmbeddingMetadata

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class EmbedFailure:
    path: str
    reason: str


@dataclass
class EmbedReport:
    output_dir: Path
    num_inputs: int  # images given to this process
    num_embedded: int  # embedded by this run (not counting resumed work)
    num_already_done: int
    failures: list[EmbedFailure] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def images_per_second(self) -> float:
        return self.num_embedded / self.seconds if self.seconds > 0 else 0.0


class ShardWriter:
    """Buffers (path, descriptor) rows; writes a shard each time `shard_size` are held."""

    def __init__(self, output_dir: Path, metadata: EmbeddingMetadata, rank: int, size: int):
        self.output_dir, self.metadata, self.rank, self.size = output_dir, metadata, rank, size
        self.index = store.next_shard_index(output_dir, rank)
        self.paths: list[str] = []
        self.rows: list[np.ndarray] = []

    def add(self, paths: list[str], rows: np.ndarray) -> None:
        self.paths.extend(paths)
        self.rows.append(rows)
        if len(self.paths) >= self.size:
            self.flush()

    def flush(self) -> None:
        if not self.paths:
            return
        target = self.output_dir / store.SHARD_FOLDER / store.shard_name(self.rank, self.index)
        store.write_shard(target, np.concatenate(self.rows), self.paths, self.metadata)
        self.index += 1
        self.paths, self.rows = [], []


@dataclass
class FailureLog:
    """on_failure of the decoder: records image i of `todo` in the report and the file."""

    todo: list[str]
    report: EmbedReport
    file: IO[str]
    bar: tqdm

    def __call__(self, index: int, reason: str) -> None:
        self.record(self.todo[index], reason)

    def record(self, path: str, reason: str) -> None:
        self.report.failures.append(EmbedFailure(path, reason))
        self.file.write(path_lists.failure_line(path, reason))
        self.file.flush()
        logger.warning("skipped %s: %s", printable_path(path), reason)
        self.bar.update(1)


def progress_bar(total: int, enabled: bool) -> tqdm:
    return tqdm(
        total=total, desc="embed", unit="img", dynamic_ncols=True, smoothing=0.1,
        disable=not enabled,
    )  # fmt: skip
