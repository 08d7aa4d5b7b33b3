"""Score copy detection on a held-out copy set: pHash, PDQ and MultiGrain descriptors.

Every method gives a (queries x originals) similarity matrix; :func:`score_similarities`
turns it into the figures a user compares: mAP (one true original per query, so AP is
the reciprocal rank of the true original), µAP over every (query, original) pair scored
together (ISC 2021's headline figure), recall at 90 % precision and the score threshold
that reaches it, and the mAP of each distortion family.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import imagehash
import numpy as np
import torch
from PIL import Image, ImageOps

from multigrain.data.corpus.distortions import HeldoutFamily
from multigrain.data.corpus.heldout import CopySet
from multigrain.data.images import decode_image
from multigrain.inference.embed import embed_in_memory
from multigrain.metrics import micro_average_precision, recall_at_precision
from multigrain.models import MultiGrain
from multigrain.runtime.errors import MultiGrainError
from multigrain.runtime.precision import resolve_inference_precision
from multigrain.search.whitening import Whitening

PHASH_SIZE = 16  # 16 x 16 = 256 bits


@dataclass(frozen=True)
class CopyScores:
    """Copy-detection figures of one method on one copy set."""

    method: str
    num_queries: int
    map: float
    micro_ap: float
    recall_at_90: float
    threshold_at_90: float  # nan when 90 % precision is never reached
    family_map: dict[str, float] = field(default_factory=dict)

    @property
    def family_mean(self) -> float:
        """Mean over families of the family mAP (each family weighs the same)."""
        return float(np.mean(list(self.family_map.values()))) if self.family_map else float("nan")


def score_similarities(method: str, similarity: np.ndarray, copies: CopySet) -> CopyScores:
    """similarity (Q, R), row q against every original -> :class:`CopyScores`.

    Ties count against the method: the true original's rank is 1 + the number of
    originals scoring at least as high as it, other than itself.
    """
    similarity = np.asarray(similarity, dtype=np.float64)
    expected = (len(copies.queries), len(copies.originals))
    if similarity.shape != expected:
        raise MultiGrainError(f"similarity is {similarity.shape}, expected {expected}")
    truth = np.asarray(copies.truth)
    true_score = similarity[np.arange(len(truth)), truth]
    ranks = (similarity >= true_score[:, None]).sum(axis=1)  # includes the true original
    reciprocal = 1.0 / ranks
    family_map = {
        family.value: float(reciprocal[[f is family for f in copies.families]].mean())
        for family in HeldoutFamily
        if any(f is family for f in copies.families)
    }
    positive = np.zeros_like(similarity, dtype=bool)
    positive[np.arange(len(truth)), truth] = True
    micro = micro_average_precision(similarity.ravel(), positive.ravel(), len(truth))
    recall, threshold = recall_at_precision(similarity.ravel(), positive.ravel(), len(truth), 0.9)
    return CopyScores(
        method=method,
        num_queries=len(truth),
        map=float(reciprocal.mean()),
        micro_ap=micro,
        recall_at_90=recall,
        threshold_at_90=threshold,
        family_map=family_map,
    )


def precision_recall_at(
    similarity: np.ndarray, copies: CopySet, threshold: float
) -> tuple[float, float]:
    """Accept every (query, original) pair scoring >= threshold -> (precision, recall).

    Precision is nan when nothing is accepted; recall counts every query's true original.
    """
    similarity = np.asarray(similarity, dtype=np.float64)
    accepted = similarity >= threshold
    truth = np.asarray(copies.truth)
    correct = int(accepted[np.arange(len(truth)), truth].sum())
    total = int(accepted.sum())
    precision = correct / total if total else float("nan")
    return precision, correct / max(1, len(truth))


def _hash_matrix(paths: Sequence[Path], hasher: Callable[[Image.Image], np.ndarray]) -> np.ndarray:
    rows = [np.where(hasher(decode_image(path)), 1.0, -1.0) for path in paths]
    matrix = np.stack(rows).astype(np.float32)
    return matrix / np.sqrt(matrix.shape[1])


def _phash(image: Image.Image) -> np.ndarray:
    return imagehash.phash(image, hash_size=PHASH_SIZE).hash.reshape(-1)


def _pdq(image: Image.Image) -> np.ndarray:
    try:
        import pdqhash
    except ImportError as error:
        raise MultiGrainError(
            "the PDQ baseline needs pdqhash: pip install pdqhash (or pip install -e '.[bench]')"
        ) from error
    bits, _quality = pdqhash.compute(np.asarray(image.convert("RGB")))
    return bits.astype(bool)


def phash_similarity(copies: CopySet) -> np.ndarray:
    """Cosine of ±1 pHash codes = 1 - 2 Hamming / bits: (Q, R)."""
    return _hash_matrix(copies.queries, _phash) @ _hash_matrix(copies.originals, _phash).T


def pdq_similarity(copies: CopySet) -> np.ndarray:
    """The same for Meta's PDQ hash (256 bits)."""
    return _hash_matrix(copies.queries, _pdq) @ _hash_matrix(copies.originals, _pdq).T


#: Query regions of the regional option: (left, top, right, bottom) fractions of the image.
QUERY_REGIONS: tuple[tuple[float, float, float, float], ...] = (
    (0.15, 0.15, 0.85, 0.85),
    (0.0, 0.0, 0.65, 0.65),
    (0.35, 0.0, 1.0, 0.65),
    (0.0, 0.35, 0.65, 1.0),
    (0.35, 0.35, 1.0, 1.0),
)


@dataclass(frozen=True)
class QueryOptions:
    """Test-time invariances: mirror the query too, and/or describe regions of it.

    The score of a query against an original is the maximum over its views.
    """

    flip: bool = False
    regions: bool = False


def _region(box: tuple[float, float, float, float]) -> Callable[[int, Image.Image], Image.Image]:
    def crop(_index: int, image: Image.Image) -> Image.Image:
        width, height = image.size
        left, top, right, bottom = box
        return image.crop((round(left * width), round(top * height),
                           round(right * width), round(bottom * height)))  # fmt: skip

    return crop


def model_descriptors(
    model: MultiGrain,
    paths: Sequence[Path],
    *,
    resolution: int,
    device: torch.device,
    whitening: Whitening | None = None,
    precision: str = "auto",
    adjust: Callable[[int, Image.Image], Image.Image] | None = None,
) -> np.ndarray:
    """(N, d) unit descriptors at longest side ``resolution``, whitened when given (the
    whitening takes the raw GeM embedding, as ``multigrain embed`` hands it over). `auto`
    is a float precision here, never int8: these scores choose and record a bundle's
    settings and compare models, the same on every machine."""
    transform = whitening.apply if whitening is not None else None
    used = resolve_inference_precision(precision, device, float_only=True)
    descriptors, kept, failures = embed_in_memory(
        model, list(paths), resolution=resolution, device=device,
        precision=used, adjust=adjust, whitening=transform,
    )  # fmt: skip
    if failures:
        raise MultiGrainError(f"could not read {failures[0].path}: {failures[0].reason}")
    return descriptors.numpy()


def model_similarity(
    model: MultiGrain,
    copies: CopySet,
    *,
    resolution: int,
    device: torch.device,
    whitening: Whitening | None = None,
    options: QueryOptions = QueryOptions(),
    precision: str = "auto",
) -> np.ndarray:
    """(Q, R) cosine similarities, max over the query views that ``options`` asks for."""

    def embed(
        paths: Sequence[Path], adjust: Callable[[int, Image.Image], Image.Image] | None = None
    ) -> np.ndarray:
        return model_descriptors(
            model, paths, resolution=resolution, device=device, whitening=whitening,
            precision=precision, adjust=adjust,
        )  # fmt: skip

    originals = embed(copies.originals)
    adjustments: list[Callable[[int, Image.Image], Image.Image] | None] = [None]
    if options.regions:
        adjustments += [_region(box) for box in QUERY_REGIONS]
    views = []
    for adjust in adjustments:
        views.append(embed(copies.queries, adjust))
        if options.flip:

            def mirrored(
                index: int, image: Image.Image, inner: Callable | None = adjust
            ) -> Image.Image:
                return ImageOps.mirror(inner(index, image) if inner else image)

            views.append(embed(copies.queries, mirrored))
    return np.max(np.stack([view @ originals.T for view in views]), axis=0)
