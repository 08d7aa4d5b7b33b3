"""benchmarks/embed_pipeline.py: a tiny run reports every set, stage and bound."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from multigrain.runtime.allocator import find_allocator
from multigrain.runtime.machine import usable_cores

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "embed_pipeline.py"


def _gradient(width: int, height: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    channels = [(x * a + y * b) % 256 for a, b in rng.uniform(0.01, 0.2, (3, 2))]
    return Image.fromarray(np.stack(channels, axis=2).astype(np.uint8))


def test_smoke_run_reports_every_set_stage_and_bound(tmp_path):
    small, camera = tmp_path / "small", tmp_path / "camera"
    small.mkdir()
    camera.mkdir()
    for index, size in enumerate([(96, 72), (72, 96)]):
        _gradient(*size, index).save(small / f"{index}.jpg", quality=90)
    _gradient(2400, 1500, 2).save(camera / "big.jpg", quality=85)  # 3.6 MP
    _gradient(1600, 1200, 3).save(camera / "too-small.jpg", quality=85)  # 1.9 MP: left out
    output = tmp_path / "out.json"
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--trunk", "resnet18", "--resolutions", "48",
         "--images", "3", "--small-photos", str(small), "--camera-roots", str(camera),
         "--output", str(output)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(output.read_text())
    assert report["machine"]["cpu_model"] and "cpu_flags" in report["machine"]
    assert [Path(row["file"]).name for row in report["camera_photos"]] == ["big.jpg"]
    rows = {row["set"]: row for row in report["results"]}
    assert set(rows) == {"small", "camera", "camera-same"}
    for row in rows.values():
        assert row["resolution"] == 48 and row["photos"]["images"] == 3
        head = row["headline"]
        rates = head["forward_alone_images_per_second"], head["decode_alone_images_per_second"]
        assert head["bound"] == round(min(rates), 2)
        assert head["no_overlap"] < min(rates)
        assert row["decode"]["images"] == 3
        assert head["e2e_over_no_overlap"] == pytest.approx(
            head["default_images_per_second"] / head["no_overlap"], abs=0.01
        )
        # each stage alone on its share of the cores: k model threads, n - k decoding workers
        split = row["split"]
        assert split["cores"] == usable_cores()
        for part in split["splits"]:
            assert part["forward_threads"] + part["decode_workers"] == split["cores"]
            assert part["bound"] == min(
                part["forward_images_per_second"], part["decode_images_per_second"]
            )
        if split["cores"] >= 2:
            assert split["best"]["bound"] == max(part["bound"] for part in split["splits"])
            assert head["split_bound"] == split["best"]["bound"]
            assert head["e2e_over_split_bound"] == pytest.approx(
                head["default_images_per_second"] / head["split_bound"], abs=0.001
            )
        else:
            assert split["best"] is None and head["e2e_over_split_bound"] is None
        stages = row["profile"]["stages"]
        assert stages["calls"]["decode"] == stages["calls"]["resize"] == 3  # in the workers
        assert set(stages["worker_seconds"]) == {"decode", "resize", "to_tensor"}
        assert {"forward", "wait", "write"} <= set(stages["main_process_seconds"])
        assert row["default"]["first_batch_seconds"] <= row["default"]["seconds"]
        # the default runs as `multigrain embed` does: its allocator and wait policy;
        # the baseline, a user's script, on glibc malloc
        if find_allocator("auto"):  # the library file mapped: libtcmalloc_minimal.so.4.5.10
            assert any(n in row["default"]["allocator"] for n in ("tcmalloc", "jemalloc"))
        else:
            assert row["default"]["allocator"] == "glibc malloc"
        # chosen from the load at the child's start (runtime/openmp.py): sleep or libgomp's own
        assert row["default"]["omp_wait_policy"] in {"PASSIVE", "unset"}
        assert row["baseline"]["allocator"] == "glibc malloc"
    # the one-shape set is the camera photo remade as a 4032 x 3024 phone photo
    assert rows["camera-same"]["photos"]["longest_side_min_median_max"] == [4032] * 3


def test_int8_run_quantises_in_its_own_cache_before_timing(tmp_path):
    pytest.importorskip("onnxruntime")
    small = tmp_path / "small"
    small.mkdir()
    for index in range(16):  # enough calibration images for the cache
        _gradient(64 + 8 * (index % 2), 48, index).save(small / f"{index}.jpg", quality=90)
    output, user_cache = tmp_path / "out.json", tmp_path / "user-cache"
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--trunk", "resnet18", "--resolutions", "48",
         "--images", "16", "--sets", "small", "--small-photos", str(small),
         "--precision", "int8", "--output", str(output)],
        capture_output=True, text=True, timeout=600,
        env={**os.environ, "MULTIGRAIN_CACHE_DIR": str(user_cache)},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(output.read_text())
    assert report["precision"] == "int8"
    (row,) = report["results"]
    assert row["default"]["precision"] == row["profile"]["precision"] == "int8"
    assert row["int8_quantised_in_seconds"] > 0
    assert row["default"]["forward"]["images_per_second"] > 0
    assert row["baseline"]["images_per_second"] > 0  # the baseline stays fp32
    assert not user_cache.exists()  # the run quantised into its own cache, not the user's
