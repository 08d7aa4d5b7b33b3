"""Per-image channel standardisation (models/standardise.py): the maths against numpy, the
invariance it exists for, and its place in the model, the fast trunk and a bundle."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors import safe_open

from multigrain.inference.bundle import BundleSettings, load_bundle, write_bundle
from multigrain.inference.fast_trunk import embed_features, inference_trunk
from multigrain.models import MultiGrain
from multigrain.models.standardise import has_standardised_input, standardise_channels
from multigrain.runtime.precision import InferencePrecision


def test_each_plane_gets_mean_zero_and_std_one_as_numpy_says() -> None:
    x = torch.rand(2, 3, 9, 7, generator=torch.Generator().manual_seed(0)) * 5 - 1
    x[0, 1, 0, 0] = 100.0  # a lamp: clipped to what a white pixel gives after normalising
    got = standardise_channels(x).numpy()
    planes = x.numpy()
    mean = planes.mean(axis=(2, 3), keepdims=True)
    std = planes.std(axis=(2, 3), keepdims=True)
    low = -np.array([0.485, 0.456, 0.406]) / np.array([0.229, 0.224, 0.225])
    high = (1 - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])
    expected = np.clip((planes - mean) / std, low[:, None, None], high[:, None, None])
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    assert got[0, 1, 0, 0] == pytest.approx(high[1], rel=1e-5)
    # a flat picture becomes zeros, not amplified round-off
    assert standardise_channels(torch.full((1, 3, 4, 4), 0.3)).abs().max() < 1e-4


def test_brightness_contrast_and_colour_cast_do_not_change_the_embedding() -> None:
    torch.manual_seed(0)
    model = MultiGrain(trunk="resnet18", num_classes=4, standardise_input=True).eval()
    plain = MultiGrain(trunk="resnet18", num_classes=4).eval()
    plain.load_state_dict(model.state_dict())  # same weights, same keys
    x = torch.rand(2, 3, 64, 80, generator=torch.Generator().manual_seed(1))
    gain = torch.tensor([0.6, 0.8, 1.3]).view(1, 3, 1, 1)
    edited = x * gain + torch.tensor([0.1, -0.05, 0.2]).view(1, 3, 1, 1)
    with torch.no_grad():
        same = torch.nn.functional.cosine_similarity(model(x)[0], model(edited)[0])
        moved = torch.nn.functional.cosine_similarity(plain(x)[0], plain(edited)[0])
    assert same.min() > 1 - 1e-5
    assert moved.min() < same.min() - 1e-4  # without it the edit does show


def test_the_fast_trunk_keeps_the_standardisation() -> None:
    torch.manual_seed(0)
    model = MultiGrain(trunk="resnet18", num_classes=4, standardise_input=True).eval()
    assert has_standardised_input(model.features)
    trunk = inference_trunk(model, precision=InferencePrecision.FP32, device=torch.device("cpu"))
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = model(x)[0]
    torch.testing.assert_close(embed_features(model, trunk(x)), expected, rtol=1e-4, atol=1e-4)


def test_a_bundle_records_it_and_its_identity_differs(tmp_path) -> None:
    torch.manual_seed(0)
    identities = []
    weights = MultiGrain(trunk="resnet18", num_classes=2).state_dict()
    for flag in (False, True):
        model = MultiGrain(trunk="resnet18", num_classes=2, standardise_input=flag).eval()
        model.load_state_dict(weights)  # the same weights either way
        settings = BundleSettings(
            resolution=64, exponent=3.0, classes=["a", "b"], architecture=model.architecture()
        )
        root = write_bundle(tmp_path / f"b{flag}", model, settings)
        bundle = load_bundle(root)
        assert bundle.settings.architecture["standardise_input"] is flag
        assert has_standardised_input(bundle.model().features) is flag
        with safe_open(str(root / "model.safetensors"), "pt") as handle:
            assert json.loads(handle.metadata()["architecture"])["standardise_input"] is flag
        identities.append(bundle.identity.split("@")[1])
    assert identities[0] != identities[1]


@pytest.mark.parametrize("flag", [False, True])
def test_architecture_round_trips(flag: bool) -> None:
    model = MultiGrain(trunk="resnet18", num_classes=3, standardise_input=flag)
    assert MultiGrain(**model.architecture()).standardise_input is flag


def test_onnx_export_keeps_the_standardisation(tmp_path) -> None:
    import onnxruntime

    from multigrain.inference.export import export_onnx

    torch.manual_seed(0)
    model = MultiGrain(trunk="resnet18", num_classes=3, standardise_input=True).eval()
    export_onnx(model, tmp_path / "m.onnx", example_size=64)
    session = onnxruntime.InferenceSession(str(tmp_path / "m.onnx"))
    x = torch.rand(1, 3, 64, 80) * 0.5 + 0.2  # another shape than the example's
    (embedding, *_) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        np.testing.assert_allclose(embedding, model(x)[0].numpy(), rtol=1e-4, atol=1e-4)
