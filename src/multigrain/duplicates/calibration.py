"""A threshold without labels: calibrated on the user's own collection.
Over 300 lines because both operating points, the score's and point matching's, are
measured on the same synthetic queries in one pass over the sample.

A person with a folder of photos has no labelled copies, so we make some: a seeded sample
of the folder's images goes through the training families of edits
(:func:`multigrain.duplicates.synthetic.synthetic_copies`). Each edited copy, and each
sampled original, is searched against the whole collection. A copy's link to its source
is right; every other link a query makes is wrong, except links to an image closer to the
source than every edited copy of it (a resized or re-saved file of it in the folder: a
duplicate as far as the model can tell), or to an image that point matching shows to be a
copy of the source (:mod:`.verify`). Byte-identical files are one image here.

What a user needs is the share of true links among the links *the folder* gets, and that
depends on how many duplicates the folder holds, which the synthetic sample does not know
(every copy has a source; most photos of a folder have none). So the threshold is chosen
at the folder's own rate:

    links(t)        pairs of the folder scoring >= t        (counted exactly)
    false(t)        N / 2 * (wrong links of the calibration queries >= t) / queries
    precision(t)    1 - false(t) / links(t)

The threshold is found walking t down the folder's own scores: a step is taken when the
links it adds are, by this estimate, at least the target share true (not only the links
above it on average: a folder of ten true pairs at 0.9 must not buy an eleventh, likely
false one at 0.3 with their credit); when no step qualifies (too many look-alikes for this
model), t is where the estimate is best, reported as not reaching the target.
The report also gives the estimate's 95 % lower bound (the wrong-link count replaced by its
Poisson upper bound): with few duplicates in a folder it is far below the estimate, and
choosing by it would leave most true duplicates apart. The recall reported is that of the
synthetic copies at t.

Geometric verification (:mod:`.verify`) is calibrated on the same queries: each copy is
also made at the verification size (the same edits, drawn with the same seed) and matched
point for point with its :data:`~.verify.NEIGHBOURS_VERIFIED` nearest images: the count of
its source is a right one, the counts of the others wrong ones. The count that verifies a
pair is :data:`~.verify.MIN_INLIERS`, or above every wrong count if one reached it
(:func:`~.verify.verification_threshold`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import faiss
import numpy as np
from PIL import Image
from scipy.stats import chi2

from multigrain.duplicates.synthetic import synthetic_copies
from multigrain.duplicates.verify import (
    NEIGHBOURS_VERIFIED,
    VERIFY_SIDE,
    FeatureCache,
    inlier_count,
    local_features,
    verification_threshold,
)
from multigrain.runtime.errors import MultiGrainError
from multigrain.search.neighbourhood import Neighbourhoods, query_neighbourhoods

#: Neighbours kept per calibration query: every threshold the search could choose lies far
#: above the 64th-best score of an unrelated image.
NEIGHBOURS = 64

#: Fewest synthetic copies in all, so that a small folder still has enough queries.
MIN_COPIES = 48

EmbedImages = Callable[[Sequence[Image.Image]], np.ndarray]


@dataclass(frozen=True)
class SelfCalibration:
    """The operating point measured on synthetic copies of the collection itself."""

    threshold: float
    target_precision: float
    reached_target: bool  # estimated_precision >= target_precision
    estimated_precision: float  # of the folder's links at the threshold (module doc)
    precision_lower_bound: float  # the same with the 95 % upper bound of false links
    expected_false_links: float  # unrelated pairs the folder's links are expected to hold
    folder_links: int  # pairs of distinct images scoring >= threshold
    estimated_recall: float  # synthetic copies whose source scores >= threshold
    num_sources: int
    copies_per_source: int
    num_queries: int  # copies and originals searched
    collection_size: int
    seed: int


@dataclass(frozen=True)
class CalibrationSample:
    """What the synthetic queries measured: the scores of their right and wrong links."""

    right: np.ndarray  # (copies,) each copy's score with its source
    wrong: np.ndarray  # scores of every wrong link the queries made (top NEIGHBOURS each)
    num_queries: int
    num_sources: int
    copies_per_source: int
    # geometric verification (when asked for): each copy's count with its source, -1 where
    # the source was not among the copy's NEIGHBOURS_VERIFIED nearest (never verified) ...
    right_inliers: np.ndarray | None = None
    # ... and its counts with the other images among them
    wrong_inliers: np.ndarray | None = None


@dataclass(frozen=True)
class VerificationCalibration:
    """Geometric verification's operating point, measured on the synthetic copies."""

    min_inliers: int  # the count that verifies a pair
    unrelated_pairs: int  # copies matched with a nearest image that is not their source
    highest_unrelated: int  # the highest count among those
    recall: float  # synthetic copies verified with their source
    combined_recall: float  # synthetic copies linked by the score or verified
    folder_pairs: int  # pairs of the folder matched (each image with its nearest)
    folder_links: int  # of those, verified
    closest_below: int  # the highest count of the folder's matched pairs that did not verify
    expected_false_links: float  # 95 % upper bound, from the unrelated pairs' rate


def sample_links(
    descriptors: np.ndarray,
    load_image: Callable[[int], Image.Image | None],
    embed_images: EmbedImages,
    *,
    longest_side: int,
    neighbourhoods: Neighbourhoods,
    num_sources: int = 100,
    copies_per_source: int = 8,
    seed: int = 0,
    features: FeatureCache | None = None,
    known_copies: np.ndarray | None = None,
) -> CalibrationSample:
    """Search synthetic copies of a seeded sample of the collection, and the sampled
    originals, against it; score every link with the collection's `neighbourhoods`
    (k = 0: plain cosines).

    Args:
        descriptors: (N, d) L2-normalised descriptors of the collection's distinct images.
        load_image: row -> the decoded image of that row (None when it cannot be read); at
            least VERIFY_SIDE on its longest side (where the file has it) with `features`.
        embed_images: images -> (M, d) descriptors with the collection's model and settings.
        longest_side: the resolution s the descriptors were made at.
        features: the collection's local features: verify each copy with its nearest too.
        known_copies: (C, 2) pairs of the collection known to be copies of each other (point
            matching verified them): a link from a copy of one to the other is not wrong.
    """
    collection = np.ascontiguousarray(descriptors, dtype=np.float32)
    size = len(collection)
    hood = neighbourhoods
    rng = np.random.default_rng(seed)
    sources = np.sort(rng.choice(size, size=min(num_sources, size), replace=False))
    copies_per_source = max(copies_per_source, -(-MIN_COPIES // len(sources)))
    k = min(NEIGHBOURS, size)
    right, wrong, queries, used = [], [], 0, 0
    right_inliers: list[int] = []
    wrong_inliers: list[int] = []
    sampled = set(sources.tolist())
    copies_of: dict[int, set[int]] = {}
    for i, j in np.asarray(known_copies if known_copies is not None else []).reshape(-1, 2):
        copies_of.setdefault(int(i), set()).add(int(j))
        copies_of.setdefault(int(j), set()).add(int(i))
    for number, row in enumerate(sources.tolist()):
        image = load_image(row)
        if image is None:
            continue
        copies = synthetic_copies(
            image, count=copies_per_source, longest_side=longest_side, seed=seed + number
        )
        query = np.ascontiguousarray(embed_images(copies), dtype=np.float32)
        query_hood = query_neighbourhoods(query, collection, neighbours=hood.k)
        at = np.arange(len(query))
        copy_scores = _copy_scores(
            query_hood, hood, at, np.full(len(query), row), query @ collection[row]
        )
        right.append(copy_scores)
        cosines = collection @ collection[row]
        similar = hood.normalised(np.full(size, row), np.arange(size), cosines)
        # closer to the original than every edited copy: a duplicate of it (a resized or
        # re-saved file of it in the folder), so a link to it is neither right nor wrong
        related = set(np.flatnonzero(similar >= copy_scores.max()).tolist()) | {row}
        related |= copies_of.get(row, set())
        scores, neighbours = faiss.knn(query, collection, k, faiss.METRIC_INNER_PRODUCT)
        for q in range(len(copies)):
            keep = [i for i, j in enumerate(neighbours[q].tolist()) if j >= 0 and j not in related]
            rows = neighbours[q][keep]
            wrong.append(
                _copy_scores(query_hood, hood, np.full(len(rows), q), rows, scores[q][keep])
            )
        if features is not None:
            side = min(VERIFY_SIDE, max(image.size))
            large = synthetic_copies(
                image, count=copies_per_source, longest_side=side, seed=seed + number
            )  # the same edits at the verification size
            for q, copy in enumerate(large):
                mine = local_features(copy)
                nearest = [j for j in neighbours[q][:NEIGHBOURS_VERIFIED].tolist() if j >= 0]
                features.prepare(nearest)
                found = -1
                for j in nearest:
                    if j == row:
                        found = inlier_count(mine, features[j])
                    elif j not in related:
                        wrong_inliers.append(inlier_count(mine, features[j]))
                right_inliers.append(found)
        # the original's own links (a pair of two sampled originals counted once)
        order = np.argsort(-similar)[:k]
        unrelated = [
            j for j in order.tolist() if j not in related and not (j in sampled and j < row)
        ]
        wrong.append(similar[unrelated])
        queries += len(copies) + 1
        used += 1
    if not right:
        raise MultiGrainError("none of the sampled images could be read to calibrate on")
    verified = features is not None
    return CalibrationSample(
        right=np.concatenate(right), wrong=np.concatenate(wrong), num_queries=queries,
        num_sources=used, copies_per_source=copies_per_source,
        right_inliers=np.array(right_inliers, dtype=np.int64) if verified else None,
        wrong_inliers=np.array(wrong_inliers, dtype=np.int64) if verified else None,
    )  # fmt: skip


def _copy_scores(
    query_hood: Neighbourhoods,
    hood: Neighbourhoods,
    at: np.ndarray,
    rows: np.ndarray,
    cosines: np.ndarray,
) -> np.ndarray:
    """Copies `at` (rows of `query_hood`) scored with collection `rows`, as if each copy had
    been added to the collection alone: the copy's mean leaves its partner out, the
    collection image's mean is of its own k best (the copy was never among them)."""
    means = query_hood.mean_without(at, cosines) + hood.mean_of_best(rows)
    return np.asarray(cosines, dtype=np.float64) - 0.5 * means


def _lowest_accepted(links: np.ndarray, expected: np.ndarray, tolerance: float) -> int | None:
    """Walk down the candidate thresholds (links and expected false links non-decreasing);
    accept a step when the links it adds since the last accepted one are, by estimate, at
    most `tolerance` false, and so are all the links above it. Returns the last accepted
    position (None if even the first is refused)."""
    accepted, links_then, false_then = None, 0, 0.0
    for at in range(len(links)):
        gained = links[at] - links_then
        if expected[at] > tolerance * links[at]:
            continue
        if gained and expected[at] - false_then <= tolerance * gained:
            accepted, links_then, false_then = at, int(links[at]), float(expected[at])
    return accepted


def poisson_upper(count: np.ndarray) -> np.ndarray:
    """The one-sided 95 % upper bound of a Poisson mean from observed counts (Garwood)."""
    return chi2.ppf(0.95, 2 * (np.asarray(count, dtype=np.float64) + 1)) / 2


def folder_threshold(
    sample: CalibrationSample,
    folder_scores: np.ndarray,
    *,
    collection_size: int,
    target_precision: float,
    seed: int = 0,
) -> SelfCalibration:
    """The threshold at `target_precision` for the folder's own links (module doc).

    Args:
        sample: the calibration queries' right and wrong links (:func:`sample_links`).
        folder_scores: the scores of the folder's candidate pairs of distinct images.
    """
    if not 0.0 < target_precision < 1.0:
        raise MultiGrainError(f"the target precision must be in (0, 1), got {target_precision}")
    folder = np.sort(np.asarray(folder_scores, dtype=np.float64))[::-1]
    if folder.size == 0:  # one distinct image: nothing can be linked
        folder = np.array([np.inf])
    candidates = np.unique(folder)[::-1]  # every score where the folder's links change
    links = np.searchsorted(-folder, -candidates, side="right")
    wrong = np.sort(sample.wrong)
    counts = wrong.size - np.searchsorted(wrong, candidates, side="left")
    per_query = collection_size / 2 / sample.num_queries
    expected = per_query * counts
    estimate = 1.0 - expected / links
    lower = 1.0 - per_query * poisson_upper(counts) / links
    at = _lowest_accepted(links, expected, 1.0 - target_precision)
    reached = at is not None
    if at is None:  # the best estimate (the highest threshold on ties)
        at = int(np.argmax(estimate))
    threshold = float(candidates[at])
    return SelfCalibration(
        threshold=threshold,
        target_precision=float(target_precision),
        reached_target=reached,
        estimated_precision=round(float(max(0.0, estimate[at])), 4),
        precision_lower_bound=round(float(max(0.0, lower[at])), 4),
        expected_false_links=round(float(expected[at]), 3),
        folder_links=int(links[at]) if np.isfinite(threshold) else 0,
        estimated_recall=round(float(np.mean(sample.right >= threshold)), 4),
        num_sources=sample.num_sources,
        copies_per_source=sample.copies_per_source,
        num_queries=sample.num_queries,
        collection_size=collection_size,
        seed=seed,
    )


def verification_calibration(
    sample: CalibrationSample,
    threshold: float,
    folder_counts: np.ndarray | None = None,
    *,
    min_inliers: int | None = None,
) -> VerificationCalibration:
    """Geometric verification's operating point on the sample (module doc) and what it
    gives on the folder.

    Args:
        sample: from :func:`sample_links` with `features`.
        threshold: the score threshold in use (for the combined recall).
        folder_counts: the counts of the folder's matched pairs, if matched yet.
        min_inliers: the count to use instead of calibrating one.
    """
    if sample.right_inliers is None or sample.wrong_inliers is None:
        raise MultiGrainError("the calibration sample was made without geometric verification")
    wrong = sample.wrong_inliers
    needed = verification_threshold(wrong) if min_inliers is None else int(min_inliers)
    verified = sample.right_inliers >= needed
    counts = np.zeros(0, np.int64) if folder_counts is None else np.asarray(folder_counts)
    false_rate = float(poisson_upper(np.array(np.count_nonzero(wrong >= needed)))) / max(
        1, len(wrong)
    )
    return VerificationCalibration(
        min_inliers=needed,
        unrelated_pairs=len(wrong),
        highest_unrelated=int(wrong.max()) if len(wrong) else 0,
        recall=round(float(np.mean(verified)), 4),
        combined_recall=round(float(np.mean(verified | (sample.right >= threshold))), 4),
        folder_pairs=len(counts),
        folder_links=int(np.sum(counts >= needed)),
        closest_below=int(counts[counts < needed].max()) if np.any(counts < needed) else 0,
        expected_false_links=round(false_rate * len(counts), 3),
    )
