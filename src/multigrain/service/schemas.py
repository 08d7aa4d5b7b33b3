"""Request and response bodies of the HTTP service (:mod:`multigrain.service.app`)."""

from __future__ import annotations

import torch
from pydantic import BaseModel


class Health(BaseModel):
    status: str
    images: int
    threshold: float | None = None  # calibrated threshold marking matches, if any


class Embedding(BaseModel):
    dim: int
    descriptor: list[float]


class ClassScore(BaseModel):
    label: str
    index: int
    score: float


class Hit(BaseModel):
    id: int
    path: str
    score: float
    match: bool | None = None  # score >= the calibrated threshold; None without one


class Added(BaseModel):
    id: int
    path: str
    images: int


def top_classes(logits: torch.Tensor, classes: list[str], k: int) -> list[ClassScore]:
    """(num_classes,) logits -> the k most probable classes, softmax probabilities."""
    probabilities = torch.softmax(logits, dim=0)
    scores, indices = probabilities.topk(min(k, probabilities.numel()))
    return [
        ClassScore(label=classes[int(i)], index=int(i), score=float(s))
        for s, i in zip(scores, indices, strict=True)
    ]
