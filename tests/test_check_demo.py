"""scripts/check_demo.py: the CI gate on the demo's copy-detection figures."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "check_demo.py"


def _report(tmp_path: Path, maps: dict[str, tuple[float, float]]) -> Path:
    rows = [
        {"method": method, "family": "all", "strength": strength, "map": value}
        for method, (everything, strong) in maps.items()
        for strength, value in (("all", everything), ("strong", strong))
    ]
    path = tmp_path / "report.json"
    path.write_text(json.dumps({"result": {"copy_detection": rows}}))
    return path


def _run(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), str(path)], capture_output=True, text=True, check=False
    )


def test_passes_when_the_model_beats_both_baselines(tmp_path: Path) -> None:
    maps = {"phash": (0.70, 0.60), "untrained": (0.80, 0.67), "trained+whitening": (0.86, 0.73)}
    outcome = _run(_report(tmp_path, maps))
    assert outcome.returncode == 0, outcome.stderr
    assert outcome.stdout.count(" beats ") == 4 and "demo check passed" in outcome.stdout


def test_the_whitened_untrained_control_must_be_beaten_too(tmp_path: Path) -> None:
    maps = {
        "phash": (0.70, 0.60), "untrained": (0.80, 0.67),
        "untrained+whitening": (0.82, 0.75), "trained+whitening": (0.86, 0.73),
    }  # fmt: skip
    outcome = _run(_report(tmp_path, maps))
    assert outcome.returncode == 1
    assert "trained+whitening 0.730 does NOT beat untrained+whitening 0.750" in outcome.stderr
    assert "trained+whitening 0.860 beats untrained+whitening 0.820" in outcome.stdout


def test_fails_naming_the_baseline_it_does_not_beat(tmp_path: Path) -> None:
    maps = {"phash": (0.70, 0.60), "untrained": (0.80, 0.75), "trained+whitening": (0.86, 0.73)}
    outcome = _run(_report(tmp_path, maps))
    assert outcome.returncode == 1
    assert "copy mAP (strong): trained+whitening 0.730 does NOT beat untrained 0.750" in (
        outcome.stderr
    )


def test_missing_report_says_how_to_make_it(tmp_path: Path) -> None:
    outcome = _run(tmp_path / "absent.json")
    assert outcome.returncode == 2 and "make demo" in outcome.stderr
