"""Score duplicate groups (what `multigrain find-duplicates` finds) against a case's truth.json
(benchmarks/photo_folder_case.py): true groups found exactly, merged with other files, split,
or missed; the images put in a group with no true partner there ("unrelated", each with its
source and whether it is a tile of the same photo as another member); precision and recall
over pairs; and, per copy kind, how many copies landed with their original. Files are
compared by name, so the groups may hold any paths.

The groups JSON is ``{"groups": [{"members": [{"path": ...}, ...]}, ...]}`` (members may
also be plain paths) or ``{"groups": [[path, ...], ...]}``; groups of one file are ignored.

    .venv/bin/python benchmarks/score_duplicate_groups.py /tmp/photo_case/truth.json \\
        groups.json --output scores.json
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from itertools import combinations
from pathlib import Path
from typing import Any

from multigrain.runtime.atomic import atomic_write_text
from multigrain.runtime.errors import MultiGrainError


@dataclass(frozen=True)
class Unrelated:
    """A file put in a predicted group that holds no true partner of it."""

    name: str
    source: str
    group: int  # index of the predicted group
    sibling_tile: bool  # another member is a tile of (or is) the same source photo


@dataclass
class GroupScores:
    """How predicted groups compare with the true ones; pair sets are unordered name pairs."""

    true_groups: int
    predicted_groups: int
    exact: list[list[str]] = field(default_factory=list)
    merged: list[list[str]] = field(default_factory=list)  # all together, with other files
    split: list[list[str]] = field(default_factory=list)  # some pairs together, not all
    missed: list[list[str]] = field(default_factory=list)  # no pair together
    unrelated: list[Unrelated] = field(default_factory=list)
    unknown: list[str] = field(default_factory=list)  # names that truth.json does not list
    in_several_groups: list[str] = field(default_factory=list)
    true_pairs: int = 0
    predicted_pairs: int = 0
    correct_pairs: int = 0
    kinds: dict[str, list[int]] = field(default_factory=dict)  # kind -> [with original, all]

    @property
    def precision(self) -> float | None:
        return self.correct_pairs / self.predicted_pairs if self.predicted_pairs else None

    @property
    def recall(self) -> float | None:
        return self.correct_pairs / self.true_pairs if self.true_pairs else None

    @property
    def perfect(self) -> bool:
        """Every true group found exactly and no unrelated image in any group."""
        return len(self.exact) == self.true_groups and not self.unrelated


def read_groups(data: Any) -> list[list[str]]:
    """A groups JSON (either form of the module docstring) -> groups of file names."""
    if not isinstance(data, dict) or not isinstance(data.get("groups"), list):
        raise MultiGrainError('groups JSON: expected an object with a "groups" list')
    groups = []
    for group in data["groups"]:
        members = group.get("members") if isinstance(group, dict) else group
        if not isinstance(members, list):
            raise MultiGrainError(f"groups JSON: a group is a list or has 'members': {group!r}")
        names = [Path(m["path"] if isinstance(m, dict) else m).name for m in members]
        if len(names) >= 2:
            groups.append(names)
    return groups


def _pairs(groups: list[list[str]]) -> set[frozenset[str]]:
    return {frozenset(p) for g in groups for p in combinations(sorted(set(g)), 2)}


def score_groups(truth: dict[str, Any], predicted: list[list[str]]) -> GroupScores:
    """Compare `predicted` groups of file names with truth.json's ``groups``."""
    true_groups = [sorted(g) for g in truth["groups"]]
    sources: dict[str, str] = truth.get("sources", {})
    home = {name: i for i, g in enumerate(true_groups) for name in g}
    scores = GroupScores(true_groups=len(true_groups), predicted_groups=len(predicted))
    seen: dict[str, int] = defaultdict(int)
    for name in (n for g in predicted for n in set(g)):
        seen[name] += 1
    scores.in_several_groups = sorted(n for n, c in seen.items() if c > 1)
    scores.unknown = sorted(n for n in seen if sources and n not in sources)
    predicted_sets = [set(g) for g in predicted]
    together = _pairs(predicted)
    for group in true_groups:
        found = sum(frozenset(p) in together for p in combinations(group, 2))
        container = [s for s in predicted_sets if set(group) <= s]
        if set(group) in predicted_sets:
            scores.exact.append(group)
        elif container:
            scores.merged.append(group)
        elif found:
            scores.split.append(group)
        else:
            scores.missed.append(group)
    for index, members in enumerate(predicted_sets):
        for name in sorted(members):
            if any(home.get(name, -1) == home.get(o, -2) for o in members - {name}):
                continue
            photo = sources.get(name, "").split("#")[0]
            sibling = bool(photo) and any(
                sources.get(o, "").split("#")[0] == photo for o in members - {name}
            )
            scores.unrelated.append(Unrelated(name, sources.get(name, ""), index, sibling))
    truth_pairs = _pairs(true_groups)
    scores.true_pairs, scores.predicted_pairs = len(truth_pairs), len(together)
    scores.correct_pairs = len(truth_pairs & together)
    for name, kind in sorted(truth.get("kinds", {}).items()):
        partners = [o for o in true_groups[home[name]] if o not in truth["kinds"]]
        hit = any(frozenset((name, o)) in together for o in partners)
        counts = scores.kinds.setdefault(kind, [0, 0])
        counts[0], counts[1] = counts[0] + hit, counts[1] + 1
    return scores


def folder_summary(truth: dict[str, Any], report: Any, seconds: float) -> dict[str, Any]:
    """The JSON summary of one find-duplicates run on a folder with a truth.json.

    One shape for every benchmark that scores a folder (builtin_copy_folder.py,
    photo_folder_cases.py): the settings the run chose, the group and pair scores, the
    matching points of each true pair it found (None: found by score, not matched), and
    the unrelated images it grouped.
    """
    from multigrain.duplicates.outputs import report_dict

    groups = [[Path(member.path).name for member in group.members] for group in report.groups]
    scores = score_groups(truth, groups)
    found = report_dict(report)
    true_pairs = _pairs(read_groups(truth))
    points = [
        pair.inliers
        for group in report.groups
        for pair in group.pairs
        if frozenset((Path(pair.a).name, Path(pair.b).name)) in true_pairs
    ]
    return {
        "images": report.num_images,
        "threshold": report.threshold,
        "calibration": found["calibration"],
        "min_inliers": found["min_inliers"],
        "verification": found["verification"],
        "seconds": round(seconds, 1),
        "true_groups": scores.true_groups,
        "found_exactly": len(scores.exact),
        "merged": len(scores.merged),
        "split": len(scores.split),
        "missed": len(scores.missed),
        "unrelated_images": len(scores.unrelated),
        "pair_precision": scores.precision,
        "pair_recall": scores.recall,
        "copy_kinds": scores.kinds,  # kind -> [copies grouped with their original, all]
        "true_pairs_matching_points": sorted(points, key=lambda c: -1 if c is None else c),
        "unrelated": [asdict(u) for u in scores.unrelated],
    }


def summary_line(name: str, summary: dict[str, Any]) -> str:
    return (
        f"{name}: threshold {summary['threshold']:.3f}, {summary['found_exactly']}/"
        f"{summary['true_groups']} groups exact, {summary['unrelated_images']} unrelated "
        f"images, pair precision {summary['pair_precision']}, recall {summary['pair_recall']}"
    )


def _fraction(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def table(scores: GroupScores) -> str:
    """A short plain-text report."""
    lines = [
        f"true groups {scores.true_groups}, predicted groups {scores.predicted_groups}",
        f"  found exactly     {len(scores.exact)}",
        f"  merged (+ others) {len(scores.merged)}",
        f"  split             {len(scores.split)}",
        f"  missed            {len(scores.missed)}",
        f"unrelated images in groups: {len(scores.unrelated)}"
        f" ({sum(u.sibling_tile for u in scores.unrelated)} beside a tile of the same photo)",
    ]
    lines += [
        f"  {u.name} (group {u.group}{', sibling tile' if u.sibling_tile else ''}): {u.source}"
        for u in scores.unrelated
    ]
    lines.append(
        f"pairs: precision {_fraction(scores.precision)}, recall {_fraction(scores.recall)}"
        f" ({scores.correct_pairs} correct of {scores.predicted_pairs} predicted,"
        f" {scores.true_pairs} true)"
    )
    lines.append(
        "copy with its original: "
        + ", ".join(f"{kind} {hit}/{total}" for kind, (hit, total) in scores.kinds.items())
    )
    if scores.unknown or scores.in_several_groups:
        lines.append(
            f"names not in the truth: {scores.unknown}; in several groups: "
            f"{scores.in_several_groups}"
        )
    lines.append("PERFECT" if scores.perfect else "not perfect")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("truth", type=Path, help="truth.json of a photo_folder_case.py case")
    parser.add_argument("groups", type=Path, help="the groups JSON to score")
    parser.add_argument("--output", type=Path, help="write the scores here as JSON")
    args = parser.parse_args(argv)
    try:
        truth = json.loads(args.truth.read_text())
        scores = score_groups(truth, read_groups(json.loads(args.groups.read_text())))
    except (OSError, json.JSONDecodeError, MultiGrainError) as error:
        raise SystemExit(f"error: {error}") from error
    print(table(scores))
    if args.output:
        report = {**asdict(scores), "precision": scores.precision, "recall": scores.recall,
                  "perfect": scores.perfect, "truth": str(args.truth),
                  "groups_file": str(args.groups)}  # fmt: skip
        atomic_write_text(args.output, json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
