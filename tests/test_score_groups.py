"""benchmarks/score_duplicate_groups.py: group scores and the one summary both folder
benchmarks write."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from score_duplicate_groups import folder_summary, score_groups  # noqa: E402

from multigrain.duplicates.folder import DuplicateReport, ScoreKind  # noqa: E402
from multigrain.duplicates.groups import DuplicateGroup, GroupKind, PairScore  # noqa: E402
from multigrain.duplicates.keep import FileFacts  # noqa: E402

TRUTH = {
    "groups": [
        ["a.jpg", "a_crop.jpg", "a_q30.jpg"],
        ["b.jpg", "b_bar.jpg"],
        ["c.jpg", "c_rot.jpg"],
    ],
    "sources": {"x.jpg": "x", "y.jpg": "y"},
    "kinds": {"a_crop.jpg": "crop", "a_q30.jpg": "jpeg", "b_bar.jpg": "bar", "c_rot.jpg": "rotate"},
}


def _group(names: list[str], inliers: dict[frozenset[str], int | None]) -> DuplicateGroup:
    members = [FileFacts(f"/photos/{n}", 10, 10, 100) for n in names]
    pairs = [
        PairScore(f"/photos/{a}", f"/photos/{b}", 0.9, 0.9, True, inliers.get(frozenset((a, b))))
        for i, a in enumerate(names)
        for b in names[i + 1 :]
    ]
    return DuplicateGroup(GroupKind.NEAR, members, pairs)


def test_scores_count_exact_merged_split_missed_and_unrelated() -> None:
    predicted = [["a.jpg", "a_crop.jpg", "a_q30.jpg"], ["b.jpg", "b_bar.jpg", "x.jpg"]]
    scores = score_groups(TRUTH, predicted)
    assert [len(scores.exact), len(scores.merged), len(scores.missed)] == [1, 1, 1]
    assert [u.name for u in scores.unrelated] == ["x.jpg"]
    assert scores.true_pairs == 5 and scores.predicted_pairs == 6 and scores.correct_pairs == 4
    assert scores.kinds["crop"] == [1, 1] and scores.kinds["rotate"] == [0, 1]
    assert not scores.perfect


def test_folder_summary_has_one_shape_with_matching_points_of_true_pairs() -> None:
    groups = [
        _group(["a.jpg", "a_crop.jpg", "a_q30.jpg"], {frozenset(("a.jpg", "a_crop.jpg")): 40}),
        _group(["b.jpg", "y.jpg"], {frozenset(("b.jpg", "y.jpg")): 16}),
    ]
    report = DuplicateReport(
        folder="/photos", num_images=9, threshold=0.5, threshold_source="given",
        score_kind=ScoreKind.NEIGHBOURHOOD, calibration=None, model="m", resolution=224,
        exponent=3.0, whitened=True, groups=groups,
    )  # fmt: skip
    summary = folder_summary(TRUTH, report, seconds=1.23)
    assert summary["found_exactly"] == 1 and summary["missed"] == 2
    assert summary["unrelated_images"] == 2  # b.jpg and y.jpg share no true partner
    # the three true pairs found: one matched with 40 points, two by score only (None)
    assert summary["true_pairs_matching_points"] == [None, None, 40]
    assert summary["pair_precision"] == 3 / 4 and summary["pair_recall"] == 3 / 5
    assert summary["seconds"] == 1.2 and summary["copy_kinds"]["jpeg"] == [1, 1]
