"""Test-time commands end to end: calibrate -> embed (p* by default), whiten -> classify, export."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_pattern

from multigrain.inference.store import load_embeddings
from multigrain.models import MultiGrain
from multigrain.models.checkpoint import save_checkpoint


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, "-m", "multigrain", *args], capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    return result


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-init 3-class model, 600 fitting images and a 3-class labelled folder."""
    root = tmp_path_factory.mktemp("inference")
    rng = np.random.default_rng(5)
    fit = root / "fit"
    fit.mkdir()
    for index in range(600):
        make_pattern(rng, index % 3, 24).save(fit / f"{index:04d}.png")
    for label in range(3):
        folder = root / "labelled" / f"class_{label}"
        folder.mkdir(parents=True)
        for index in range(6):
            make_pattern(rng, label, 40).save(folder / f"{index}.png")
    torch.manual_seed(0)
    model = MultiGrain(trunk="resnet18", num_classes=3)
    with torch.no_grad():
        model.classifier.bias.normal_()  # a non-zero bias is what makes folding delicate
    save_checkpoint(
        root / "model.pt",
        {"model_state": model.state_dict(), "architecture": model.architecture(),
         "classes": ["horizontal", "vertical", "checks"]},
    )  # fmt: skip
    return root


def test_whitening_folded_into_the_classifier_keeps_top1(workspace):
    checkpoint = str(workspace / "model.pt")
    cli("whiten", str(workspace / "fit"), "-c", checkpoint, "-o", str(workspace / "w.pt"),
        "--resolution", "32", "--shrinkage", "0.01")  # fmt: skip
    plain = cli("classify", str(workspace / "labelled"), "-c", checkpoint, "-s", "32", "--json")
    folded = cli("classify", str(workspace / "labelled"), "-c", checkpoint, "-s", "32", "--json",
                 "--whitening", str(workspace / "w.pt"))  # fmt: skip
    before = [json.loads(line) for line in plain.stdout.splitlines()]
    after = [json.loads(line) for line in folded.stdout.splitlines()]
    assert len(before) == len(after) == 18
    assert [p["indices"] for p in before] == [p["indices"] for p in after]
    np.testing.assert_allclose(
        [p["scores"] for p in before], [p["scores"] for p in after], atol=1e-4
    )
    assert before[0]["labels"][0] in {"horizontal", "vertical", "checks"}
    # whitened descriptors of the fitting set: unit length and decorrelated
    cli("embed", str(workspace / "fit"), "-c", checkpoint, "-o", str(workspace / "wemb"),
        "-s", "32", "--whitening", str(workspace / "w.pt"))  # fmt: skip
    whitened = load_embeddings(workspace / "wemb")
    assert whitened.metadata.whitened
    np.testing.assert_allclose(np.linalg.norm(whitened.descriptors, axis=1), 1.0, atol=1e-5)


def test_calibration_is_used_by_embed(workspace):
    checkpoint = workspace / "model.pt"
    result = cli("calibrate", "-c", str(checkpoint), "--data", str(workspace / "labelled"),
                 "--resolutions", "32,48", "--exponents", "1,2,3,5")  # fmt: skip
    stored = json.loads((workspace / "model.pt.calibration.json").read_text())
    assert (workspace / "model.pt.calibration.png").read_bytes()[:4] == b"\x89PNG"
    assert "p*" in result.stdout
    best_48 = stored["best"]["48"]
    table = {(row["resolution"], row["exponent"]): row["top1"] for row in stored["table"]}
    assert table[(48, best_48)] == max(v for (s, _), v in table.items() if s == 48)
    cli("embed", str(workspace / "labelled"), "-c", str(checkpoint), "-o",
        str(workspace / "emb48"), "-s", "48")  # fmt: skip
    assert load_embeddings(workspace / "emb48").metadata.exponent == best_48
    (workspace / "model.pt.calibration.json").unlink()


def test_export_onnx_from_the_cli(workspace):
    import onnxruntime

    out = workspace / "model.onnx"
    cli("export", "-c", str(workspace / "model.pt"), "-o", str(out), "--example-size", "64")
    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    embedding, logits = session.run(None, {"images": np.zeros((1, 3, 48, 80), np.float32)})
    assert embedding.shape == (1, 512) and logits.shape == (1, 3)


def test_an_index_knows_its_whitening_and_model(workspace, tmp_path):
    """Descriptors whitened by another whitening, or a server with another model, are
    refused with both settings named (issue 15, item 4)."""
    from multigrain.runtime.errors import MultiGrainError
    from multigrain.service.loading import open_service

    checkpoint = str(workspace / "model.pt")
    labelled = str(workspace / "labelled")
    for name, shrinkage in (("w1.pt", "0.01"), ("w2.pt", "0.5")):
        cli("whiten", str(workspace / "fit"), "-c", checkpoint, "-o", str(tmp_path / name),
            "--resolution", "32", "--shrinkage", shrinkage)  # fmt: skip
    for name in ("w1", "w2"):
        cli("embed", labelled, "-c", checkpoint, "-o", str(tmp_path / f"e{name}"), "-s", "32",
            "--whitening", str(tmp_path / f"{name}.pt"))  # fmt: skip
    first = load_embeddings(tmp_path / "ew1").metadata
    second = load_embeddings(tmp_path / "ew2").metadata
    assert first.whitening and second.whitening and first.whitening != second.whitening
    cli("index", "build", str(tmp_path / "ew1"), "-o", str(tmp_path / "index"))
    cli("search", str(tmp_path / "index"), str(tmp_path / "ew1"), "-k", "1")  # same: fine
    refused = subprocess.run(
        [sys.executable, "-m", "multigrain", "search", str(tmp_path / "index"),
         str(tmp_path / "ew2"), "-k", "1"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert f"whitening: {second.whitening!r} vs {first.whitening!r}" in refused.stderr
    # a whitening fitted at s=32 is not applied to descriptors made at s=48
    other_s = subprocess.run(
        [sys.executable, "-m", "multigrain", "embed", labelled, "-c", checkpoint, "-o",
         str(tmp_path / "e48"), "-s", "48", "--whitening", str(tmp_path / "w1.pt")],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert other_s.returncode == 2 and "Traceback" not in other_s.stderr
    assert "fitted at s=32" in other_s.stderr and "--resolution 32" in other_s.stderr
    assert not (tmp_path / "e48").exists()
    # a server given another model than the one that built the index refuses to start
    cli("embed", labelled, "-c", checkpoint, "-o", str(tmp_path / "plain"), "-s", "32")
    cli("index", "build", str(tmp_path / "plain"), "-o", str(tmp_path / "plain.index"))
    other = MultiGrain(trunk="resnet18", num_classes=3)
    state = {"model_state": other.state_dict(), "architecture": other.architecture()}
    save_checkpoint(tmp_path / "other.pt", state)
    with pytest.raises(MultiGrainError, match="model: 'model.pt@sha256:.*' vs 'other.pt@"):
        open_service(
            checkpoint=tmp_path / "other.pt", index_folder=tmp_path / "plain.index",
            data_dir=tmp_path / "data", token=None, max_upload_bytes=1 << 20,
            max_pixels=1 << 20,
        )  # fmt: skip
