"""DISC21, the Image Similarity Challenge 2021 dataset (Douze et al., 2021), for µAP.

Expected layout::

    root/
      queries/             Q00000.jpg, Q00001.jpg, ...   ("dev_queries/" is accepted too)
      references/          R000000.jpg, R000001.jpg, ...
      training/            optional T000000.jpg, ... used as background for score
                           normalisation ("train/" is accepted too)
      *groundtruth*.csv    header "query_id,reference_id"; reference_id is empty for a query
                           without a copy (e.g. dev_ground_truth.csv / *ground_truth*.csv)

Image folders are searched recursively (some copies nest them, e.g. queries/images/). When
several ground-truth CSVs are present, pass `ground_truth=` to choose one.
"""

from __future__ import annotations

import csv
from pathlib import Path

from multigrain.data.standard._files import list_images, require_dir, require_file
from multigrain.data.standard.types import CopyDetectionBenchmark
from multigrain.runtime.errors import MultiGrainError

LAYOUT = (
    "root/queries/Q00000.jpg..., root/references/R000000.jpg..., optional root/training/, "
    "root/*groundtruth*.csv with header 'query_id,reference_id'"
)


def _images(folder: Path) -> list[Path]:
    images = list_images(folder, recursive=True)
    if not images:
        raise MultiGrainError(f"DISC21: no images in {folder}; expected {LAYOUT}")
    return images


def _find_ground_truth(root: Path) -> Path:
    found = sorted(set(root.glob("*groundtruth*.csv")) | set(root.glob("*ground_truth*.csv")))
    if not found:
        raise MultiGrainError(
            f"DISC21: no ground-truth CSV (*groundtruth*.csv) in {root}; expected {LAYOUT}"
        )
    if len(found) > 1:
        names = ", ".join(p.name for p in found)
        raise MultiGrainError(
            f"DISC21: several ground-truth CSVs in {root} ({names}); "
            "pass ground_truth= to choose one"
        )
    return found[0]


def read_disc21(
    root: Path | str, *, ground_truth: Path | str | None = None
) -> CopyDetectionBenchmark:
    """Read DISC21 (layout in the module docstring) into (query, reference) ground-truth pairs."""
    root = require_dir(Path(root), what="DISC21", layout=LAYOUT)
    query_dir = root / "queries"
    if not query_dir.is_dir() and (root / "dev_queries").is_dir():
        query_dir = root / "dev_queries"
    queries = _images(require_dir(query_dir, what="DISC21 queries", layout=LAYOUT))
    references = _images(require_dir(root / "references", what="DISC21 references", layout=LAYOUT))
    background: list[Path] = []
    for name in ("training", "train"):
        if (root / name).is_dir():
            background = _images(root / name)
            break
    csv_path = (
        require_file(Path(ground_truth), what="DISC21 ground truth", layout=LAYOUT)
        if ground_truth is not None
        else _find_ground_truth(root)
    )

    query_index = {p.stem: i for i, p in enumerate(queries)}
    reference_index = {p.stem: i for i, p in enumerate(references)}
    pairs: list[tuple[int, int]] = []
    with csv_path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        header = set(reader.fieldnames or ())
        if not {"query_id", "reference_id"} <= header:
            raise MultiGrainError(
                f"DISC21: {csv_path} must have the header 'query_id,reference_id'"
            )
        for line, row in enumerate(reader, start=2):
            query, reference = row["query_id"].strip(), (row["reference_id"] or "").strip()
            if query not in query_index:
                raise MultiGrainError(
                    f"DISC21: {csv_path}:{line}: query {query!r} is not an image in {query_dir}"
                )
            if not reference:
                continue  # a query without a copy among the references
            if reference not in reference_index:
                raise MultiGrainError(
                    f"DISC21: {csv_path}:{line}: reference {reference!r} is not an image in "
                    f"{root / 'references'}"
                )
            pairs.append((query_index[query], reference_index[reference]))
    return CopyDetectionBenchmark(
        name="disc21",
        queries=queries,
        references=references,
        ground_truth=pairs,
        background=background,
        distractors=[],
    )
