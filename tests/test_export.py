"""Exported TorchScript and ONNX files agree with PyTorch at several input sizes."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from multigrain.inference.export import export_onnx, export_torchscript
from multigrain.models import MultiGrain
from multigrain.runtime.errors import MultiGrainError

SIZES = [(2, 64, 64), (3, 96, 80)]  # (batch, height, width): one file, several shapes


@pytest.fixture(scope="module")
def model() -> MultiGrain:
    torch.manual_seed(0)
    model = MultiGrain(trunk="resnet18", num_classes=5, pooling_exponent=3.0)
    with torch.no_grad():  # non-trivial batch-norm statistics, so eval mode matters
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                assert module.running_mean is not None and module.running_var is not None
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 1.5)
    return model.train()  # export must switch to eval mode itself


def reference(model: MultiGrain, images: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    model.eval()
    with torch.no_grad():
        embedding, logits = model(images)
    model.train()
    return embedding.numpy(), logits.numpy()


def inputs(batch: int, height: int, width: int) -> torch.Tensor:
    return torch.randn(batch, 3, height, width, generator=torch.Generator().manual_seed(height))


def test_onnx_matches_pytorch_at_several_sizes(tmp_path: Path, model: MultiGrain) -> None:
    onnxruntime = pytest.importorskip("onnxruntime")
    path = export_onnx(model, tmp_path / "sub" / "model.onnx", example_size=64)
    assert path.is_file() and sorted(p.name for p in path.parent.iterdir()) == ["model.onnx"]
    assert model.training  # the caller's mode is restored
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["images"]
    assert [o.name for o in session.get_outputs()] == ["embedding", "logits"]
    for batch, height, width in SIZES:
        images = inputs(batch, height, width)
        embedding, logits = session.run(None, {"images": images.numpy()})
        want_embedding, want_logits = reference(model, images)
        assert embedding.shape == (batch, 512) and logits.shape == (batch, 5)
        np.testing.assert_allclose(embedding, want_embedding, atol=1e-4, rtol=1e-4)
        np.testing.assert_allclose(logits, want_logits, atol=1e-4, rtol=1e-4)


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated")
def test_torchscript_matches_pytorch_at_several_sizes(tmp_path: Path, model: MultiGrain) -> None:
    path = export_torchscript(model, tmp_path / "model.pt", example_size=64)
    assert model.training
    loaded = torch.jit.load(str(path))
    for batch, height, width in SIZES:
        images = inputs(batch, height, width)
        with torch.no_grad():
            embedding, logits = loaded(images)
        want_embedding, want_logits = reference(model, images)
        np.testing.assert_allclose(embedding.numpy(), want_embedding, atol=1e-5, rtol=1e-5)
        np.testing.assert_allclose(logits.numpy(), want_logits, atol=1e-5, rtol=1e-5)


def test_missing_onnx_says_how_to_install(
    tmp_path: Path, model: MultiGrain, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "onnx", None)  # makes `import onnx` fail
    with pytest.raises(MultiGrainError, match=r"pip install 'multigrain\[export\]'"):
        export_onnx(model, tmp_path / "model.onnx")
    assert not (tmp_path / "model.onnx").exists()
