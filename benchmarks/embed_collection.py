"""`multigrain embed` end to end: images/s at given s, and peak memory against collection size.

Writes N synthetic JPEG photos (smooth colour fields plus noise, default 1024x768) to a
temporary folder, saves a randomly initialised model as a checkpoint, and runs the real
command in a subprocess, timing it and reading the child's peak RSS. JSON out.

    .venv/bin/python benchmarks/embed_collection.py --trunk resnet50 --resolutions 224,500 \
        --images 64 --output runs/bench/embed_speed.json
    .venv/bin/python benchmarks/embed_collection.py --trunk resnet18 --resolutions 128 \
        --images 1000,10000 --output runs/bench/embed_memory.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from multigrain.models import MultiGrain
from multigrain.models.checkpoint import save_checkpoint
from multigrain.runtime.atomic import atomic_write_text


def write_photos(folder: Path, count: int, width: int, height: int) -> None:
    rng = np.random.default_rng(0)
    low = rng.uniform(0, 255, size=(count % 16 + 16, 6, 8, 3))
    for index in range(count):
        field = Image.fromarray(low[index % len(low)].astype(np.uint8)).resize(
            (width, height), Image.Resampling.BICUBIC
        )
        pixels = np.asarray(field, dtype=np.int16) + rng.integers(-12, 12, (height, width, 3))
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(
            folder / f"{index:06d}.jpg", quality=90
        )


def run_embed(
    folder: Path, checkpoint: Path, output: Path, resolution: int, extra: list[str]
) -> dict:
    command = [
        sys.executable, "-m", "multigrain", "embed", str(folder), "-c", str(checkpoint),
        "-o", str(output), "--resolution", str(resolution), *extra,
    ]  # fmt: skip
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    # wait4 gives this child's own peak RSS (the largest of it and its reaped workers)
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        assert process.stderr is not None
        raise SystemExit(f"embed failed: {process.stderr.read().decode()[-2000:]}")
    return {"seconds": seconds, "peak_rss_mib": usage.ru_maxrss / 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trunk", default="resnet50")
    parser.add_argument("--resolutions", default="224,500")
    parser.add_argument("--images", default="64", help="comma-separated collection sizes")
    parser.add_argument("--size", default="1024x768")
    parser.add_argument("--extra", default="", help="extra arguments for multigrain embed")
    parser.add_argument("--output", type=Path)
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.split("x"))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        torch.manual_seed(0)
        model = MultiGrain(trunk=args.trunk, num_classes=1000)
        checkpoint = save_checkpoint(
            root / "model.pt",
            {"model_state": model.state_dict(), "architecture": model.architecture()},
        )
        for count in (int(v) for v in args.images.split(",")):
            folder = root / f"images{count}"
            folder.mkdir()
            write_photos(folder, count, width, height)
            for resolution in (int(v) for v in args.resolutions.split(",")):
                output = root / f"out-{count}-{resolution}"
                measured = run_embed(folder, checkpoint, output, resolution, args.extra.split())
                rows.append(
                    {
                        "trunk": args.trunk,
                        "images": count,
                        "image_size": args.size,
                        "resolution": resolution,
                        "seconds": round(measured["seconds"], 2),
                        "images_per_second": round(count / measured["seconds"], 2),
                        "peak_rss_mib": round(measured["peak_rss_mib"], 1),
                    }
                )
                print(json.dumps(rows[-1]), flush=True)
    report = {
        "benchmark": "embed_collection",
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "extra_arguments": args.extra,
        "note": "peak_rss_mib: peak resident memory of that embed process (os.wait4)",
        "results": rows,
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.output:
        atomic_write_text(args.output, text + "\n")


if __name__ == "__main__":
    main()
