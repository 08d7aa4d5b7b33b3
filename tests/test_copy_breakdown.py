"""Per-family copy-detection scores on hand-built descriptors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from multigrain.metrics.copy_families import ALL, breakdown_table, copy_detection_breakdown


def test_breakdown_on_a_hand_built_case():
    references = torch.eye(3)
    # query 0 finds reference 0 first; query 1 (made from reference 1) is closer to
    # reference 2 than to its own, so its reference ranks 2nd: AP = 1/2
    queries = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.6, 0.8], [0.0, 0.0, 1.0]])
    rows = copy_detection_breakdown(
        queries, references, [0, 1, 2],
        families=["crop", "blur", "blur"], strengths=["strong", "strong", "light"],
        method="m", neighbours=2,
    )  # fmt: skip
    by_key = {(r.family, r.strength): r for r in rows}
    assert by_key[("crop", "strong")].map == pytest.approx(1.0)
    assert by_key[("blur", "strong")].map == pytest.approx(0.5)
    assert by_key[("blur", ALL)].map == pytest.approx((0.5 + 1.0) / 2)
    assert by_key[(ALL, ALL)].map == pytest.approx((1 + 0.5 + 1) / 3)
    assert by_key[(ALL, ALL)].num_queries == 3
    # µAP over all: predictions sorted by score: (q0,r0,1.0) hit, (q2,r2,1.0) hit,
    # (q1,r2,0.8) miss, (q1,r1,0.6) hit -> precisions at hits 1, 1, 3/4 -> (1+1+0.75)/3
    assert by_key[(ALL, ALL)].micro_ap == pytest.approx((1 + 1 + 0.75) / 3)
    assert ("crop", "light") not in by_key  # empty subsets are left out
    table = breakdown_table(rows)
    assert "| blur | strong | 1 | 0.500 |" in table


def test_normalised_micro_ap_uses_the_per_query_offsets():
    references = torch.eye(3)
    queries = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.6, 0.8], [0.0, 0.0, 1.0]])
    rows = copy_detection_breakdown(
        queries, references, [0, 1, 2], families=["a"] * 3, strengths=["s"] * 3, method="m",
        neighbours=2, score_offsets=np.array([0.0, -0.5, 0.0]),
    )  # fmt: skip
    overall = next(r for r in rows if r.family == r.strength == ALL)
    # query 1's scores move up by 0.5: its miss (1.3) now heads the global list, then its hit
    # (1.1), then the two hits at 1.0 -> precisions at hits 1/2, 2/3, 3/4
    assert overall.micro_ap_normalised == pytest.approx((1 / 2 + 2 / 3 + 3 / 4) / 3)
    assert overall.micro_ap == pytest.approx((1 + 1 + 0.75) / 3)  # unchanged
