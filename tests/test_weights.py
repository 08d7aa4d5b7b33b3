"""load_model: our checkpoints, the authors' layout and torchvision state dicts."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import pytest
import torch
from torchvision import models as tv_models

from multigrain.models import MultiGrain
from multigrain.models.checkpoint import save_checkpoint
from multigrain.models.weights import LoadedModel, WeightsFormat, load_model
from multigrain.runtime.errors import MultiGrainError


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.randn(2, 3, 64, 48, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def torchvision_resnet() -> tv_models.ResNet:
    torch.manual_seed(0)
    model = tv_models.resnet18(weights=None, num_classes=1000).eval()
    with torch.no_grad():  # non-trivial batch-norm statistics
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                assert module.running_mean is not None and module.running_var is not None
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 1.5)
    return model


def random_multigrain(**kwargs: Any) -> MultiGrain:
    torch.manual_seed(1)
    model = MultiGrain(**{"trunk": "resnet18", "num_classes": 7, **kwargs})
    return model.eval()


def test_torchvision_state_dict_reproduces_torchvision_logits(
    tmp_path: Path, torchvision_resnet: tv_models.ResNet, images: torch.Tensor
) -> None:
    path = tmp_path / "resnet18-0123.pth"
    torch.save(torchvision_resnet.state_dict(), path)
    loaded = load_model(path)
    assert isinstance(loaded, LoadedModel)
    assert loaded.source_format is WeightsFormat.TORCHVISION
    assert loaded.path == path
    assert loaded.model.trunk_name == "resnet18" and not loaded.model.training
    assert float(loaded.model.pool.p) == 1.0
    assert len(loaded.classes) == 1000 and loaded.classes[:2] == ["tench", "goldfish"]
    with torch.no_grad():
        embedding, logits = loaded.model(images)
        expected = torchvision_resnet(images)
    assert embedding.shape == (2, 512)
    torch.testing.assert_close(logits, expected, atol=1e-5, rtol=0)
    # A chosen exponent overrides the default 1.0.
    assert float(load_model(path, pooling_exponent=3.0).model.pool.p) == 3.0


def test_ddp_prefix_is_stripped(tmp_path: Path, torchvision_resnet: tv_models.ResNet) -> None:
    path = tmp_path / "ddp.pth"
    torch.save({f"module.{k}": v for k, v in torchvision_resnet.state_dict().items()}, path)
    assert load_model(path).source_format is WeightsFormat.TORCHVISION


def test_half_precision_file_loads_into_float32_tensors_of_its_own(
    tmp_path: Path, torchvision_resnet: tv_models.ResNet
) -> None:
    """The model is built without tensors (meta device) and takes the file's, cast and
    made contiguous as copying them into a float32 model did; none is left on meta."""
    state = torchvision_resnet.state_dict()
    half = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    half["fc.weight"] = half["fc.weight"].t().contiguous().t()  # same values, strided
    assert not half["fc.weight"].is_contiguous()
    path = tmp_path / "half.pth"
    torch.save(half, path)
    model = load_model(path).model
    tensors = [*model.parameters(), *model.buffers()]
    assert all(t.device.type == "cpu" and t.is_contiguous() for t in tensors)
    assert all(p.dtype == torch.float32 and p.requires_grad for p in model.parameters())
    loaded = model.state_dict()
    assert torch.equal(loaded["classifier.weight"], half["fc.weight"].float())
    for key, value in half.items():
        if not key.startswith("fc."):
            assert torch.equal(loaded[f"features.{key}"], value.to(loaded[f"features.{key}"].dtype))


def test_authors_checkpoint_round_trips(tmp_path: Path, images: torch.Tensor) -> None:
    source = random_multigrain(num_classes=1000, pooling_exponent=3.0)
    with torch.no_grad():
        source.pool.set_p(2.5)
    path = tmp_path / "joint_3B_0.5.pth"
    torch.save({"model_state": source.state_dict()}, path)
    loaded = load_model(path)
    assert loaded.source_format is WeightsFormat.AUTHORS
    assert float(loaded.model.pool.p) == 2.5 and loaded.model.pooling_exponent == 2.5
    assert loaded.classes[0] == "tench"
    with torch.no_grad():
        for got, want in zip(loaded.model(images), source(images), strict=True):
            torch.testing.assert_close(got, want, atol=1e-6, rtol=0)


def test_authors_whitened_classifier_folds_the_constant_input(
    tmp_path: Path, images: torch.Tensor, caplog: pytest.LogCaptureFixture
) -> None:
    source = random_multigrain(num_classes=5)
    state = source.state_dict()
    weight = torch.randn(5, 513, generator=torch.Generator().manual_seed(2))
    bias = torch.randn(5, generator=torch.Generator().manual_seed(3))
    state["classifier.weight"], state["classifier.bias"] = weight, bias
    state["pool.p"] = torch.tensor([3.0])  # a 1-element vector is accepted too
    path = tmp_path / "whitened.pth"
    torch.save({"model_state": state}, path)
    with caplog.at_level("WARNING", logger="multigrain.models.weights"):
        loaded = load_model(path)
    assert "constant 1" in caplog.text
    assert loaded.classes == [f"class_{i}" for i in range(5)]
    with torch.no_grad():
        embedding, logits = loaded.model(images)
        reference_embedding, _ = source(images)
        ones = torch.ones(len(images), 1)
        expected = torch.cat([reference_embedding, ones], dim=1) @ weight.T + bias
    torch.testing.assert_close(embedding, reference_embedding, atol=1e-6, rtol=0)
    torch.testing.assert_close(logits, expected, atol=1e-4, rtol=1e-5)


def test_own_checkpoint_keeps_architecture_and_classes(
    tmp_path: Path, images: torch.Tensor
) -> None:
    source = random_multigrain(num_classes=3, pooling_exponent=2.0, small_input=True)
    path = save_checkpoint(
        tmp_path / "ours.pt",
        {
            "model_state": source.state_dict(),
            "architecture": source.architecture(),
            "classes": ["cat", "dog", "emu"],
        },
    )
    loaded = load_model(path)
    assert loaded.source_format is WeightsFormat.MULTIGRAIN
    assert loaded.classes == ["cat", "dog", "emu"]
    assert loaded.model.architecture() == source.architecture()
    with torch.no_grad():
        for got, want in zip(loaded.model(images), source(images), strict=True):
            torch.testing.assert_close(got, want, atol=0, rtol=0)
    # The stem is read off the file too when the architecture is not recorded.
    torch.save({"model_state": source.state_dict()}, tmp_path / "bare.pt")
    assert load_model(tmp_path / "bare.pt").model.small_input


def test_wrong_keys_list_missing_and_unexpected(
    tmp_path: Path, torchvision_resnet: tv_models.ResNet
) -> None:
    state = dict(torchvision_resnet.state_dict())
    state["layer1.0.convX.weight"] = state.pop("layer1.0.conv1.weight")
    del state["fc.bias"]
    path = tmp_path / "damaged.pth"
    torch.save(state, path)
    with pytest.raises(MultiGrainError) as caught:
        load_model(path)
    message = str(caught.value)
    assert str(path) in message
    assert "2 missing keys: classifier.bias, features.layer1.0.conv1.weight" in message
    assert "1 unexpected keys: features.layer1.0.convX.weight" in message


def test_wrong_shape_and_unknown_depth_are_explained(
    tmp_path: Path, torchvision_resnet: tv_models.ResNet
) -> None:
    state = dict(torchvision_resnet.state_dict())
    state["bn1.weight"] = torch.ones(3)
    torch.save(state, tmp_path / "shape.pth")
    with pytest.raises(MultiGrainError, match=r"wrong shapes: features\.bn1\.weight \(3,\)"):
        load_model(tmp_path / "shape.pth")
    shallow = {k: v for k, v in torchvision_resnet.state_dict().items() if "layer4.1" not in k}
    torch.save(shallow, tmp_path / "shallow.pth")
    with pytest.raises(MultiGrainError, match=r"basic blocks per stage \(2, 2, 2, 1\)"):
        load_model(tmp_path / "shallow.pth")


def test_arbitrary_pickle_is_refused(tmp_path: Path) -> None:
    class Payload:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            return (print, ("executed",))

    path = tmp_path / "evil.pth"
    path.write_bytes(pickle.dumps({"model_state": Payload()}, protocol=2))
    with pytest.raises(MultiGrainError, match=f"refusing to load weights file {path}: .*print"):
        load_model(path)


def test_foreign_and_missing_files(tmp_path: Path) -> None:
    with pytest.raises(MultiGrainError, match="does not exist"):
        load_model(tmp_path / "nope.pth")
    torch.save({"encoder.weight": torch.ones(1)}, tmp_path / "other.pth")
    with pytest.raises(MultiGrainError, match="cannot tell the format"):
        load_model(tmp_path / "other.pth")
    torch.save([torch.ones(1)], tmp_path / "list.pth")
    with pytest.raises(MultiGrainError, match="not a dict of tensors"):
        load_model(tmp_path / "list.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a torch file")
    with pytest.raises(MultiGrainError, match="cannot load weights file"):
        load_model(tmp_path / "junk.pth")


def test_authors_checkpoint_after_their_whitening_script_gets_its_classifier_back(
    tmp_path: Path, images: torch.Tensor, caplog: pytest.LogCaptureFixture
) -> None:
    """Issue 18 item 4: ``whitening.pca.pca_P`` / ``pca_m`` files load, the classifier is
    the raw embedding's again, and the constant-1 guess is not what the warning says."""
    from sklearn.decomposition import PCA

    source = random_multigrain(num_classes=5)
    with torch.no_grad():  # a non-trivial bias, as a trained head has
        source.classifier.bias.normal_(0, 0.5, generator=torch.Generator().manual_seed(4))
        fit_images = torch.randn(700, 3, 32, 32, generator=torch.Generator().manual_seed(5))
        embeddings = source.forward_head(source.forward_features(fit_images))[0].double()
    # their whitening, from its definition: PCA(whiten=True) on l2n([e, 1]) (reference: sklearn)
    extended = torch.cat([embeddings, torch.ones(len(embeddings), 1, dtype=torch.float64)], 1)
    normalised = torch.nn.functional.normalize(extended, dim=1).numpy()
    pca = PCA(whiten=True).fit(normalised)
    mean = torch.from_numpy(pca.mean_)
    projection = torch.from_numpy(pca.components_.T / pca.explained_variance_**0.5)
    assert projection.shape == (513, 513)
    head = torch.cat([source.classifier.weight, source.classifier.bias[:, None]], 1).double()
    state = source.state_dict()
    state["classifier.weight"] = (head @ torch.linalg.inv(projection).T).float()
    state["classifier.bias"] = (head @ mean).float()
    state["whitening.pca.pca_P"], state["whitening.pca.pca_m"] = projection.float(), mean.float()
    path = tmp_path / "whitened_by_authors.pth"
    torch.save({"model_state": state}, path)
    with caplog.at_level("WARNING", logger="multigrain.models.weight_formats"):
        loaded = load_model(path)
    assert "authors' whitening script" in caplog.text and "constant 1" not in caplog.text
    with torch.no_grad():
        got = loaded.model(images)
        want = source(images)
    torch.testing.assert_close(got[0], want[0], atol=1e-6, rtol=0)
    torch.testing.assert_close(got[1], want[1], atol=2e-3, rtol=1e-3)  # float32 P^-1 round trip
    assert torch.equal(got[1].argmax(dim=1), want[1].argmax(dim=1))
    # one key without the other: refused, naming what is missing
    del state["whitening.pca.pca_m"]
    torch.save({"model_state": state}, tmp_path / "half.pth")
    with pytest.raises(MultiGrainError, match="whitening.pca.pca_m"):
        load_model(tmp_path / "half.pth")


# ---- issue 16, item 8: no message invites loading a file unsafely ----------------------------


class _Payload:
    """Unpickling it would create the file `marker`: proof that code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (open, (str(self.marker), "w"))


def unsafe_files(folder: Path, marker: Path) -> list[Path]:
    """Files that hold Python objects besides tensors: a payload in a torch zip file, in a
    plain pickle, and a whole nn.Module saved with torch.save."""
    zipped, plain, module = folder / "payload.pt", folder / "payload.pkl", folder / "module.pth"
    torch.save({"model_state": {"w": torch.ones(1)}, "extra": _Payload(marker)}, zipped)
    plain.write_bytes(pickle.dumps({"model_state": _Payload(marker)}, protocol=2))
    torch.save(torch.nn.Linear(2, 2), module)
    return [zipped, plain, module]


def test_no_message_suggests_weights_only_false(tmp_path: Path) -> None:
    """torch's own message says re-running with weights_only=False "will likely succeed":
    every loader of torch files answers with a message of its own instead."""
    from conftest import run_main

    from multigrain.models.checkpoint import load_checkpoint, model_from_checkpoint
    from multigrain.search.whitening import Whitening

    marker = tmp_path / "code-ran"
    images = tmp_path / "images"
    images.mkdir()
    torch.manual_seed(0)
    from PIL import Image

    Image.new("RGB", (32, 32), (200, 30, 30)).save(images / "red.png")
    loaders = {
        "load_checkpoint": load_checkpoint,
        "model_from_checkpoint": model_from_checkpoint,
        "load_model": load_model,
        "Whitening.load": Whitening.load,
    }
    for path in unsafe_files(tmp_path, marker):
        messages = []
        for name, loader in loaders.items():
            with pytest.raises(MultiGrainError) as caught:
                loader(path)
            messages.append((name, str(caught.value)))
        for option in ("-c", "--whitening"):
            code, err = run_main("embed", str(images), "-o", str(tmp_path / "out"), option,
                                 str(path), "--workers", "0")  # fmt: skip
            assert code == 2, err
            messages.append((f"embed {option}", err))
        for name, message in messages:
            assert str(path) in message, (name, message)
            assert "refusing to load" in message, (name, message)
            for unsafe in ("weights_only", "False", "likely succeed", "can still be loaded"):
                assert unsafe not in message, (name, message)
    assert not marker.exists()
