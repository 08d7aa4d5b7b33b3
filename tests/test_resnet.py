"""Our ResNet trunks against torchvision's: names, shapes, order, seeded weights, outputs."""

from __future__ import annotations

from collections import OrderedDict

import pytest
import torch
from torch import nn
from torchvision import models as tv_models

from multigrain.inference.fast_trunk import fold_batch_norm
from multigrain.models import TrunkName, build_trunk

#: torchvision's children that the trunk keeps (avgpool and fc are the head it drops).
TRUNK_CHILDREN = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4")


def torchvision_trunk(name: str) -> nn.Sequential:
    """torchvision's resnet `name` (random weights) without avgpool and fc, as before."""
    resnet = getattr(tv_models, name)(weights=None)
    return nn.Sequential(OrderedDict((child, getattr(resnet, child)) for child in TRUNK_CHILDREN))


def entries(module: nn.Module) -> list[tuple[str, tuple[int, ...], torch.dtype]]:
    """(name, shape, dtype) of every parameter, then every buffer, in module order."""
    return [
        (name, tuple(tensor.shape), tensor.dtype)
        for name, tensor in [*module.named_parameters(), *module.named_buffers()]
    ]


@pytest.mark.parametrize("name", [trunk.value for trunk in TrunkName])
def test_same_tensor_names_shapes_and_order(name):
    with torch.device("meta"):
        ours, _ = build_trunk(name)
        theirs = getattr(tv_models, name)(weights=None)
    expected = [entry for entry in entries(theirs) if not entry[0].startswith("fc.")]
    assert entries(ours) == expected
    modules = [(name, type(module).__name__) for name, module in theirs.named_modules()]
    assert [(name, type(module).__name__) for name, module in ours.named_modules()][1:] == [
        (name, kind) for name, kind in modules[1:] if name not in ("avgpool", "fc")
    ]


@pytest.mark.parametrize("name", ["resnet18", "resnet34", "resnet50"])
def test_seeded_weights_are_torchvisions(name):
    torch.manual_seed(7)
    ours, _ = build_trunk(name)
    ours_rng = torch.get_rng_state()
    torch.manual_seed(7)
    theirs = torchvision_trunk(name)
    assert torch.equal(ours_rng, torch.get_rng_state())  # the same draws, none more
    expected = theirs.state_dict()
    for key, value in ours.state_dict().items():
        assert torch.equal(value, expected[key]), key


def randomised(module: nn.Module, seed: int) -> nn.Module:
    """`module` with random weights and trained-looking batch-norm statistics."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for value in module.state_dict().values():
            if value.is_floating_point():
                value.copy_(torch.rand(value.shape, generator=generator) * 0.2 + 0.9)
        for sub in module.modules():
            if isinstance(sub, nn.Conv2d):
                sub.weight.normal_(0, 0.05, generator=generator)
            elif isinstance(sub, nn.BatchNorm2d):
                sub.bias.normal_(0, 0.1, generator=generator)
                sub.running_mean.normal_(0, 0.1, generator=generator)
    return module


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_outputs_and_gradients_bitwise_equal(name):
    theirs = randomised(torchvision_trunk(name), seed=3)
    ours, _ = build_trunk(name)
    ours.load_state_dict(theirs.state_dict())
    images = torch.randn(2, 3, 70, 90, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(ours.eval()(images), theirs.eval()(images))
    outputs = []
    for model in (ours.train(), theirs.train()):
        model.zero_grad()
        out = model(images)
        out.square().mean().backward()
        outputs.append((out.detach(), [p.grad for p in model.parameters()]))
    assert torch.equal(outputs[0][0], outputs[1][0])
    assert all(torch.equal(a, b) for a, b in zip(outputs[0][1], outputs[1][1], strict=True))
    running_means = [model.state_dict()["bn1.running_mean"] for model in (ours, theirs)]
    assert torch.equal(*running_means)


def test_folded_trunks_bitwise_equal():
    """The fast inference trunk (batch norm folded by torch.fx) is unchanged too."""
    theirs = randomised(torchvision_trunk("resnet18"), seed=4)
    ours, _ = build_trunk("resnet18")
    ours.load_state_dict(theirs.state_dict())
    images = torch.randn(3, 3, 64, 48, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        for dtype in (torch.float32, torch.bfloat16):
            folded = [fold_batch_norm(model).to(dtype) for model in (ours, theirs)]
            assert isinstance(folded[0], torch.fx.GraphModule)  # folded, not the fallback
            assert torch.equal(folded[0](images.to(dtype)), folded[1](images.to(dtype)))
