"""python -m multigrain.evaluation.builtin OUT: build the built-in benchmark into OUT."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from multigrain.evaluation.builtin.build import DEFAULT_MAX_POOL, build_builtin_benchmark


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m multigrain.evaluation.builtin", description=__doc__
    )
    parser.add_argument("output", type=Path, help="an empty (or new) folder")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-pool", type=int, default=DEFAULT_MAX_POOL)
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty output")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    manifest = build_builtin_benchmark(
        args.output, seed=args.seed, max_pool=args.max_pool, overwrite=args.overwrite
    )
    print(f"{args.output}: {manifest.counts} in {manifest.build_seconds} s")
    print(
        f"pHash baseline: instance mAP {manifest.phash_instance_map}, "
        f"copy top-1 {manifest.phash_copy_top1}"
    )


if __name__ == "__main__":
    main()
