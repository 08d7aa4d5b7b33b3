"""int8 by default where it is the fastest (VNNI, no AMX): the commands as users run them.

conftest.py sets MULTIGRAIN_PRECISION=float for the rest of the suite; these tests unset it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from multigrain.runtime.precision import (
    InferencePrecision,
    int8_is_fastest_here,
    resolve_inference_precision,
)

pytest.importorskip("onnxruntime")


def _run(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if k != "MULTIGRAIN_PRECISION"}
    environment.update(env)
    result = subprocess.run(
        [sys.executable, "-m", "multigrain", *args], capture_output=True, text=True,
        timeout=600, env=environment,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def _expected_default() -> str:
    if int8_is_fastest_here():
        return "int8"
    cpu = torch.device("cpu")
    return resolve_inference_precision("auto", cpu, float_only=True).value


def test_embed_runs_the_machine_kinds_default_and_records_it(image_folder, tmp_path):
    expected = _expected_default()  # int8 on the reference machine (AVX512-VNNI, no AMX)
    info = _run("info")
    assert any(
        "default precision" in line and line.split()[-1] == expected
        for line in info.stdout.splitlines()
    ), info.stdout
    _run("embed", str(image_folder), "-o", str(tmp_path / "auto"), "--device", "cpu")
    recorded = json.loads((tmp_path / "auto" / "metadata.json").read_text())
    assert recorded["precision"] == expected
    assert ("int8" in recorded) == (expected == "int8")  # the quantised model's fingerprint
    # another process (no shared cache: another machine) quantises to the same model
    _run(
        "embed", str(image_folder), "-o", str(tmp_path / "again"), "--device", "cpu",
        MULTIGRAIN_CACHE_DIR="off",
    )  # fmt: skip
    again = json.loads((tmp_path / "again" / "metadata.json").read_text())
    assert again.get("int8") == recorded.get("int8")
    # MULTIGRAIN_PRECISION=float keeps auto among the float precisions
    _run("embed", str(image_folder), "-o", str(tmp_path / "float"), "--device", "cpu",
         MULTIGRAIN_PRECISION="float")  # fmt: skip
    floats = json.loads((tmp_path / "float" / "metadata.json").read_text())
    assert floats["precision"] in {"bf16", "fp32"} and "int8" not in floats


def test_what_is_fitted_and_stored_stays_float_under_auto(monkeypatch):
    monkeypatch.delenv("MULTIGRAIN_PRECISION")
    from multigrain.inference.feature_maps import calibration_trunk
    from multigrain.models import MultiGrain

    model = MultiGrain(trunk="resnet18", num_classes=3).eval()
    trunk = calibration_trunk(model, InferencePrecision.AUTO, "cpu")  # p* calibration
    assert trunk.precision in {InferencePrecision.BF16, InferencePrecision.FP32}


def test_a_float_output_is_not_resumed_in_int8_and_the_fix_is_named(image_folder, tmp_path):
    out = tmp_path / "out"
    _run("embed", str(image_folder), "-o", str(out), "--device", "cpu",
         MULTIGRAIN_PRECISION="float")  # fmt: skip
    made = json.loads((out / "metadata.json").read_text())["precision"]
    environment = {k: v for k, v in os.environ.items() if k != "MULTIGRAIN_PRECISION"}
    refused = subprocess.run(
        [sys.executable, "-m", "multigrain", "embed", str(image_folder), "-o", str(out),
         "--device", "cpu", "--resume", "--precision", "int8"],
        capture_output=True, text=True, timeout=600, env=environment,
    )  # fmt: skip
    assert refused.returncode != 0
    assert f"holds {made} descriptors, this run makes int8 ones" in refused.stderr
    assert f"pass --precision {made} to continue it" in refused.stderr
    _run("embed", str(image_folder), "-o", str(out), "--device", "cpu", "--resume",
         "--precision", made)  # fmt: skip


class _Squares:
    """Four labelled 32x32 pictures (a LabelledImages)."""

    classes = ["dark", "light"]
    labels = [0, 1, 0, 1]

    def __len__(self) -> int:
        return len(self.labels)

    def load(self, index: int):
        from PIL import Image

        return Image.new("RGB", (32, 32), (40 + 50 * index, 90, 200 - 40 * index))


def test_the_research_study_scores_in_float_where_auto_would_be_int8(monkeypatch):
    """Every study's curves and scores were made in bf16/fp32; int8 by default must not
    change how a resumed study scores its next snapshots."""
    import multigrain.experiments.study_scores as study_scores
    import multigrain.runtime.precision as precision_module
    from multigrain.models import MultiGrain

    monkeypatch.delenv("MULTIGRAIN_PRECISION")
    monkeypatch.setattr(precision_module, "int8_is_fastest_here", lambda: True)
    assert resolve_inference_precision("auto", torch.device("cpu")) is InferencePrecision.INT8
    used = []
    real = study_scores.fast_trunk_for

    def recording(model, precision, **options):
        used.append(resolve_inference_precision(precision, torch.device("cpu")))  # what runs
        return real(model, precision, **options)

    monkeypatch.setattr(study_scores, "fast_trunk_for", recording)
    model = MultiGrain(trunk="resnet18", num_classes=2).eval()
    found = study_scores.embed(model, _Squares(), resolution=32, exponents=[3.0])
    assert found.clean[0].shape[0] == 4
    assert used and InferencePrecision.INT8 not in used, used
