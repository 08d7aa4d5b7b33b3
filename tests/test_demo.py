"""The demo pipeline end to end, at a size the suite can afford (make demo runs it in full)."""

from __future__ import annotations

import json

from multigrain.experiments.fashion_demo import run_demo


def test_demo_writes_its_report(fashion_mnist_root, tmp_path):
    report = run_demo(output_dir=tmp_path, steps=2, batch_size=12)
    assert report.steps == 2
    saved = json.loads((tmp_path / "report.json").read_text())
    assert saved["trained"]["num_images"] == 1000
    for model in ("trained", "untrained"):
        for metric in ("top1", "copy_recall_at_1", "copy_map"):
            assert 0.0 <= saved[model][metric] <= 1.0
    text = (tmp_path / "report.md").read_text()
    assert "| trained |" in text and "| untrained |" in text
