"""Duplicate groups from linked pairs: connected components, every pair's scores, the file
to keep first."""

from __future__ import annotations

import enum
from dataclasses import dataclass

import numpy as np

from multigrain.duplicates.keep import FileFacts, file_facts, rank_for_keeping
from multigrain.search.dedup import component_labels
from multigrain.search.neighbourhood import Neighbourhoods


class GroupKind(str, enum.Enum):
    EXACT = "exact"  # every member has the same bytes
    NEAR = "near"  # found by the descriptors


@dataclass(frozen=True)
class PairScore:
    a: str
    b: str
    score: float  # what the threshold applies to (the report's `score_kind`)
    cosine: float  # cosine similarity of the two descriptors
    linked: bool  # score >= the threshold or verified (what put them in one group)
    inliers: int | None = None  # geometric verification's count (None: not matched)


@dataclass
class DuplicateGroup:
    kind: GroupKind
    members: list[FileFacts]  # best to keep first
    pairs: list[PairScore]

    @property
    def keep(self) -> str:
        return self.members[0].path


def duplicate_groups(
    files: list[list[str]],
    descriptors: np.ndarray,
    hood: Neighbourhoods,
    linked: np.ndarray,
    threshold: float,
    *,
    inliers: dict[tuple[int, int], int] | None = None,
    min_inliers: int | None = None,
) -> list[DuplicateGroup]:
    """Groups, largest first, from the distinct images' (L, 2) linked pairs: the connected
    components of the links, each image standing for its byte-identical files.

    A group is EXACT when all its members share their bytes (a single distinct image).
    `inliers` holds the geometric verification counts of the pairs (i < j) matched, and a
    pair counting `min_inliers` or more is linked whatever its score."""
    counts = inliers or {}
    labels = component_labels(len(files), linked)
    groups = []
    for label in np.unique(labels):
        rows = np.flatnonzero(labels == label).tolist()
        members = [name for row in rows for name in files[row]]
        if len(members) < 2:
            continue
        kind = GroupKind.EXACT if len(rows) == 1 else GroupKind.NEAR
        same = {row: round(1.0 - float(hood.mean_of_best(np.array([row]))[0]), 4) for row in rows}
        pairs = [
            PairScore(a, b, same[row], 1.0, True)  # identical files: cosine 1
            for row in rows
            for i, a in enumerate(files[row])
            for b in files[row][i + 1 :]
        ]
        for i, row in enumerate(rows):
            others = np.asarray(rows[i + 1 :], dtype=np.int64)
            cosine = descriptors[others] @ descriptors[row]
            score = hood.normalised(np.full(len(others), row), others, cosine)
            for other, c, value in zip(
                others.tolist(), cosine.tolist(), score.tolist(), strict=True
            ):
                pair = (files[row][0], files[other][0], round(value, 4), round(c, 4))
                count = counts.get((min(row, other), max(row, other)))
                verified = count is not None and min_inliers is not None and count >= min_inliers
                pairs.append(PairScore(*pair, linked=value >= threshold or verified, inliers=count))
        facts = rank_for_keeping([file_facts(name) for name in members])
        groups.append(DuplicateGroup(kind=kind, members=facts, pairs=pairs))
    return sorted(groups, key=lambda g: (-len(g.members), g.members[0].path))
