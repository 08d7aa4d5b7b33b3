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

from multigrain.data.standard._files import benchmark_images, require_dir, require_file
from multigrain.data.standard.types import CopyDetectionBenchmark
from multigrain.runtime.errors import MultiGrainError

LAYOUT = (
    "root/queries/Q00000.jpg..., root/references/R000000.jpg..., optional root/training/, "
    "root/*groundtruth*.csv with header 'query_id,reference_id'"
)


def _images(folder: Path) -> list[Path]:
    images = benchmark_images(folder, recursive=True)
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


def read_ground_truth_csv(path: Path | str) -> list[tuple[int, str, str]]:
    """The rows of a DISC21 ground-truth CSV: (line number, query id, reference id).

    Header ``query_id,reference_id``; ids are file names without their extension; an empty
    reference id ("") marks a query without a copy. The one parser of this format (the
    threshold calibration of an index reads it too).
    """
    path = Path(path)
    if not path.is_file():
        raise MultiGrainError(
            f"ground truth {path} not found: pass a CSV with the header 'query_id,reference_id'"
        )
    rows: list[tuple[int, str, str]] = []
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            if not {"query_id", "reference_id"} <= set(reader.fieldnames or ()):
                raise MultiGrainError(
                    f"{path} must start with the header 'query_id,reference_id' "
                    "(DISC21 layout), one line per query or (query, copy) pair"
                )
            for line, row in enumerate(reader, start=2):
                query = (row["query_id"] or "").strip()
                if not query:
                    raise MultiGrainError(f"{path}:{line}: empty query_id: give every row one")
                rows.append((line, query, (row["reference_id"] or "").strip()))
    except UnicodeDecodeError:
        raise MultiGrainError(f"{path} is not a UTF-8 text CSV: export it as CSV") from None
    return rows


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
    for line, query, reference in read_ground_truth_csv(csv_path):
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
