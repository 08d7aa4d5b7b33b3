"""find-duplicates with default settings on photo folders made from packages the model never
trained on: the whole 19-package case of photo_folder_case.py, and two cases from disjoint
halves of its packages (every other package), so no figure rests on one set of photos.
Each case is scored with score_duplicate_groups.py; the JSON records the machine.

    .venv/bin/python benchmarks/photo_folder_cases.py --work /tmp/cases \\
        --output docs/benchmarks/photo_folder_cases.json [--score cosine] [--model BUNDLE]

The images are embedded at what `--precision auto` gives on this machine (int8 on CPUs with
VNNI and no AMX); ``MULTIGRAIN_PRECISION=float`` (or bf16, fp32, ...) chooses another.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the two sibling benchmarks

import torch  # noqa: E402
from photo_folder_case import PHOTO_PATHS, build_case  # noqa: E402
from score_duplicate_groups import folder_summary, summary_line  # noqa: E402

import multigrain  # noqa: E402
from multigrain.runtime.atomic import atomic_write_text  # noqa: E402
from multigrain.runtime.machine import describe_machine  # noqa: E402
from multigrain.runtime.precision import resolve_inference_precision  # noqa: E402


def cases() -> dict[str, tuple[list[str], int]]:
    """name -> (packages, distinct photos)."""
    packages = list(PHOTO_PATHS)
    return {
        "all-19-packages": (packages, 200),
        "half-a": (packages[0::2], 100),
        "half-b": (packages[1::2], 100),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--work", type=Path, required=True, help="folder for the cases")
    parser.add_argument("--output", type=Path, required=True, help="JSON to write")
    parser.add_argument("--score", default="neighbourhood", choices=["neighbourhood", "cosine"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model", help="a bundle or checkpoint [default: the built-in model]")
    args = parser.parse_args(argv)
    results = {}
    model_name = Path(args.model or "builtin").name
    # what find-duplicates runs: --precision auto, which $MULTIGRAIN_PRECISION can set
    used = resolve_inference_precision("auto", torch.device("cpu")).value
    for name, (packages, distinct) in cases().items():
        folder = args.work / name
        if not (folder / "truth.json").is_file():
            build_case(folder, packages=packages, distinct=distinct, seed=args.seed)
        started = time.perf_counter()
        report = multigrain.find_duplicates(
            folder / "images",
            model=args.model,
            score=args.score,
            output=args.work / f"{name}-{args.score}-{model_name}-{used}",
        )
        seconds = time.perf_counter() - started
        truth = json.loads((folder / "truth.json").read_text())
        results[name] = {"packages": packages, **folder_summary(truth, report, seconds)}
        print(summary_line(name, results[name]), flush=True)
    model = multigrain.load(args.model)
    payload = {
        "benchmark": "photo_folder_cases",
        "command": "benchmarks/photo_folder_cases.py " + " ".join(argv or sys.argv[1:]),
        "score": args.score,
        "model": model.prepared.source,
        "precision": used,
        "machine": describe_machine(),
        "cases": results,
    }
    atomic_write_text(args.output, json.dumps(payload, indent=1))
    print(f"-> {args.output}")


if __name__ == "__main__":
    main()
