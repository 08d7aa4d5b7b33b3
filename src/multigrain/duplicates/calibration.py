"""A threshold without labels: calibrated on the user's own collection.

A person with a folder of photos has no labelled copies, so we make some: a seeded sample
of the folder's images goes through the training families of edits at the strength copies
in a photo folder have (:func:`calibration_distortions`: crops, resizing, colour, text,
small rotations, blur, JPEG, ...). Each edited copy, and each sampled original, is
searched against the whole collection; a prediction (query, image, score) is correct only
when the image is the copy's source (or a byte-identical file of it), so the originals
contribute only errors: the folder's own unrelated pairs, which are what would chain
unrelated photos into one group. An image as close to a sampled original as the median
edited copy of it counts as neither (it is a duplicate as far as the model can tell). The
threshold is the lowest score at which the predictions reach the target precision with
95 % confidence (:func:`confident_threshold`), as a precision in the DISC21 sense: of the
links a query makes, that share is right. The run reports what it measured there.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import faiss
import numpy as np
import torch
from PIL import Image
from torch import nn
from torchvision.transforms import v2

from multigrain.data.copy_augment import (
    Bars,
    Frame,
    GaussianBlur,
    JpegReencode,
    LowResolution,
    Overlay,
    RotateCropped,
)
from multigrain.data.resize import resize_longest_side
from multigrain.runtime.errors import MultiGrainError

#: Neighbours kept per synthetic query: every threshold the search could choose lies far
#: above the 64th-best score of an unrelated image.
NEIGHBOURS = 64

#: Fewest synthetic copies in all: 48 correct links of 48 bound precision from below at
#: 0.95 (Wilson, 95 %), so a target of 0.9 is reachable in a folder of any size.
MIN_COPIES = 48

EmbedImages = Callable[[Sequence[Image.Image]], np.ndarray]


@dataclass(frozen=True)
class SelfCalibration:
    """The operating point measured on synthetic copies of the collection itself."""

    threshold: float
    target_precision: float
    estimated_precision: float  # of the synthetic predictions scoring >= threshold
    precision_lower_bound: float  # its 95 % Wilson lower bound, >= target_precision
    estimated_recall: float  # synthetic copies whose source scores >= threshold
    num_sources: int
    copies_per_source: int
    collection_size: int
    seed: int


class Crop(nn.Module):
    """Keep a random window of `low`-`high` of each side (a framing edit)."""

    def __init__(self, low: float, high: float) -> None:
        super().__init__()
        self.low, self.high = low, high

    def forward(self, image: Image.Image) -> Image.Image:
        width, height = image.size
        keep_w = float(torch.empty(()).uniform_(self.low, self.high))
        keep_h = float(torch.empty(()).uniform_(self.low, self.high))
        w, h = max(1, round(width * keep_w)), max(1, round(height * keep_h))
        x = int(torch.randint(0, width - w + 1, ()))
        y = int(torch.randint(0, height - h + 1, ()))
        return image.crop((x, y, x + w, y + h))


def calibration_distortions() -> list[nn.Module]:
    """The training families (:mod:`multigrain.data.copy_augment`) at the strength of the
    copies found in photo folders: crops, resizing, colour and gray, text and bars, small
    rotations, frames, blur and JPEG; each applied with its own probability."""
    return [
        v2.RandomApply([Crop(0.7, 1.0)], p=0.5),
        v2.RandomApply([RotateCropped(10.0)], p=0.15),
        v2.RandomApply([Frame()], p=0.1),
        v2.RandomApply(
            [v2.ColorJitter(brightness=0.4, contrast=0.4, saturation=0.5, hue=0.05)], p=0.5
        ),
        v2.RandomGrayscale(p=0.1),
        v2.RandomApply([v2.RandomChoice([Overlay(), Bars()])], p=0.2),
        v2.RandomApply([GaussianBlur((0.5, 1.5))], p=0.1),
        v2.RandomApply([LowResolution((0.3, 0.8))], p=0.3),
        v2.RandomApply([JpegReencode((20, 90))], p=0.6),
    ]


def synthetic_copies(
    image: Image.Image, *, count: int, longest_side: int, seed: int
) -> list[Image.Image]:
    """`count` edited copies of `image` (resized so its longest side is `longest_side`,
    the size the model sees) through the training distortions, seeded."""
    base = resize_longest_side(image.convert("RGB"), longest_side)
    steps = calibration_distortions()
    copies = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for _ in range(count):
            copy = base
            for step in steps:
                copy = step(copy)
            copies.append(copy)
    return copies


def calibrate_on_collection(
    descriptors: np.ndarray,
    load_image: Callable[[int], Image.Image | None],
    embed_images: EmbedImages,
    *,
    longest_side: int,
    target_precision: float = 0.9,
    num_sources: int = 100,
    copies_per_source: int = 4,
    same_file: Sequence[Sequence[int]] = (),
    seed: int = 0,
) -> SelfCalibration:
    """Choose the threshold at `target_precision` on synthetic copies of the collection.

    Args:
        descriptors: (N, d) L2-normalised descriptors of the collection.
        load_image: row -> the decoded image of that row (None when it cannot be read).
        embed_images: images -> (M, d) descriptors with the collection's model and settings.
        longest_side: the resolution s the descriptors were made at.
        num_sources: images sampled (seeded) to make copies of.
        same_file: groups of rows holding byte-identical files; a copy matching any row of
            its source's group is correct.

    Raises:
        MultiGrainError: fewer than 2 images, or no threshold reaching the target.
    """
    collection = np.ascontiguousarray(descriptors, dtype=np.float32)
    size = len(collection)
    if size < 2:
        raise MultiGrainError("a collection of fewer than 2 images has no duplicates to find")
    if not 0.0 < target_precision < 1.0:
        raise MultiGrainError(f"the target precision must be in (0, 1), got {target_precision}")
    group_of = {row: tuple(group) for group in same_file for row in group}
    rng = np.random.default_rng(seed)
    sources = np.sort(rng.choice(size, size=min(num_sources, size), replace=False))
    # a small folder gets more copies per photo: a confident precision needs enough copies
    copies_per_source = max(copies_per_source, -(-MIN_COPIES // len(sources)))
    k = min(NEIGHBOURS, size)
    predicted, correct, source_scores = [], [], []
    sampled = set(sources.tolist())
    for number, row in enumerate(sources.tolist()):
        image = load_image(row)
        if image is None:
            continue
        copies = synthetic_copies(
            image, count=copies_per_source, longest_side=longest_side, seed=seed + number
        )
        own = list(group_of.get(row, (row,)))
        query = np.ascontiguousarray(embed_images(copies), dtype=np.float32)
        copy_scores = (query @ collection[own].T).max(axis=1)  # each copy vs its source
        source_scores.extend(copy_scores.tolist())
        # An image as close to the original as its typical edited copy is a duplicate of it
        # as far as this model can tell (a resized or re-saved file): neither right nor
        # wrong. (The median, not the closest copy: a copy the edits left almost intact
        # scores ~1 and would make every real duplicate of the photo count as an error.)
        similar = collection @ collection[row]
        related = set(np.flatnonzero(similar >= np.median(copy_scores)).tolist()) | set(own)
        scores, neighbours = faiss.knn(query, collection, k, faiss.METRIC_INNER_PRODUCT)
        for q in range(len(copies)):
            keep = [i for i, j in enumerate(neighbours[q].tolist()) if j >= 0 and j not in related]
            predicted.append(scores[q][keep])
            correct.append(np.zeros(len(keep), dtype=bool))
        predicted.append(copy_scores.astype(np.float32))
        correct.append(np.ones(len(copy_scores), dtype=bool))
        # the folder's own unrelated pairs (a pair of two sampled originals counted once)
        order = np.argsort(-similar)[:k]
        unrelated = [
            j for j in order.tolist() if j not in related and not (j in sampled and j < row)
        ]
        predicted.append(similar[unrelated].astype(np.float32))
        correct.append(np.zeros(len(unrelated), dtype=bool))
    if not source_scores:
        raise MultiGrainError("none of the sampled images could be read to calibrate on")
    score = np.concatenate(predicted)
    positive = np.concatenate(correct)
    threshold = confident_threshold(score, positive, target_precision)
    taken = int(np.count_nonzero(score >= threshold))
    hits = int(np.count_nonzero(positive[score >= threshold]))
    precision = hits / taken
    recall = float(np.mean(np.asarray(source_scores) >= threshold))
    return SelfCalibration(
        threshold=float(threshold),
        target_precision=float(target_precision),
        estimated_precision=round(precision, 4),
        precision_lower_bound=round(float(_wilson_lower(np.float64(hits), np.float64(taken))), 4),
        estimated_recall=round(recall, 4),
        num_sources=len(source_scores) // copies_per_source,
        copies_per_source=copies_per_source,
        collection_size=size,
        seed=seed,
    )


#: z of a one-sided 95 % bound.
Z_95 = 1.645


def _wilson_lower(successes: Any, trials: Any) -> Any:
    """The one-sided 95 % Wilson score lower bound of successes / trials (trials > 0)."""
    p = successes / trials
    z2 = Z_95 * Z_95
    spread = Z_95 * np.sqrt(p * (1 - p) / trials + z2 / (4 * trials * trials))
    return (p + z2 / (2 * trials) - spread) / (1 + z2 / trials)


def confident_threshold(scores: np.ndarray, is_positive: np.ndarray, target: float) -> float:
    """The lowest score t whose accepted predictions (score >= t, ties never split) reach
    precision `target` with 95 % confidence (Wilson lower bound), so that a small folder,
    with few unrelated pairs to learn from, gets a cautious threshold rather than a lucky one.

    Raises:
        MultiGrainError: no threshold is that confident (too few copies or too many
            look-alikes): the message says how far it got.
    """
    order = np.argsort(-scores, kind="stable")
    score, positive = scores[order], is_positive[order]
    ends = np.flatnonzero(np.append(score[1:] != score[:-1], True))
    true_positives = np.cumsum(positive)[ends].astype(np.float64)
    accepted = (ends + 1).astype(np.float64)
    p = true_positives / accepted
    z2 = Z_95 * Z_95
    lower = (
        p + z2 / (2 * accepted) - Z_95 * np.sqrt(p * (1 - p) / accepted + z2 / (4 * accepted**2))
    ) / (1 + z2 / accepted)
    reached = np.flatnonzero(lower >= target)
    if reached.size == 0:
        raise MultiGrainError(
            f"no threshold reaches precision {target} with confidence on this folder (best "
            f"lower bound {lower.max():.2f}): lower --precision, or pass --threshold"
        )
    return float(score[ends[reached[-1]]])
