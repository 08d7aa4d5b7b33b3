"""JPEG decode + resize throughput with and without libjpeg's draft (DCT-scaled) mode.

Writes ~20 large synthetic photos (smooth colour fields, edges, texture and sensor noise:
no real photos ship with the test machines), then for each target longest side s times

- full:  ``decode_image(path)`` + bicubic resize to s;
- draft: ``decode_image(path, longest_side=s)`` + the same resize,

and compares the two resized results (max abs pixel difference, PSNR). Prints JSON.

    python benchmarks/decode_draft.py [--count 20] [--width 3000] [--height 2000] [--out F]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from multigrain.data.images import decode_image
from multigrain.data.resize import resize_longest_side


@dataclass
class DraftResult:
    longest_side: int
    full_images_per_s: float
    draft_images_per_s: float
    speedup: float
    max_abs_difference: int  # over all images, 0-255
    mean_psnr_db: float
    min_psnr_db: float


def synthetic_photo(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    """A photo-like image: low-frequency colour field, a few hard-edged shapes, texture, noise."""
    coarse = rng.uniform(0, 255, size=(6, 9, 3)).astype(np.uint8)
    base = np.asarray(
        Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC), np.float32
    )
    y, x = np.mgrid[0:height, 0:width]
    for _ in range(8):  # discs with sharp edges
        cx, cy = rng.uniform(0, width), rng.uniform(0, height)
        radius = rng.uniform(0.03, 0.2) * min(width, height)
        inside = (x - cx) ** 2 + (y - cy) ** 2 < radius**2
        base[inside] = 0.5 * base[inside] + 0.5 * rng.uniform(0, 255, size=3)
    period = rng.uniform(6, 20)
    texture = 12 * np.sin(2 * np.pi * (x * 0.7 + y * 0.3) / period)
    pixels = base + texture[..., None] + rng.normal(0, 4, size=base.shape)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def run(paths: list[Path], longest_side: int, repeats: int) -> DraftResult:
    timings: dict[str, float] = {}
    outputs: dict[str, list[np.ndarray]] = {}
    for name, hint in [("full", None), ("draft", longest_side)]:
        start = time.perf_counter()
        for _ in range(repeats):
            results = [
                resize_longest_side(decode_image(path, longest_side=hint), longest_side)
                for path in paths
            ]
        timings[name] = (time.perf_counter() - start) / (repeats * len(paths))
        outputs[name] = [np.asarray(image) for image in results]
    pairs = list(zip(outputs["full"], outputs["draft"], strict=True))
    psnrs = [psnr(full, draft) for full, draft in pairs]
    max_diff = max(int(np.abs(f.astype(np.int16) - d).max()) for f, d in pairs)
    return DraftResult(
        longest_side=longest_side,
        full_images_per_s=round(1 / timings["full"], 2),
        draft_images_per_s=round(1 / timings["draft"], 2),
        speedup=round(timings["full"] / timings["draft"], 2),
        max_abs_difference=max_diff,
        mean_psnr_db=round(float(np.mean(psnrs)), 2),
        min_psnr_db=round(min(psnrs), 2),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=20)
    parser.add_argument("--width", type=int, default=3000)
    parser.add_argument("--height", type=int, default=2000)
    parser.add_argument("--quality", type=int, default=90)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--sizes", type=int, nargs="+", default=[224, 500])
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as folder:
        paths = []
        for index in range(args.count):
            path = Path(folder) / f"photo_{index:02d}.jpg"
            portrait = index % 4 == 3  # a few portrait images too
            size = (args.height, args.width) if portrait else (args.width, args.height)
            synthetic_photo(rng, *size).save(path, quality=args.quality)
            paths.append(path)
        results = [run(paths, size, args.repeats) for size in args.sizes]
    report = {
        "images": args.count,
        "image_size": [args.width, args.height],
        "jpeg_quality": args.quality,
        "results": [asdict(result) for result in results],
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.out is not None:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
