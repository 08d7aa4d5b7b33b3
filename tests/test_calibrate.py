"""Choosing s* and p*: cached pooling, grid search, learned exponent, result files, plot."""

from __future__ import annotations

import pytest
import torch

from multigrain.data import ImageFolderImages
from multigrain.data.resize import prepare
from multigrain.evaluation.plots import plot_calibration
from multigrain.inference.calibrate import (
    CalibrationResult,
    CalibrationRow,
    extract_feature_maps,
    fit_exponent,
    grid_search,
    learn_exponent,
    learn_exponents,
)
from multigrain.models import MultiGrain
from multigrain.runtime.errors import MultiGrainError

TRAIN_SIZE = 24
TRAIN_P = 3.0
EXPONENTS = [1.0, 2.0, 3.0, 4.0, 6.0]


@pytest.fixture(scope="module")
def images(three_class_folder):
    return ImageFolderImages(three_class_folder)


@pytest.fixture(scope="module")
def trained(images) -> MultiGrain:
    """A ResNet-18 fitted (train mode, Adam, full batch) on the images at s=24 with p=3."""
    torch.manual_seed(0)
    model = MultiGrain(trunk="resnet18", num_classes=3, small_input=True, pooling_exponent=TRAIN_P)
    x = torch.stack([prepare(images.load(i), TRAIN_SIZE) for i in range(len(images))])
    y = torch.tensor(images.labels)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    for _ in range(8):
        _, logits = model(x)
        loss = torch.nn.functional.cross_entropy(logits, y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


def test_cached_pooling_equals_the_model(images):
    torch.manual_seed(1)
    model = MultiGrain(trunk="resnet18", num_classes=3, small_input=True).eval()
    indices = [5, 0, 30, 17]
    maps = extract_feature_maps(model, images, resolution=40, indices=indices, batch_size=3)
    assert maps.labels.tolist() == [images.labels[i] for i in indices]
    for p in (1.0, 2.5):
        model.pool.set_p(p)
        with torch.no_grad():
            expected = torch.cat([model(prepare(images.load(i), 40)[None])[1] for i in indices])
            got = maps.logits(model.classifier, p)
        torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


def test_grid_search_picks_the_argmax(trained, images, tmp_path):
    result = grid_search(trained, images, resolutions=[TRAIN_SIZE, 48], exponents=EXPONENTS)
    assert result.method == "grid" and result.num_images == len(images)
    assert len(result.table) == 2 * len(EXPONENTS)
    assert not trained.training
    for s in (TRAIN_SIZE, 48):
        rows = [row for row in result.table if row.resolution == s]
        best_top1 = max(row.top1 for row in rows)
        # p* is the smallest exponent reaching the best top-1
        assert result.best[s] == min(row.exponent for row in rows if row.top1 == best_top1)
        assert result.top1(s, result.best[s]) >= result.top1(s, TRAIN_P)
    best_overall = max(result.top1(s, p) for s, p in result.best.items())
    assert result.top1(result.best_resolution, result.best[result.best_resolution]) == best_overall
    assert result.top1(TRAIN_SIZE, TRAIN_P) > 0.9  # the model did learn its training images

    path = result.save(tmp_path / "out" / "calibration.json")
    assert CalibrationResult.load(path) == result
    assert CalibrationResult.from_json(result.to_json()) == result
    png = plot_calibration(result, tmp_path / "out" / "calibration.png")
    assert png.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    assert not list(png.parent.glob(".*.tmp"))


def test_learned_exponent_lowers_the_cross_entropy(trained, images):
    maps = extract_feature_maps(trained, images, resolution=48)
    before = maps.cross_entropy(trained.classifier, TRAIN_P).item()
    p = fit_exponent(maps, trained.classifier, initial_p=TRAIN_P, steps=20, lr=0.2)
    after = maps.cross_entropy(trained.classifier, p).item()
    assert p > 0 and p != TRAIN_P
    assert after < before
    assert all(param.requires_grad for param in trained.classifier.parameters())
    # the model-level entry point gives the same answer
    assert learn_exponent(
        trained, images, resolution=48, initial_p=TRAIN_P, steps=20, lr=0.2
    ) == pytest.approx(p, rel=1e-4)


def test_learn_exponents_result(trained, images):
    result = learn_exponents(
        trained, images, resolutions=[TRAIN_SIZE, 48], indices=range(0, 36, 2), steps=5
    )
    assert result.method == "learned" and result.num_images == 18
    assert [row.resolution for row in result.table] == [TRAIN_SIZE, 48]
    for row in result.table:
        assert row.exponent > 0 and result.best[row.resolution] == row.exponent


def test_tie_rules_and_errors(images):
    table = [
        CalibrationRow(100, 3.0, 0.5),
        CalibrationRow(100, 2.0, 0.5),
        CalibrationRow(200, 4.0, 0.5),
        CalibrationRow(200, 5.0, 0.4),
    ]
    result = CalibrationResult.from_table(table, method="grid", num_images=2)
    assert result.best == {100: 2.0, 200: 4.0}
    assert result.best_resolution == 100
    with pytest.raises(MultiGrainError, match="not in the calibration table"):
        result.top1(100, 7.0)
    with pytest.raises(MultiGrainError, match="not a calibration result"):
        CalibrationResult.from_json('{"table": 3}')
    model = MultiGrain(trunk="resnet18", num_classes=3, small_input=True)
    with pytest.raises(MultiGrainError, match="> 0"):
        grid_search(model, images, resolutions=[32], exponents=[0.0])
    with pytest.raises(MultiGrainError, match="out of range"):
        grid_search(model, images, resolutions=[32], exponents=[1.0], indices=[999])
