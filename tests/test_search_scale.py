"""benchmarks/search_scale.py at a small size: its memory figures are there and add up."""

from __future__ import annotations

import json

import search_scale


def test_load_in_a_fresh_process_and_the_path_table_are_measured(tmp_path):
    output = tmp_path / "scale.json"
    search_scale.main(
        ["--sizes", "3000", "--only-compressed", "--auto", "8", "--load", "--threads", "1",
         "--output", str(output)]
    )  # fmt: skip
    report = json.loads(output.read_text())
    flat = report["results"][0]
    assert flat["factory"] == "Flat" and flat["recall_at_1"] == 1.0
    # a fresh process holding the loaded index holds at least its 3000 x 512 float32 vectors
    assert flat["load_rss_mb"] >= 0.9 * flat["index_mb"] > 0
    assert 0 < flat["load_s"] < 60
    assert 0 < flat["paths_mb"] < report["paths"]["as_objects_mb"]["3000"]
