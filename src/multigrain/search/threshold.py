"""A decision threshold calibrated on a labelled set, stored beside an index.

:func:`calibrate_threshold` takes the scores of every (query, top-k result) pair, labels
each pair with a DISC21-style ground truth, and keeps the lowest threshold whose accepted
pairs reach the target precision (:func:`multigrain.metrics.threshold_for_precision`), which
is the one with the highest recall. Recall counts every ground-truth pair of the
labelled queries, so a copy missing from the top k is a miss, as in µAP.

Ground truth: the DISC21 CSV (parsed by `multigrain.data.standard.disc21`, also written by
the built-in benchmark): header ``query_id,reference_id``, ids are file names without their
extension, an empty reference_id marks a query without a copy.

The result is saved as ``<index folder>/threshold.json``, next to ``CURRENT`` rather than
inside a version folder, so it survives index saves. It records how the scores were
normalised (background, beta, neighbours): a threshold only means something on the scale
it was calibrated on, and :meth:`CalibratedThreshold.scoring` refuses a mismatch.
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from multigrain.data.standard.disc21 import read_ground_truth_csv
from multigrain.metrics import threshold_for_precision
from multigrain.runtime.atomic import atomic_write_text
from multigrain.runtime.errors import MultiGrainError

THRESHOLD_FILE = "threshold.json"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class GroundTruth:
    """Labelled queries of a ground-truth CSV and their (query id, reference id) copies."""

    path: Path
    queries: frozenset[str]
    pairs: frozenset[tuple[str, str]]


def read_ground_truth(path: str | os.PathLike[str]) -> GroundTruth:
    """Read a DISC21-style CSV (header ``query_id,reference_id``; empty reference = no copy)."""
    rows = read_ground_truth_csv(Path(path))
    if not rows:
        raise MultiGrainError(f"{path} lists no query: add 'query_id,reference_id' rows")
    return GroundTruth(
        path=Path(path),
        queries=frozenset(query for _, query, _ in rows),
        pairs=frozenset((query, reference) for _, query, reference in rows if reference),
    )


@dataclass(frozen=True)
class CalibratedThreshold:
    """A threshold, how it was obtained, and how well it did on the labelled set."""

    threshold: float
    target_precision: float
    precision: float  # achieved on the labelled pairs
    recall: float  # accepted copies / ground-truth pairs of the labelled queries
    num_queries: int  # labelled queries used
    num_pairs: int  # scored (query, result) pairs
    num_positive_pairs: int  # of which ground-truth copies
    num_ground_truth: int  # ground-truth pairs of the labelled queries
    k: int
    background: str | None  # absolute path of the background `embed` output, or raw scores
    beta: float
    neighbours: int
    ground_truth: str
    created: str = ""
    format_version: int = FORMAT_VERSION

    def scoring(
        self, background: Path | None, beta: float | None, neighbours: int | None
    ) -> tuple[Path | None, float, int]:
        """The (background, beta, neighbours) to score with so that this threshold applies.

        Unset options (None) are taken from the calibration; a set --beta or --neighbours
        must agree with it; a given background replaces the recorded path (same images).
        """
        source = f"the threshold in {THRESHOLD_FILE}"
        if self.background is None:
            if background is not None:
                raise MultiGrainError(
                    f"{source} was calibrated on raw scores but --background normalises them: "
                    "pass --threshold, or recalibrate with --background"
                )
            return None, 1.0, 1
        for name, given, stored in (("--beta", beta, self.beta),
                                    ("--neighbours", neighbours, self.neighbours)):  # fmt: skip
            if given is not None and given != stored:
                raise MultiGrainError(
                    f"{source} was calibrated with {name} {stored}, not {given}: drop {name}, "
                    "pass --threshold, or recalibrate"
                )
        if background is None:
            background = Path(self.background)
            if not background.exists():
                raise MultiGrainError(
                    f"{source} was calibrated against the background {background}, which is "
                    "gone: pass --background (the same images) or --threshold"
                )
        return background, self.beta, self.neighbours


def _label_pairs(
    query_names: Sequence[str], result_paths: Sequence[Sequence[str]], truth: GroundTruth
) -> tuple[np.ndarray, np.ndarray, int]:
    """Label (query, result) pairs by file stem.

    Returns (labelled (Q,) bool: the query is in the CSV, positive (Q, k) bool: the result
    is a ground-truth copy of the query, number of ground-truth pairs of labelled queries).
    """
    stems = [Path(name).stem for name in query_names]
    repeated = [stem for stem, count in Counter(stems).items() if count > 1]
    if repeated:
        raise MultiGrainError(
            f"several queries are named {repeated[0]!r}: ground-truth ids are file names "
            "without extension, so query names must be unique"
        )
    labelled = np.array([stem in truth.queries for stem in stems], dtype=bool)
    if not labelled.any():
        example = next(iter(sorted(truth.queries)))
        raise MultiGrainError(
            f"none of the {len(stems)} queries is in {truth.path} (its ids look like "
            f"{example!r}): pass the queries this ground truth describes"
        )
    present = {stem for stem, keep in zip(stems, labelled, strict=True) if keep}
    positive = np.array(
        [[(stem, Path(path).stem) in truth.pairs for path in row]
         for stem, row in zip(stems, result_paths, strict=True)],
        dtype=bool,
    ).reshape(len(stems), -1)  # fmt: skip
    num_ground_truth = sum(1 for query, _ in truth.pairs if query in present)
    return labelled, positive, num_ground_truth


def check_references(index_paths: Sequence[str], truth: GroundTruth, index_folder: Path) -> None:
    """Every reference named by the ground truth must be in the index, exactly once."""
    counts = Counter(Path(path).stem for path in index_paths)
    references = sorted({reference for _, reference in truth.pairs})
    missing = [reference for reference in references if counts[reference] == 0]
    if missing:
        raise MultiGrainError(
            f"{len(missing)} of the {len(references)} references in {truth.path} are not in "
            f"the index {index_folder} (e.g. {missing[0]!r}): index the reference images the "
            "ground truth names"
        )
    repeated = [reference for reference in references if counts[reference] > 1]
    if repeated:
        raise MultiGrainError(
            f"the index {index_folder} holds several images named {repeated[0]!r}: "
            "ground-truth ids are file names without extension, so they must be unique"
        )


def calibrate_threshold(
    scores: np.ndarray,
    query_names: Sequence[str],
    result_paths: Sequence[Sequence[str]],
    truth: GroundTruth,
    *,
    target_precision: float,
    background: Path | None = None,
    beta: float = 1.0,
    neighbours: int = 1,
) -> CalibratedThreshold:
    """Pick the threshold on the (query, result) pairs of the labelled queries.

    Args:
        scores: (Q, k) pair scores (normalised with background/beta/neighbours if given);
            missing results have path "" and are ignored.
        query_names: Q query paths; result_paths: Q lists of k result paths.
        truth: the ground truth; background, beta, neighbours: recorded with the result.
    """
    scores = np.asarray(scores, dtype=np.float64)
    labelled, positive, num_ground_truth = _label_pairs(query_names, result_paths, truth)
    valid = np.array([[bool(path) for path in row] for row in result_paths], dtype=bool)
    keep = valid.reshape(scores.shape) & labelled[:, None]
    pair_scores, pair_positive = scores[keep], positive.reshape(scores.shape)[keep]
    if not pair_positive.any():
        raise MultiGrainError(
            f"no search result is a copy listed in {truth.path}: check that the index holds "
            "the references and that the queries are the ones the ground truth lists"
        )
    threshold = threshold_for_precision(pair_scores, pair_positive, target_precision)
    accepted = pair_scores >= threshold
    true_positives = int(np.count_nonzero(accepted & pair_positive))
    return CalibratedThreshold(
        threshold=threshold,
        target_precision=target_precision,
        precision=true_positives / int(np.count_nonzero(accepted)),
        recall=true_positives / max(num_ground_truth, 1),
        num_queries=int(labelled.sum()),
        num_pairs=int(pair_scores.size),
        num_positive_pairs=int(pair_positive.sum()),
        num_ground_truth=num_ground_truth,
        k=int(scores.shape[1]),
        background=None if background is None else str(Path(background).resolve()),
        beta=float(beta),
        neighbours=int(neighbours),
        ground_truth=str(truth.path.resolve()),
        created=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    )


def threshold_path(index_or_file: str | os.PathLike[str]) -> Path:
    """An index folder -> its threshold.json; a .json path is returned as is."""
    path = Path(index_or_file)
    return path if path.suffix == ".json" else path / THRESHOLD_FILE


def save_threshold(calibration: CalibratedThreshold, index_folder: str | os.PathLike[str]) -> Path:
    """Write `calibration` atomically as <index_folder>/threshold.json."""
    text = json.dumps(asdict(calibration), indent=2, sort_keys=True) + "\n"
    return atomic_write_text(threshold_path(index_folder), text)


def load_threshold(index_or_file: str | os.PathLike[str]) -> CalibratedThreshold | None:
    """Read a stored threshold (index folder or .json file); None if the folder has none."""
    path = threshold_path(index_or_file)
    if not path.exists():
        if Path(index_or_file).suffix == ".json":
            raise MultiGrainError(f"{path} not found: run `multigrain calibrate-threshold`")
        return None
    try:
        values = json.loads(path.read_text(encoding="utf-8"))
        if int(values.get("format_version", 0)) > FORMAT_VERSION:
            raise MultiGrainError(f"{path} was written by a newer multigrain: upgrade it")
        return CalibratedThreshold(**values)
    except (json.JSONDecodeError, TypeError, AttributeError, ValueError) as error:
        if isinstance(error, MultiGrainError):
            raise
        raise MultiGrainError(
            f"{path} is damaged or not a threshold file: rerun `multigrain calibrate-threshold`"
        ) from None


def load_raw_threshold(index_or_file: str | os.PathLike[str]) -> CalibratedThreshold:
    """A stored threshold that must exist and apply to raw cosine similarities (dedup)."""
    stored = load_threshold(index_or_file)
    path = threshold_path(index_or_file)
    if stored is None:
        raise MultiGrainError(
            f"{path} not found: run `multigrain calibrate-threshold --index {index_or_file} "
            "...` first, or pass --threshold"
        )
    if stored.background is not None:
        raise MultiGrainError(
            f"{path} holds a threshold on background-normalised scores, but raw similarities "
            "are compared here: recalibrate without --background, or pass --threshold"
        )
    return stored
