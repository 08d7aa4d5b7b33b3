"""Held-out copy sets: originals, their distorted copies, and the ground truth.

Layout of a set (``validation/`` or ``test/`` of the corpus)::

    originals/<name>.jpg     the references (tiles of photos of the held-out packages)
    queries/Q00000.jpg       one copy each, of one original under one family
    queries.csv              query,original,family

Every original gets ``queries_per_reference`` copies; families are dealt in shuffled
cycles so each family has nearly the same number of queries.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from multigrain.data.corpus.distortions import HeldoutFamily, distort
from multigrain.runtime.atomic import atomic_write_text
from multigrain.runtime.errors import MultiGrainError

QUERY_JPEG_QUALITY = 90


@dataclass(frozen=True)
class CopySet:
    """A held-out copy set read back: paths and, per query, its original and family."""

    root: Path
    originals: list[Path]
    queries: list[Path]
    truth: list[int]  # truth[q] = index into originals
    families: list[HeldoutFamily]


def write_copy_set(
    root: Path,
    originals: Sequence[Path],
    *,
    seed: int,
    queries_per_reference: int = 3,
    progress: bool = True,
) -> int:
    """Write ``queries/`` and ``queries.csv`` for the originals already under ``root``."""
    rng = np.random.default_rng([seed, 14])
    families = list(HeldoutFamily)
    schedule: list[HeldoutFamily] = []
    total = len(originals) * queries_per_reference
    while len(schedule) < total:
        schedule.extend(families[i] for i in rng.permutation(len(families)))
    rows = ["query,original,family"]
    (root / "queries").mkdir(parents=True, exist_ok=True)
    for q in tqdm(range(total), desc=f"{root.name} copies", disable=not progress):
        original = originals[q // queries_per_reference]
        with Image.open(original) as opened:
            image = opened.convert("RGB")
        copy = distort(image, schedule[q], np.random.default_rng([seed, 15, q]))
        buffer = io.BytesIO()
        copy.save(buffer, "JPEG", quality=QUERY_JPEG_QUALITY)
        (root / "queries" / f"Q{q:05d}.jpg").write_bytes(buffer.getvalue())
        rows.append(f"Q{q:05d}.jpg,{original.name},{schedule[q].value}")
    atomic_write_text(root / "queries.csv", "\n".join(rows) + "\n")
    return total


def read_copy_set(root: Path) -> CopySet:
    """Read a set written by :func:`write_copy_set`; MultiGrainError saying how to build one."""
    root = Path(root)
    table = root / "queries.csv"
    if not table.is_file():
        raise MultiGrainError(
            f"{root} holds no held-out copy set ({table} is missing): build the corpus with "
            "`multigrain corpus build data/corpus`"
        )
    originals = sorted((root / "originals").glob("*.jpg"))
    position = {path.name: i for i, path in enumerate(originals)}
    queries, truth, families = [], [], []
    with table.open(newline="") as handle:
        for row in csv.DictReader(handle):
            if row["original"] not in position:
                raise MultiGrainError(f"{table}: original {row['original']} is missing")
            queries.append(root / "queries" / row["query"])
            truth.append(position[row["original"]])
            families.append(HeldoutFamily(row["family"]))
    return CopySet(root, originals, queries, truth, families)
