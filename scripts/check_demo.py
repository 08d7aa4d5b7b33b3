#!/usr/bin/env python3
"""Check the demo's report: the trained model must beat pHash and the untrained network.

Usage: check_demo.py [runs/demo/report.json] [--method trained+whitening]

Reads the copy-detection mAP over all held-out queries and over the strong distortions,
prints them, and exits 1 (naming the failed comparison) if the model does not beat both
baselines on both, and, when the report has it, the control ``untrained+whitening`` (the
untrained network whitened the same way: the gain must be training's, not whitening's
alone). CI runs it after `make demo`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

CONTROL = "untrained+whitening"


def copy_map(report: dict, method: str, strength: str) -> float:
    for row in report["result"]["copy_detection"]:
        if row["method"] == method and row["family"] == "all" and row["strength"] == strength:
            return float(row["map"])
    raise SystemExit(f"{method} / {strength}: no copy-detection row in the report")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("report", nargs="?", default="runs/demo/report.json", type=Path)
    parser.add_argument("--method", default="trained+whitening", help="the model's method name")
    args = parser.parse_args()
    if not args.report.exists():
        print(f"{args.report} does not exist: run `make demo` first", file=sys.stderr)
        return 2
    report = json.loads(args.report.read_text())
    methods = {row["method"] for row in report["result"]["copy_detection"]}
    baselines = ["phash", "untrained"]
    if CONTROL in methods and args.method != CONTROL:
        baselines.append(CONTROL)
    failures = []
    for strength in ("all", "strong"):
        model = copy_map(report, args.method, strength)
        for baseline in baselines:
            other = copy_map(report, baseline, strength)
            verdict = "beats" if model > other else "does NOT beat"
            line = (
                f"copy mAP ({strength}): {args.method} {model:.3f} {verdict} {baseline} {other:.3f}"
            )
            print(line)
            if model <= other:
                failures.append(line)
    if failures:
        print("demo check failed:\n  " + "\n  ".join(failures), file=sys.stderr)
        return 1
    print("demo check passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
