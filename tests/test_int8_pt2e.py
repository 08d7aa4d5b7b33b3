"""benchmarks/int8_pt2e.py records which step of PyTorch's int8 path fails, never crashes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "int8_pt2e.py"


def test_reports_each_step_or_the_missing_torchao(tmp_path: Path) -> None:
    output = tmp_path / "int8.json"
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--trunks", "resnet18", "--shape", "2,3,32,32",
         "--residual-fusion", "on", "--output", str(output)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(output.read_text())
    assert report["machine"]["cpu_model"] and "cpu_flags" in report["machine"]
    (row,) = report["results"]
    assert row["bf16_eager_images_per_second"] > 0
    try:
        import torchao  # noqa: F401
    except ImportError:
        assert row["steps"] == {"import torchao": row["steps"]["import torchao"]}
        assert "pip install torchao" in row["steps"]["import torchao"]
    else:  # every step is recorded until the first failure, or all pass with figures
        if all(state == "ok" for state in row["steps"].values()):
            assert row["int8_images_per_second"] > 0
        else:
            assert sum(state.startswith("failed") for state in row["steps"].values()) == 1
