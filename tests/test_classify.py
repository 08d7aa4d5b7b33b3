"""Classifying image files: top-k order and scores, exponent restored, ImageNet names."""

from __future__ import annotations

import socket

import pytest
import torch

from multigrain.data import ImageFolderImages, load_rgb
from multigrain.data.resize import prepare
from multigrain.inference.classify import classify_images, imagenet_class_names
from multigrain.models import MultiGrain
from multigrain.runtime.errors import MultiGrainError


@pytest.fixture(scope="module")
def model() -> MultiGrain:
    torch.manual_seed(0)
    model = MultiGrain(trunk="resnet18", num_classes=6, small_input=True, pooling_exponent=3.0)
    with torch.no_grad():
        model.classifier.weight.normal_(0, 1.0)  # spread the scores
    return model


def test_top_k_matches_sorted_logits(model, image_folder):
    paths = ImageFolderImages(image_folder).paths[:4]
    classes = [f"c{i}" for i in range(6)]
    model.train()
    predictions = classify_images(
        model, paths, classes=classes, resolution=36, exponent=4.0, top_k=3
    )
    assert model.training  # mode restored
    assert float(model.pool.p) == 3.0  # exponent restored
    assert [p.path for p in predictions] == [str(path) for path in paths]

    model.eval()
    model.pool.set_p(4.0)
    for prediction, path in zip(predictions, paths, strict=True):
        with torch.no_grad():
            logits = model(prepare(load_rgb(path), 36)[None])[1][0]
        expected = logits.argsort(descending=True)[:3].tolist()
        assert prediction.indices == expected
        assert prediction.labels == [classes[i] for i in expected]
        probabilities = logits.softmax(dim=0)[expected]
        assert prediction.scores == pytest.approx(probabilities.tolist(), rel=1e-4, abs=1e-7)
        assert prediction.scores == sorted(prediction.scores, reverse=True)
        assert sum(prediction.scores) <= 1.0 + 1e-6
    model.pool.set_p(3.0)


def test_top_k_is_capped_and_exponent_restored_on_error(model, image_folder, tmp_path):
    paths = ImageFolderImages(image_folder).paths[:1]
    [prediction] = classify_images(model, paths, classes=list("abcdef"), resolution=32, top_k=10)
    assert len(prediction.indices) == 6
    assert sum(prediction.scores) == pytest.approx(1.0, abs=1e-5)
    missing = tmp_path / "missing.jpg"
    with pytest.raises(MultiGrainError, match="cannot read image"):
        classify_images(model, [missing], classes=list("abcdef"), resolution=32, exponent=7.0)
    assert float(model.pool.p) == 3.0
    with pytest.raises(MultiGrainError, match="class names"):
        classify_images(model, paths, classes=["a"], resolution=32)


def test_imagenet_class_names_without_network(monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("imagenet_class_names tried to open a network connection")

    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr(socket.socket, "connect", no_network)
    names = imagenet_class_names()
    assert len(names) == 1000
    assert names[0] == "tench" and names[-1] == "toilet tissue"
