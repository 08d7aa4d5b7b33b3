"""Classify image files at a test resolution s and pooling exponent p (SPEC §4)."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from multigrain.data.images import load_rgb
from multigrain.data.resize import prepare
from multigrain.errors import MultiGrainError
from multigrain.models import MultiGrain

logger = logging.getLogger(__name__)


@dataclass
class Prediction:
    """The top-k classes of one image, best first.

    Attributes:
        path: the image file.
        labels: class names of the top-k.
        indices: class indices of the top-k.
        scores: softmax probabilities of the top-k (descending, sum <= 1).
    """

    path: str
    labels: list[str]
    indices: list[int]
    scores: list[float]


@contextmanager
def pooling_exponent(model: MultiGrain, exponent: float | None) -> Iterator[None]:
    """Context: the model's GeM exponent set to ``exponent`` (None: unchanged), then restored."""
    if exponent is None:
        yield
        return
    previous = model.pool.p.detach().clone()
    model.pool.set_p(exponent)
    try:
        yield
    finally:
        with torch.no_grad():
            model.pool.p.copy_(previous)


def classify_images(
    model: MultiGrain,
    paths: Sequence[str | Path],
    *,
    classes: Sequence[str],
    resolution: int,
    exponent: float | None = None,
    top_k: int = 5,
    device: str | torch.device = "cpu",
) -> list[Prediction]:
    """Top-k predictions for each image, resized to longest side s (aspect kept, no crop).

    ``scores = softmax(logits)[top-k]`` with ``logits = W gem(trunk(image), p) + b``; p is
    ``exponent`` for the call (the model's own exponent when None) and is restored
    afterwards, as is the train/eval mode. Images run one at a time on ``device`` (the
    model is moved there).

    Returns:
        One :class:`Prediction` per path, in order; ``min(top_k, K)`` classes each.
    """
    if len(classes) != model.num_classes:
        raise MultiGrainError(
            f"{len(classes)} class names for a model with {model.num_classes} classes: pass "
            "the class names the model was trained with"
        )
    if top_k < 1:
        raise MultiGrainError(f"top_k must be >= 1, got {top_k}")
    k = min(top_k, model.num_classes)
    was_training = model.training
    model.to(device).eval()
    predictions: list[Prediction] = []
    try:
        with pooling_exponent(model, exponent), torch.no_grad():
            for path in paths:
                image = prepare(load_rgb(path), resolution)[None].to(device)
                _, logits = model(image)
                scores, indices = logits.float().softmax(dim=1)[0].topk(k)
                index_list = [int(i) for i in indices.tolist()]
                predictions.append(
                    Prediction(
                        path=str(path),
                        labels=[str(classes[i]) for i in index_list],
                        indices=index_list,
                        scores=[float(s) for s in scores.tolist()],
                    )
                )
    finally:
        model.train(was_training)
    logger.info("classified %d images at s=%d", len(predictions), resolution)
    return predictions


def imagenet_class_names() -> list[str]:
    """The 1000 ImageNet-1k class names, in label order, from torchvision's bundled metadata.

    Reads ``ResNet50_Weights.IMAGENET1K_V1.meta`` (no weights are downloaded).
    """
    from torchvision.models import ResNet50_Weights

    return list(ResNet50_Weights.IMAGENET1K_V1.meta["categories"])
