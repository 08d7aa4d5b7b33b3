"""find-duplicates on the built-in copy-detection benchmark as a folder: every reference photo
and every query (its copies: 10 edit families at three strengths, AugLy) in one folder, with
default settings, with and without point matching. A copy-heavy folder of strong edits
(picture in picture, emoji, grey + mirror), unlike the photo folders of
photo_folder_cases.py where most photos have no copy. Scored with score_duplicate_groups.py;
per family: copies grouped with their original.

    .venv/bin/python benchmarks/builtin_copy_folder.py --root data/builtin \\
        --work /tmp/builtin-folder --output docs/benchmarks/builtin_copy_folder.json
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling scorer

from score_duplicate_groups import folder_summary, summary_line  # noqa: E402

import multigrain  # noqa: E402
from multigrain.runtime.atomic import atomic_write_text  # noqa: E402
from multigrain.runtime.errors import MultiGrainError  # noqa: E402
from multigrain.runtime.machine import describe_machine  # noqa: E402


def build_folder(root: Path, folder: Path) -> dict[str, object]:
    """Copy the references and queries of ROOT/copydetection into FOLDER/images; returns the
    truth (groups: a reference and its queries; kinds: query -> edit family)."""
    source = root / "copydetection"
    if not (source / "queries.csv").is_file():
        raise MultiGrainError(f"{source}: no built-in benchmark; run multigrain build-benchmark")
    images = folder / "images"
    images.mkdir(parents=True, exist_ok=True)
    groups: dict[str, list[str]] = {}
    kinds: dict[str, str] = {}
    with open(source / "queries.csv", newline="") as handle:
        for row in csv.DictReader(handle):
            query, reference = f"{row['query_id']}.jpg", f"{row['reference_id']}.jpg"
            groups.setdefault(reference, [reference]).append(query)
            kinds[query] = row["family"]
            shutil.copy(source / "queries" / query, images / query)
    for reference in sorted(p.name for p in (source / "references").iterdir()):
        shutil.copy(source / "references" / reference, images / reference)
    truth = {"groups": sorted(groups.values()), "kinds": kinds}
    (folder / "truth.json").write_text(json.dumps(truth, indent=1))
    return truth


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=Path("data/builtin"))
    parser.add_argument("--work", type=Path, required=True, help="folder for the case")
    parser.add_argument("--output", type=Path, required=True, help="JSON to write")
    parser.add_argument("--model", help="a bundle or checkpoint [default: the built-in model]")
    args = parser.parse_args(argv)
    if (args.work / "truth.json").is_file():
        truth = json.loads((args.work / "truth.json").read_text())
    else:
        truth = build_folder(args.root, args.work)
    results = {}
    for name, verify in (("with point matching", True), ("score only", False)):
        started = time.perf_counter()
        report = multigrain.find_duplicates(
            args.work / "images",
            model=args.model,
            verify=verify,
            output=args.work / f"out-{'points' if verify else 'score'}",
        )
        seconds = time.perf_counter() - started
        results[name] = folder_summary(truth, report, seconds)
        print(summary_line(name, results[name]), flush=True)
    payload = {
        "benchmark": "builtin_copy_folder",
        "command": "benchmarks/builtin_copy_folder.py " + " ".join(argv or sys.argv[1:]),
        "model": multigrain.load(args.model).prepared.source,
        "machine": describe_machine(),
        "runs": results,
    }
    atomic_write_text(args.output, json.dumps(payload, indent=1))
    print(f"-> {args.output}")


if __name__ == "__main__":
    main()
