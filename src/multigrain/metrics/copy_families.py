"""Copy-detection scores broken down by transform family and strength.

Given descriptors of the queries and the references and, for each query, the index of the
reference it was made from, every subset of queries (one family at one strength, a whole
family, a whole strength, everything) gets

- mAP: each query has exactly one positive, so AP = 1 / rank of its reference (ties count
  against the query, see `metrics.retrieval.rank_of_match`);
- µAP: over the global list of each query's `neighbours` best (query, reference, score)
  predictions, as in DISC21 (`metrics.copy_detection.micro_average_precision`);
- µAP after score normalisation, when per-query offsets are given: each query's scores
  minus beta x its similarity to a background set (SSCD), so that one threshold means
  the same for every query (`score_norm.background_similarity`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from multigrain.metrics.copy_detection import micro_average_precision
from multigrain.metrics.retrieval import rank_of_match, single_positive_map

ALL = "all"


@dataclass(frozen=True)
class BreakdownRow:
    method: str
    family: str
    strength: str
    num_queries: int
    map: float
    micro_ap: float
    micro_ap_normalised: float = float("nan")


def copy_detection_breakdown(
    queries: torch.Tensor,
    references: torch.Tensor,
    reference_of_query: Sequence[int],
    *,
    families: Sequence[str],
    strengths: Sequence[str],
    method: str,
    neighbours: int = 10,
    score_offsets: np.ndarray | None = None,
) -> list[BreakdownRow]:
    """queries (Q, D), references (R, D) L2-normalised -> one row per subset of queries.

    `score_offsets` (Q,): subtracted from each query's scores for the normalised µAP.
    """
    similarity = queries.float() @ references.float().T
    truth = torch.as_tensor(list(reference_of_query), dtype=torch.long)
    ranks = rank_of_match(similarity, truth)
    k = min(neighbours, similarity.shape[1])
    scores, indices = similarity.topk(k, dim=1)
    hits = (indices == truth[:, None]).numpy()
    scores_np = scores.numpy()
    normalised = None if score_offsets is None else scores_np - np.asarray(score_offsets)[:, None]
    family_array, strength_array = np.asarray(families), np.asarray(strengths)
    subsets = [(f, s) for f in sorted(set(families)) for s in sorted(set(strengths))]
    subsets += [(f, ALL) for f in sorted(set(families))]
    subsets += [(ALL, s) for s in sorted(set(strengths))] + [(ALL, ALL)]
    rows = []
    for family, strength in subsets:
        mask = np.ones(len(truth), dtype=bool)
        if family != ALL:
            mask &= family_array == family
        if strength != ALL:
            mask &= strength_array == strength
        if not mask.any():
            continue
        selected = torch.as_tensor(mask)
        rows.append(
            BreakdownRow(
                method=method,
                family=family,
                strength=strength,
                num_queries=int(mask.sum()),
                map=single_positive_map(ranks[selected]),
                micro_ap=micro_average_precision(
                    scores_np[mask].ravel(), hits[mask].ravel(), int(mask.sum())
                ),
                micro_ap_normalised=float("nan")
                if normalised is None
                else micro_average_precision(
                    normalised[mask].ravel(), hits[mask].ravel(), int(mask.sum())
                ),
            )
        )
    return rows


def breakdown_table(rows: Sequence[BreakdownRow], *, metric: str = "map") -> str:
    """Markdown: one line per (family, strength), one column per method."""
    methods = list(dict.fromkeys(row.method for row in rows))
    cells: dict[tuple[str, str], dict[str, float]] = {}
    counts: dict[tuple[str, str], int] = {}
    for row in rows:
        cells.setdefault((row.family, row.strength), {})[row.method] = getattr(row, metric)
        counts[(row.family, row.strength)] = row.num_queries
    lines = [
        "| family | strength | queries | " + " | ".join(methods) + " |",
        "|---|---|---|" + "---|" * len(methods),
    ]
    for (family, strength), values in cells.items():
        numbers = " | ".join(f"{values[m]:.3f}" if m in values else "" for m in methods)
        lines.append(f"| {family} | {strength} | {counts[(family, strength)]} | {numbers} |")
    return "\n".join(lines)
