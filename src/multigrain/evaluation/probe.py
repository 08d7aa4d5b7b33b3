"""A quick held-out check of both jobs of an embedding on a labelled collection.

Classification: top-1 of the model's classifier on held-out images (eval transform).
Copies: each held-out image, augmented with the training recipe, is a query against the
clean held-out images; we report recall@1 and mAP (one positive per query, so mAP is the
mean reciprocal rank). Used by the demo and by the tests that check that training works.
The model runs through the fast trunk of THE forward path (inference.fast_trunk).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from multigrain.data import (
    AugmentationKind,
    AugmentedDataset,
    LabelledImages,
    eval_transform,
    train_transform,
)
from multigrain.inference.fast_trunk import Trunk, embed_features, fast_trunk_for
from multigrain.metrics import rank_of_match, single_positive_map, top_k_accuracy
from multigrain.models import MultiGrain
from multigrain.runtime.precision import InferencePrecision


@dataclass(frozen=True)
class ProbeResult:
    num_images: int
    top1: float
    copy_recall_at_1: float
    copy_map: float


@torch.no_grad()
def embed_augmented(
    model: MultiGrain,
    trunk: Trunk,
    dataset: AugmentedDataset,
    keys: list[tuple[int, int]],
    *,
    batch_size: int = 256,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Embed dataset items `keys` ((index, seed) pairs) -> (N, D) L2-normalised, (N, K) logits.

    The items are normalised (3, S, S) float images (the training transforms), so they go
    straight into the fast `trunk` (fast_trunk.fast_trunk_for) and are pooled by
    `embed_features`, as `inference.embed.embed_batch` does after normalising its uint8
    images; the classifier reads the raw embedding.
    """
    embeddings, logits = [], []
    for start in range(0, len(keys), batch_size):
        images = torch.stack([dataset[key][0] for key in keys[start : start + batch_size]])
        embedding = embed_features(model, trunk(images))
        embeddings.append(F.normalize(embedding, dim=1).cpu())
        logits.append(model.classifier(embedding).float().cpu())
    return torch.cat(embeddings), torch.cat(logits)


def probe(
    model: MultiGrain,
    images: LabelledImages,
    *,
    input_size: int,
    num_images: int = 1000,
    augmentation: AugmentationKind = AugmentationKind.FULL,
    seed: int = 0,
    device: torch.device | str = "cpu",
    precision: InferencePrecision | str = InferencePrecision.FP32,
) -> ProbeResult:
    """Classification top-1 and augmented-copy retrieval on the first `num_images` of `images`.

    The model must be on `device`; it is put in eval mode and runs through the fast trunk
    at a float `precision` (fp32 by default: the probe compares checkpoints).
    """
    model.eval()
    trunk = fast_trunk_for(model, precision, device=torch.device(device))
    count = min(num_images, len(images))
    clean = AugmentedDataset(images, eval_transform(input_size=input_size))
    augmented = AugmentedDataset(images, train_transform(augmentation, input_size=input_size))
    database, logits = embed_augmented(model, trunk, clean, [(i, 0) for i in range(count)])
    queries, _ = embed_augmented(
        model, trunk, augmented, [(i, seed * 100_003 + i) for i in range(count)]
    )
    labels = torch.as_tensor([int(images.labels[i]) for i in range(count)])
    ranks = rank_of_match(queries @ database.T, torch.arange(count))
    return ProbeResult(
        num_images=count,
        top1=top_k_accuracy(logits, labels, 1),
        copy_recall_at_1=(ranks == 1).double().mean().item(),
        copy_map=single_positive_map(ranks),
    )
