"""benchmarks/embed_throughput.py: a tiny run writes the JSON the README table is made from."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "embed_throughput.py"


def run_benchmark(tmp_path: Path, photos: Path, *, images: int, modes: str) -> dict:
    """The benchmark at s = 64 on ResNet-18, in one process; its JSON report."""
    output = tmp_path / "out.json"
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--trunk", "resnet18", "--resolutions", "64",
         "--images", str(images), "--modes", modes, "--photos", str(photos),
         "--matmul-size", "256", "--in-process", "--output", str(output)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(output.read_text())


def test_smoke_run_reports_every_mode(tmp_path):
    rng = np.random.default_rng(0)
    photos = tmp_path / "photos"
    (photos / "queries").mkdir(parents=True)
    for index, (width, height) in enumerate([(96, 72), (72, 96), (50, 40)]):
        pixels = rng.integers(0, 255, (height, width, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(photos / f"{index}.jpg", quality=90)
    Image.fromarray(pixels).save(photos / "copy.jpg", quality=90)  # same bytes as 2.jpg
    Image.fromarray(pixels).save(photos / "queries" / "q.jpg")  # AugLy queries are skipped
    Image.fromarray(pixels).save(photos / "not-a-jpeg.png")
    report = run_benchmark(tmp_path, photos, images=4, modes="baseline,default")
    assert report["device"] == "cpu" and report["default_precision_here"] in ("bf16", "fp32")
    [row] = report["results"]
    # 50x40 is smaller than s = 64 and is left out; the two 96-px photos are cycled to 4 files
    assert row["set"]["distinct_photos"] == 2 and row["set"]["images"] == 4
    modes = {m["mode"]: m for m in row["modes"]}
    assert set(modes) == {"baseline", "default"}
    assert modes["default"]["precision"] == report["default_precision_here"]
    for measured in modes.values():
        assert measured["images_per_second"] > 0 and measured["seconds"] > 0
        forward = measured["forward"]
        assert forward["gflop_per_image"] > 0 and 0 < forward["fraction_of_bf16_matmul"]
        assert measured["cosine_to_baseline"]["min"] > 0.98  # the same descriptors, computed fast
    assert modes["baseline"]["speedup_vs_baseline"] == 1.0
    assert report["machine"]["cpu_model"] and "cpu_flags" in report["machine"]
    # the rate once set-up is paid (a long collection's), from the same timings
    default = modes["default"]
    after = 4 / (default["seconds"] - default["setup_seconds"])
    assert default["images_per_second_after_setup"] == pytest.approx(after, rel=0.01, abs=0.01)
    assert "baseline" in report["command"] or "--modes" in report["command"]
    assert modes["baseline"]["forward"]["shape"][0] == 1  # the baseline runs one image at a time


def test_int8_modes_time_quantising_and_loading_from_the_cache(tmp_path):
    pytest.importorskip("onnxruntime")
    rng = np.random.default_rng(0)
    photos = tmp_path / "photos"
    photos.mkdir()
    for index in range(2):
        pixels = rng.integers(0, 255, (72, 96, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(photos / f"{index}.jpg", quality=90)
    report = run_benchmark(tmp_path, photos, images=16, modes="baseline,int8,int8:cached=1")
    [row] = report["results"]
    modes = {m["mode"]: m for m in row["modes"]}
    # 16 files: enough calibration images to be cached (int8_cache.MIN_CALIBRATION_IMAGES)
    assert modes["int8"]["int8_model"] == "quantised"  # a cold cache of its own
    assert modes["int8:cached=1"]["int8_model"] == "loaded from the cache"
    assert modes["int8:cached=1"]["cosine_to_baseline"]["min"] > 0.95
