"""Per-image scores of a model on the study's test images, at any resolution and exponent.

Classification: 1 when the classifier's top-1 on the clean image is right, else 0.
Copy retrieval: every test image, augmented with the training recipe (seeded per image),
queries the clean test images; its score is 1/rank of its own clean image, so the mean is
the mAP with one positive (instance retrieval of distorted copies: the paper's Copydays
"strong" task, and what the margin loss trains for: positives are augmentations of the
same image). The trunk runs once per image and resolution; GeM re-pools its maps in fp32
with every exponent p (the fast trunk of the forward path, at the given precision).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from multigrain.data import AugmentationKind, AugmentedDataset, eval_transform, train_transform
from multigrain.data.datasets import LabelledImages
from multigrain.inference.fast_trunk import Trunk, fast_trunk_for
from multigrain.metrics import rank_of_match
from multigrain.models import MultiGrain, gem
from multigrain.runtime.precision import InferencePrecision, resolve_inference_precision
from multigrain.search.classifier_fold import descriptor_classifier
from multigrain.search.whitening import Whitening, WhiteningInput, fit_whitening


@dataclass
class Embeddings:
    """Raw GeM embeddings per exponent: clean (P, N, D) and augmented copies (P, N, D)."""

    clean: Tensor
    augmented: Tensor
    labels: Tensor  # (N,)


@torch.no_grad()
def _pooled(
    model: MultiGrain,
    trunk: Trunk,
    dataset: AugmentedDataset,
    keys: list[tuple[int, int]],
    exponents: Sequence[float],
    batch_size: int,
) -> Tensor:
    """(P, N, D) raw GeM embeddings of dataset items `keys` for each exponent."""
    rows = []
    for start in range(0, len(keys), batch_size):
        images = torch.stack([dataset[key][0] for key in keys[start : start + batch_size]])
        maps = trunk(images).float()
        rows.append(torch.stack([gem(maps, p, model.pool.eps) for p in exponents]))
    return torch.cat(rows, dim=1)


def study_trunk(
    model: MultiGrain, precision: InferencePrecision | str = InferencePrecision.AUTO
) -> Trunk:
    """The model's fast trunk on the CPU at `precision`, auto resolved to a float one: every
    study's scores and curves were made in bf16/fp32, never int8."""
    cpu = torch.device("cpu")
    used = resolve_inference_precision(precision, cpu, float_only=True)
    return fast_trunk_for(model, used, device=cpu)


def embed(
    model: MultiGrain,
    images: LabelledImages,
    *,
    resolution: int,
    exponents: Sequence[float],
    augmented: bool = True,
    precision: InferencePrecision | str = InferencePrecision.AUTO,
    query_seed: int = 0,
    batch_size: int = 100,
    trunk: Trunk | None = None,
) -> Embeddings:
    """Embed `images` clean (eval transform) and, if `augmented`, as augmented copies
    (the FULL training recipe, item i seeded with ``query_seed * 100_003 + i``), through
    `trunk` or, without one, :func:`study_trunk` at `precision`."""
    model.eval()
    if trunk is None:
        trunk = study_trunk(model, precision)
    count = len(images)
    clean_set = AugmentedDataset(images, eval_transform(input_size=resolution))
    clean = _pooled(model, trunk, clean_set, [(i, 0) for i in range(count)], exponents, batch_size)
    copies = torch.empty(0)
    if augmented:
        recipe = train_transform(AugmentationKind.FULL, input_size=resolution)
        keys = [(i, query_seed * 100_003 + i) for i in range(count)]
        copies = _pooled(
            model, trunk, AugmentedDataset(images, recipe), keys, exponents, batch_size
        )
    return Embeddings(clean, copies, torch.as_tensor(list(images.labels)))


@torch.no_grad()
def correct(model: MultiGrain, clean: Tensor, labels: Tensor) -> np.ndarray:
    """(N, D) raw embeddings -> (N,) 1.0 where the classifier's top-1 is the label."""
    return (model.classifier(clean).argmax(dim=1) == labels).double().numpy()


def reciprocal_rank(queries: Tensor, database: Tensor) -> np.ndarray:
    """(N, D) query and (N, D) database descriptors, query i's match is item i -> (N,)
    1/rank of the match under cosine similarity."""
    queries, database = F.normalize(queries.double(), dim=1), F.normalize(database.double(), dim=1)
    ranks = rank_of_match(queries @ database.T, torch.arange(len(queries)))
    return (1.0 / ranks.double()).numpy()


@dataclass
class WhiteningScores:
    """Copy retrieval with the whitened descriptor and top-1 read from that stored vector."""

    reciprocal_rank: np.ndarray  # (N,)
    correct: np.ndarray  # (N,) top-1 of the stored whitened descriptor
    same_prediction: float  # fraction of images whose stored-vector top-1 = the model's


@torch.no_grad()
def whitened_scores(
    model: MultiGrain, fit: Tensor, test: Embeddings, exponent_index: int
) -> WhiteningScores:
    """Fit a PCA whitening on l2n([e, 1]) of the `fit` (M, D) raw embeddings, full dimension,
    with the constant coordinate (what `multigrain whiten` stores), and score the test set."""
    whitening: Whitening = fit_whitening(fit, input=WhiteningInput.UNIT_WITH_ONE, shrinkage=0.1)
    clean, copies = test.clean[exponent_index], test.augmented[exponent_index]
    stored, queries = whitening.apply(clean.double()), whitening.apply(copies.double())
    scores = descriptor_classifier(model.classifier, whitening)(stored.float())
    predicted = scores.argmax(dim=1)
    model_predicted = model.classifier(clean).argmax(dim=1)
    return WhiteningScores(
        reciprocal_rank=reciprocal_rank(queries, stored),
        correct=(predicted == test.labels).double().numpy(),
        same_prediction=float((predicted == model_predicted).double().mean()),
    )
