"""Classify image files at a test resolution s and pooling exponent p (SPEC §4).

The classifier reads the raw GeM embedding of the one forward path
(:func:`multigrain.inference.embed.embed_in_memory`, ``normalise=False``): the same
trunk, pooling and round-off as ``embed`` and the service.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from multigrain.inference.embed import embed_in_memory
from multigrain.inference.fast_trunk import Trunk
from multigrain.models import MultiGrain
from multigrain.runtime.errors import MultiGrainError
from multigrain.runtime.precision import InferencePrecision

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
    precision: InferencePrecision | str = InferencePrecision.FP32,
    trunk: Trunk | None = None,
    batch_size: int = 32,
    num_workers: int = 0,
) -> list[Prediction]:
    """Top-k predictions for each image, resized to longest side s (aspect kept, no crop).

    ``scores = softmax(logits)[top-k]`` with ``logits = W gem(trunk(image), p) + b``; p is
    ``exponent`` for the call (the model's own exponent when None) and is restored
    afterwards, as is the train/eval mode. The trunk runs at `precision` through the fast
    inference path (images of one shape batched, see multigrain.inference.embed), or is
    `trunk` when given (``fast_trunk_for(model, ...)``, reused across calls); pooling and
    the classifier run in fp32. The model is moved to ``device``.

    Returns:
        One :class:`Prediction` per path, in order; ``min(top_k, K)`` classes each.

    Raises:
        MultiGrainError: an image cannot be read (the first one is named).
    """
    if len(classes) != model.num_classes:
        raise MultiGrainError(
            f"{len(classes)} class names for a model with {model.num_classes} classes: pass "
            "the class names the model was trained with"
        )
    if top_k < 1:
        raise MultiGrainError(f"top_k must be >= 1, got {top_k}")
    k = min(top_k, model.num_classes)
    device = torch.device(device)
    was_training = model.training
    model.to(device).eval()
    try:
        with pooling_exponent(model, exponent), torch.no_grad():
            embeddings, kept, failures = embed_in_memory(
                model, [Path(p) for p in paths], resolution=resolution, device=device,
                batch_size=batch_size, num_workers=num_workers, precision=precision,
                trunk=trunk, normalise=False,
            )  # fmt: skip
            if failures:
                raise MultiGrainError(f"cannot read image {failures[0].path}: {failures[0].reason}")
            logits = model.classifier(embeddings.to(device)).float().cpu()
    finally:
        model.train(was_training)
    scores, indices = logits.softmax(dim=1).topk(k, dim=1)
    predictions = []
    for path, row_scores, row_indices in zip(kept, scores.tolist(), indices.tolist(), strict=True):
        index_list = [int(i) for i in row_indices]
        predictions.append(
            Prediction(
                path=path,
                labels=[str(classes[i]) for i in index_list],
                indices=index_list,
                scores=[float(value) for value in row_scores],
            )
        )
    logger.info("classified %d images at s=%d", len(predictions), resolution)
    return predictions


def imagenet_class_names() -> list[str]:
    """The 1000 ImageNet-1k class names, in label order, from torchvision's bundled metadata.

    Reads ``ResNet50_Weights.IMAGENET1K_V1.meta`` (no weights are downloaded).
    """
    from torchvision.models import ResNet50_Weights

    return list(ResNet50_Weights.IMAGENET1K_V1.meta["categories"])
