"""Choosing the test resolution s* and the pooling exponent p* (SPEC §4).

The trunk runs once per image and resolution (feature_maps.py: the fast trunk of the
forward path, maps cached) and only the GeM pooling is redone for each p, either over a
grid (:func:`grid_search`, cross-validation) or by gradient descent on the cross-entropy
with respect to p alone, everything else frozen (:func:`learn_exponent`). Only one
resolution's maps are held at a time. The result and its file: calibration_result.py.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Sequence

import torch
from torch import nn

from multigrain.data.datasets import LabelledImages
from multigrain.inference.calibration_result import CalibrationResult, CalibrationRow
from multigrain.inference.feature_maps import (
    FeatureMaps,
    calibration_trunk,
    extract_feature_maps,
)
from multigrain.metrics import top_k_accuracy
from multigrain.models import MultiGrain
from multigrain.runtime.errors import MultiGrainError
from multigrain.runtime.precision import InferencePrecision

logger = logging.getLogger(__name__)


def grid_search(
    model: MultiGrain,
    images: LabelledImages,
    *,
    resolutions: Sequence[int],
    exponents: Sequence[float],
    indices: Sequence[int] | None = None,
    device: str | torch.device = "cpu",
    precision: InferencePrecision | str = InferencePrecision.FP32,
) -> CalibrationResult:
    """Top-1 for every (s, p) in ``resolutions x exponents``; p* per s is the arg-max.

    The trunk runs once per image and s (see :func:`extract_feature_maps`); each exponent
    only re-pools the cached maps. The model is put in eval mode and moved to ``device``
    (its train/eval mode is restored afterwards).
    """
    if not resolutions or not exponents:
        raise MultiGrainError("grid search needs at least one resolution and one exponent")
    for p in exponents:
        if not p > 0:
            raise MultiGrainError(f"pooling exponents must be > 0, got {p}")
    table: list[CalibrationRow] = []
    num_images = 0
    for s, maps in _maps_per_resolution(model, images, resolutions, indices, device, precision):
        num_images = len(maps)
        with torch.no_grad():
            for p in exponents:
                top1 = top_k_accuracy(maps.logits(model.classifier, float(p)), maps.labels)
                table.append(CalibrationRow(int(s), float(p), top1))
                logger.info("s=%d p=%g top-1 %.4f", s, p, top1)
        del maps  # free this resolution's maps before the next are computed
    return CalibrationResult.from_table(table, method="grid", num_images=num_images)


def learn_exponent(
    model: MultiGrain,
    images: LabelledImages,
    *,
    resolution: int,
    indices: Sequence[int] | None = None,
    initial_p: float | None = None,
    steps: int = 100,
    lr: float = 0.1,
    device: str | torch.device = "cpu",
    precision: InferencePrecision | str = InferencePrecision.FP32,
) -> float:
    """Learn p alone at resolution s by minimising the cross-entropy (SPEC §4).

    The trunk and classifier are frozen (eval mode), so the feature maps are computed once
    and full-batch Adam runs on ``log p`` (which keeps p > 0) over the cached maps:
    ``min_p CE(W gem(x, p) + b, y)``. Returns the p of lowest loss seen (initial included).
    ``initial_p`` defaults to the model's current exponent. The model is moved to
    ``device``; its train/eval mode is restored afterwards.
    """
    with _evaluating(model, device):
        maps = extract_feature_maps(
            model,
            images,
            resolution=resolution,
            indices=indices,
            device=device,
            precision=precision,
        )
        return fit_exponent(
            maps, model.classifier, initial_p=_start(model, initial_p), steps=steps, lr=lr
        )


def fit_exponent(
    maps: FeatureMaps, classifier: nn.Module, *, initial_p: float, steps: int = 100, lr: float = 0.1
) -> float:
    """argmin_p CE(classifier(gem(maps, p)), labels) by Adam on log p; the classifier is frozen.

    Returns the exponent of lowest cross-entropy seen during the ``steps`` updates (the
    initial one included), so the loss never goes up.
    """
    if steps < 1 or lr <= 0:
        raise MultiGrainError(f"steps must be >= 1 and lr > 0, got {steps} and {lr}")
    if not initial_p > 0:
        raise MultiGrainError(f"initial_p must be > 0, got {initial_p}")
    frozen = [(param, param.requires_grad) for param in classifier.parameters()]
    for param, _ in frozen:
        param.requires_grad_(False)
    try:
        log_p = torch.tensor(math.log(initial_p), device=maps.labels.device, requires_grad=True)
        optimizer = torch.optim.Adam([log_p], lr=lr)
        best_p, best_loss, first_loss = initial_p, math.inf, math.nan
        for step in range(steps + 1):
            loss = maps.cross_entropy(classifier, log_p.exp())
            value = float(loss.detach())
            if step == 0:
                first_loss = value
            if value < best_loss:
                best_p, best_loss = float(log_p.detach().exp()), value
            if step == steps:
                break
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    finally:
        for param, requires_grad in frozen:
            param.requires_grad_(requires_grad)
    logger.info(
        "s=%d: p %.3g -> %.3g, cross-entropy %.4f -> %.4f",
        maps.resolution,
        initial_p,
        best_p,
        first_loss,
        best_loss,
    )
    return best_p


def learn_exponents(
    model: MultiGrain,
    images: LabelledImages,
    *,
    resolutions: Sequence[int],
    indices: Sequence[int] | None = None,
    initial_p: float | None = None,
    steps: int = 100,
    lr: float = 0.1,
    device: str | torch.device = "cpu",
    precision: InferencePrecision | str = InferencePrecision.FP32,
) -> CalibrationResult:
    """:func:`learn_exponent` at each s; the table holds the top-1 at the learned p per s."""
    table: list[CalibrationRow] = []
    num_images = 0
    start = _start(model, initial_p)
    for s, maps in _maps_per_resolution(model, images, resolutions, indices, device, precision):
        num_images = len(maps)
        p = fit_exponent(maps, model.classifier, initial_p=start, steps=steps, lr=lr)
        with torch.no_grad():
            top1 = top_k_accuracy(maps.logits(model.classifier, p), maps.labels)
        table.append(CalibrationRow(int(s), p, top1))
        del maps  # free this resolution's maps before the next are computed
    return CalibrationResult.from_table(table, method="learned", num_images=num_images)


def _maps_per_resolution(
    model: MultiGrain,
    images: LabelledImages,
    resolutions: Sequence[int],
    indices: Sequence[int] | None,
    device: str | torch.device,
    precision: InferencePrecision | str,
) -> Iterator[tuple[int, FeatureMaps]]:
    """(s, feature maps at s) for each s, model in eval mode. Callers drop each maps object
    before asking for the next, so one resolution is held at a time."""
    with _evaluating(model, device):
        trunk = calibration_trunk(model, precision, device)  # folded once, used at every s
        for s in resolutions:
            yield (
                s,
                extract_feature_maps(
                    model, images, resolution=s, indices=indices, device=device, trunk=trunk
                ),
            )


class _evaluating:
    """Context: model in eval mode on ``device``; the previous train/eval mode is restored."""

    def __init__(self, model: nn.Module, device: str | torch.device) -> None:
        self.model, self.device, self.was_training = model, device, model.training

    def __enter__(self) -> None:
        self.model.to(self.device).eval()

    def __exit__(self, *exc: object) -> None:
        self.model.train(self.was_training)


def _start(model: MultiGrain, initial_p: float | None) -> float:
    return float(model.pool.p) if initial_p is None else float(initial_p)


__all__ = [
    "CalibrationResult",
    "CalibrationRow",
    "FeatureMaps",
    "extract_feature_maps",
    "fit_exponent",
    "grid_search",
    "learn_exponent",
    "learn_exponents",
]
