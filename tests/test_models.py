"""Trunk construction and the MultiGrain model's shapes and state-dict layout."""

from __future__ import annotations

import math

import pytest
import torch

from multigrain.models import MultiGrain, TrunkName, build_trunk
from multigrain.runtime.errors import MultiGrainError


@pytest.fixture(scope="module")
def resnet18() -> MultiGrain:
    torch.manual_seed(0)
    return MultiGrain(trunk="resnet18", num_classes=7).eval()


@pytest.mark.parametrize("size", [(64, 64), (72, 96)])
def test_output_shapes(resnet18: MultiGrain, size: tuple[int, int]) -> None:
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        embedding, logits = resnet18(x)
        features = resnet18.forward_features(x)
    assert embedding.shape == (2, 512) and logits.shape == (2, 7)
    assert features.shape == (2, 512, math.ceil(size[0] / 32), math.ceil(size[1] / 32))
    assert resnet18.embedding_dim == 512 and resnet18.trunk_name == "resnet18"


def test_forward_equals_head_of_features(resnet18: MultiGrain) -> None:
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        embedding, logits = resnet18(x)
        head_embedding, head_logits = resnet18.forward_head(resnet18.forward_features(x))
    torch.testing.assert_close(embedding, head_embedding)
    torch.testing.assert_close(logits, head_logits)


def test_small_input_stem() -> None:
    model = MultiGrain(trunk=TrunkName.resnet18, num_classes=3, small_input=True).eval()
    assert isinstance(model.features.maxpool, torch.nn.Identity)
    assert model.features.conv1.kernel_size == (3, 3) and model.features.conv1.stride == (1, 1)
    with torch.no_grad():
        features = model.forward_features(torch.randn(2, 3, 28, 28))
        embedding, logits = model.forward_head(features)
    assert features.shape == (2, 512, 4, 4)
    assert embedding.shape == (2, 512) and logits.shape == (2, 3)


def test_resnet50_embedding_dim() -> None:
    model = MultiGrain(trunk="resnet50", num_classes=5).eval()
    assert model.embedding_dim == 2048
    with torch.no_grad():
        embedding, logits = model(torch.randn(1, 3, 64, 64))
    assert embedding.shape == (1, 2048) and logits.shape == (1, 5)


def test_state_dict_keys_match_released_checkpoints(resnet18: MultiGrain) -> None:
    keys = set(resnet18.state_dict())
    for key in (
        "features.conv1.weight",
        "features.layer1.0.conv1.weight",
        "features.layer4.1.conv2.weight",
        "pool.p",
        "classifier.weight",
        "classifier.bias",
    ):
        assert key in keys
    assert not any(k.startswith(("features.fc", "features.avgpool")) for k in keys)
    assert resnet18.state_dict()["classifier.weight"].shape == (7, 512)


def test_build_trunk_names_children() -> None:
    trunk, channels = build_trunk("resnet34")
    assert channels == 512
    assert [name for name, _ in trunk.named_children()] == [
        "conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4",
    ]  # fmt: skip


def test_architecture_rebuilds_model() -> None:
    model = MultiGrain(trunk="resnet18", num_classes=4, pooling_exponent=1.0, small_input=True)
    arch = model.architecture()
    assert arch == {
        "trunk": "resnet18",
        "num_classes": 4,
        "pooling_exponent": 1.0,
        "learnable_pooling": False,
        "small_input": True,
        "standardise_input": False,
    }
    rebuilt = MultiGrain(**arch)  # type: ignore[arg-type]
    rebuilt.load_state_dict(model.state_dict())


def test_learnable_pooling_key_is_pool_p() -> None:
    model = MultiGrain(trunk="resnet18", num_classes=2, learnable_pooling=True)
    assert "pool.p" in dict(model.named_parameters())


def test_invalid_arguments() -> None:
    with pytest.raises(MultiGrainError, match="resnet18, resnet34"):
        build_trunk("vgg16")
    with pytest.raises(MultiGrainError, match="unknown trunk"):
        MultiGrain(trunk="resnet9")
    with pytest.raises(MultiGrainError, match="num_classes"):
        MultiGrain(trunk="resnet18", num_classes=0)
