"""INRIA Copydays (Douze et al., 2009), "strong" subset, against originals plus distractors.

Expected layout (copydays_original.tar.gz unpacked into `original/`, or directly into
`root`; copydays_strong.tar.gz unpacked into `strong/`)::

    root/
      original/            157 images: 200000.jpg, 200100.jpg, ...
      strong/              229 images: 200001.jpg, 200002.jpg, ...
      strong.csv           optional: header "query,original", one strong file name and
                           the file name of its original per line

Copydays numbers images like Holidays: an image and its copies share `number // 100`, so
without `strong.csv` a strong image is matched to the original with the same number // 100
(a suffix after "_", e.g. 200000_01.jpg, is ignored). For the mAP protocol the database is the
originals followed by the distractor images (`distractors`, searched recursively; the paper
uses 10k), the queries are the strong images and each query's single positive is its original.
"""

from __future__ import annotations

import csv
import re
from pathlib import Path

import numpy as np

from multigrain.data.standard._files import benchmark_images, require_dir
from multigrain.data.standard.types import RetrievalBenchmark
from multigrain.runtime.errors import MultiGrainError

LAYOUT = (
    "root/original/NNNNNN.jpg (or root/NNNNNN.jpg), root/strong/NNNNNN.jpg, "
    "optional root/strong.csv with header 'query,original'"
)
_NUMBER = re.compile(r"^(\d+)(?:_\w+)?$")


def _group(path: Path) -> int:
    match = _NUMBER.match(path.stem)
    if match is None:
        raise MultiGrainError(
            f"Copydays: cannot read an image number from {path}; expected names like "
            f"200000.jpg or 200000_01.jpg, or a root/strong.csv mapping ({LAYOUT})"
        )
    return int(match.group(1)) // 100


def _read_mapping(path: Path) -> dict[str, str]:
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        if reader.fieldnames is None or not {"query", "original"} <= set(reader.fieldnames):
            raise MultiGrainError(f"Copydays: {path} must have the header 'query,original'")
        return {row["query"].strip(): row["original"].strip() for row in reader}


def read_copydays(root: Path | str, *, distractors: Path | str | None = None) -> RetrievalBenchmark:
    """Read the Copydays strong subset (layout in the module docstring); protocol "copydays-strong".

    database: originals then distractors; queries: strong images; positives[q]: [its original].
    """
    root = require_dir(Path(root), what="Copydays", layout=LAYOUT)
    originals_dir = root / "original" if (root / "original").is_dir() else root
    originals = benchmark_images(originals_dir)
    if not originals:
        raise MultiGrainError(f"Copydays: no original images in {originals_dir}; expected {LAYOUT}")
    strong_dir = require_dir(root / "strong", what="Copydays strong subset", layout=LAYOUT)
    queries = benchmark_images(strong_dir)
    if not queries:
        raise MultiGrainError(f"Copydays: no images in {strong_dir}; expected {LAYOUT}")

    mapping_file = root / "strong.csv"
    if mapping_file.is_file():
        by_name = {p.name: i for i, p in enumerate(originals)}
        mapping = _read_mapping(mapping_file)
        positive_of: list[int] = []
        for query in queries:
            original = mapping.get(query.name)
            if original is None or original not in by_name:
                raise MultiGrainError(
                    f"Copydays: {mapping_file} maps {query.name} to {original!r}, "
                    f"which is not an image in {originals_dir}"
                )
            positive_of.append(by_name[original])
    else:
        by_group: dict[int, int] = {}
        for index, path in enumerate(originals):
            if _group(path) in by_group:
                raise MultiGrainError(
                    f"Copydays: two originals share the number {_group(path)}xx in "
                    f"{originals_dir} ({path.name}); provide root/strong.csv"
                )
            by_group[_group(path)] = index
        positive_of = []
        for query in queries:
            if _group(query) not in by_group:
                raise MultiGrainError(
                    f"Copydays: strong image {query.name} has no original numbered "
                    f"{_group(query)}00 in {originals_dir}"
                )
            positive_of.append(by_group[_group(query)])

    distractor_images: list[Path] = []
    if distractors is not None:
        distractor_dir = require_dir(
            Path(distractors), what="Copydays distractors", layout="a folder of images"
        )
        distractor_images = benchmark_images(distractor_dir, recursive=True)
    return RetrievalBenchmark(
        name="copydays",
        database=originals + distractor_images,
        queries=queries,
        query_boxes=[None] * len(queries),
        positives=[np.asarray([i], dtype=np.int64) for i in positive_of],
        junk=[np.zeros(0, dtype=np.int64) for _ in queries],
        query_in_database=[None] * len(queries),
        rotations=None,
        protocol="copydays-strong",
    )
