"""Copy-detection training distortions and training on extra unlabelled images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from multigrain.data.copy_augment import (
    Frame,
    GaussianBlur,
    JpegReencode,
    LowResolution,
    Overlay,
    RotateCropped,
    copy_distortions,
)
from multigrain.data.datasets import UNLABELLED, ImageFolderImages, WithUnlabelled
from multigrain.data.sources import DatasetKind, open_training_images
from multigrain.losses import JointLoss


def _photo(width: int = 96, height: int = 64, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 255, width, dtype=np.float32)[None, :, None]
    noise = rng.normal(0, 20, (height, width, 3)).astype(np.float32)
    pixels = np.clip(ramp + noise + np.array([0, 40, 80], dtype=np.float32), 0, 255)
    return Image.fromarray(pixels.astype(np.uint8))


@pytest.mark.parametrize(
    "step",
    [
        RotateCropped(40.0),
        Frame(),
        Overlay(),
        GaussianBlur((1.0, 3.0)),
        LowResolution((0.2, 0.4)),
        JpegReencode((8, 20)),
    ],
    ids=lambda step: type(step).__name__,
)
def test_each_distortion_keeps_size_and_changes_pixels(step: torch.nn.Module) -> None:
    image = _photo()
    changed = 0
    for seed in range(6):
        torch.manual_seed(seed)
        output = step(image)
        assert output.size == image.size and output.mode == "RGB"
        changed += int(not np.array_equal(np.asarray(output), np.asarray(image)))
    assert changed >= 5


def test_rotation_crops_the_black_corners_away() -> None:
    white = Image.new("RGB", (80, 60), (255, 255, 255))
    for seed in range(10):
        torch.manual_seed(seed)
        pixels = np.asarray(RotateCropped(40.0)(white))
        # an uncropped rotation would leave black corners; bilinear edges may dim a pixel
        assert pixels.min() > 150, f"seed {seed}: corner pixel {pixels.min()}"


def test_distortions_are_seeded_by_torch() -> None:
    steps = copy_distortions()
    image = _photo()

    def run(seed: int) -> np.ndarray:
        torch.manual_seed(seed)
        out = image
        for step in steps:
            out = step(out)
        return np.asarray(out)

    assert np.array_equal(run(3), run(3))
    assert not np.array_equal(run(3), run(4))
    # strength 0 applies nothing
    torch.manual_seed(0)
    untouched = image
    for step in copy_distortions(strength=0.0):
        untouched = step(untouched)
    assert np.array_equal(np.asarray(untouched), np.asarray(image))


def _folder(root: Path, classes: dict[str, int]) -> None:
    for index, (name, count) in enumerate(classes.items()):
        (root / name).mkdir(parents=True)
        for k in range(count):
            _photo(seed=10 * index + k).save(root / name / f"{k}.jpg")


def test_unlabelled_images_follow_the_labelled_ones(tmp_path: Path) -> None:
    _folder(tmp_path / "train", {"a": 2, "b": 1})
    (tmp_path / "extra" / "deep").mkdir(parents=True)
    for k in range(2):
        _photo(seed=50 + k).save(tmp_path / "extra" / "deep" / f"x{k}.png")
    images = open_training_images(
        DatasetKind.FOLDER, data_root=str(tmp_path / "train"), unlabelled=str(tmp_path / "extra")
    )
    assert isinstance(images, WithUnlabelled)
    assert images.classes == ["a", "b"]
    assert images.labels == [0, 0, 1, UNLABELLED, UNLABELLED]
    assert len(images) == 5
    expected = np.asarray(_photo(seed=51))
    assert np.array_equal(np.asarray(images.load(4)), expected)
    labelled = ImageFolderImages(tmp_path / "train")
    assert np.array_equal(np.asarray(images.load(2)), np.asarray(labelled.load(2)))


def test_joint_loss_ignores_unlabelled_images() -> None:
    generator = torch.Generator().manual_seed(0)
    embeddings = torch.randn(9, 8, generator=generator, requires_grad=True)
    logits = torch.randn(9, 4, generator=generator, requires_grad=True)
    labels = torch.tensor([0, 0, 0, UNLABELLED, UNLABELLED, UNLABELLED, 3, 3, 3])
    ids = torch.arange(9) // 3
    loss = JointLoss(classification_weight=0.5)
    output = loss(embeddings, logits, labels, ids, generator=torch.Generator().manual_seed(1))
    keep = labels != UNLABELLED
    torch.testing.assert_close(output.classification, F.cross_entropy(logits[keep], labels[keep]))

    # a batch of unlabelled images only: zero classification loss, classifier still in the graph
    none = torch.full((9,), UNLABELLED)
    output = loss(embeddings, logits, none, ids, generator=torch.Generator().manual_seed(1))
    assert output.classification.item() == 0.0 and torch.isfinite(output.total)
    output.total.backward()
    assert logits.grad is not None and torch.count_nonzero(logits.grad) == 0
