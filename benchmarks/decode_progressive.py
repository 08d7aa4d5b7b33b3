"""Decoding the progressive camera photos at 1/8 scale: whole file against its 1/8 scans.

For each progressive JPEG of >= 3 MP under the camera roots (the Debian wallpaper packages
of benchmarks/embed_pipeline.py), at each s: the time of PIL's draft decode of the whole
file (what multigrain did before, and what a baseline JPEG still gets) against
`decode_image`, which reads a progressive file that draft mode decodes at 1/8 from only
the scans that scale is made of (multigrain.data.progressive); the two images must be
equal, pixel for pixel. Files that draft mode decodes at 1/2 or 1/4 at that s are listed
and left out of the sums (both paths decode them whole). One thread, files in turn, each
timed `--rounds` times (the two paths interleaved), the best round kept.

Usage:
    python benchmarks/decode_progressive.py --output docs/benchmarks/decode_progressive.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from embed_pipeline import CAMERA_ROOTS, camera_photos
from PIL import Image

from multigrain.data.images import _draft_size, decode_image
from multigrain.runtime.atomic import atomic_write_text
from multigrain.runtime.machine import describe_machine


def whole_file(path: Path, longest_side: int) -> Image.Image:
    """PIL's draft decode of every scan (the path before multigrain.data.progressive)."""
    with Image.open(path) as opened:
        opened.draft("RGB", _draft_size(*opened.size, longest_side))
        opened.load()
        return opened.convert("RGB")


def measure(path: Path, longest_side: int, rounds: int) -> dict[str, Any]:
    with Image.open(path) as opened:
        opened.draft("RGB", _draft_size(*opened.size, longest_side))
        scale = int(opened.decoderconfig[0])
    whole_s, fewer_s = [], []
    for _ in range(rounds):
        start = time.perf_counter()
        reference = whole_file(path, longest_side)
        whole_s.append(time.perf_counter() - start)
        start = time.perf_counter()
        decoded = decode_image(path, longest_side=longest_side)
        fewer_s.append(time.perf_counter() - start)
    # decode_image applies the EXIF orientation; none of these files carries a rotation
    same = decoded.size == reference.size and np.array_equal(
        np.asarray(decoded), np.asarray(reference)
    )
    return {
        "file": str(path),
        "scale": scale,
        "whole_ms": round(1000 * min(whole_s), 1),
        "decode_image_ms": round(1000 * min(fewer_s), 1),
        "identical": bool(same),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resolutions", default="224,500")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--camera-roots", type=Path, nargs="+", default=list(CAMERA_ROOTS),
        help="folders searched for JPEGs of >= 3 MP (default: the wallpaper packages')",
    )  # fmt: skip
    parser.add_argument("--output", type=Path, default=Path("decode_progressive.json"))
    args = parser.parse_args(argv)
    progressive = []
    for path in camera_photos(tuple(args.camera_roots)):
        with Image.open(path) as opened:
            if opened.format == "JPEG" and opened.info.get("progressive"):
                progressive.append(path)
    results = []
    for longest_side in (int(s) for s in args.resolutions.split(",")):
        rows = [measure(path, longest_side, args.rounds) for path in progressive]
        at_eighth = [row for row in rows if row["scale"] == 8]
        whole = sum(row["whole_ms"] for row in at_eighth)
        fewer = sum(row["decode_image_ms"] for row in at_eighth)
        summary = {
            "resolution": longest_side,
            "files": len(rows),
            "files_at_eighth_scale": len(at_eighth),
            "identical": sum(row["identical"] for row in rows),
            "whole_ms_sum": round(whole, 1),
            "decode_image_ms_sum": round(fewer, 1),
            "speedup_at_eighth_scale": round(whole / fewer, 2) if fewer else None,
            "rows": rows,
        }
        print(
            f"s={longest_side}: {len(at_eighth)} of {len(rows)} files at 1/8, "
            f"{summary['identical']} identical; whole {whole:.0f} ms, decode_image "
            f"{fewer:.0f} ms ({summary['speedup_at_eighth_scale']}x)",
            file=sys.stderr,
        )
        results.append(summary)
    report = {
        "benchmark": "decode_progressive",
        "command": " ".join(["python", *sys.argv]),
        "machine": describe_machine(),
        "pillow": Image.__version__,
        "libjpeg_turbo": Image.core.libjpeg_turbo_version,
        "rounds": args.rounds,
        "results": results,
    }
    atomic_write_text(args.output, json.dumps(report, indent=2) + "\n")
    return 0 if all(r["identical"] == r["files"] for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
