"""A folder of photos -> duplicate groups, in one call (``multigrain find-duplicates``).

1. list the images; embed them into a cache folder with ``embed``'s own resumable job
   (a rerun, or a run after photos were added, embeds only what is new);
2. exact duplicates by content hash (no decoding);
3. pair scores: the neighbourhood score (:mod:`multigrain.search.neighbourhood`) or the
   cosine, for each image and its :data:`CANDIDATES` nearest;
4. the threshold: calibrated on the folder itself (:mod:`.calibration`) unless given;
5. geometric verification (:mod:`.verify`): each image is matched point for point with its
   :data:`~.verify.NEIGHBOURS_VERIFIED` nearest, which links the crops and the copies with
   a caption that the score leaves apart; its count is calibrated on the same synthetic
   copies;
6. near-duplicate groups: connected components of the pairs scoring at or above the
   threshold or verified, with every pair's score and a suggestion of which file to keep
   (:mod:`.keep`).
"""

from __future__ import annotations

import enum
import logging
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import faiss
import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from multigrain.data.images import ImageDecodeError, decode_image
from multigrain.data.listing import list_images
from multigrain.duplicates.calibration import (
    SelfCalibration,
    VerificationCalibration,
    folder_threshold,
    sample_links,
    verification_calibration,
)
from multigrain.duplicates.exact import exact_groups
from multigrain.duplicates.groups import DuplicateGroup, duplicate_groups
from multigrain.duplicates.verify import (
    MIN_INLIERS,
    NEIGHBOURS_VERIFIED,
    VERIFY_SIDE,
    FeatureCache,
    neighbour_pairs,
    verify_pairs,
)
from multigrain.inference.embed import EmbedFailure, embed_collection
from multigrain.inference.fast_trunk import fast_trunk_for, with_trunk
from multigrain.inference.pil_images import embed_pil_images
from multigrain.inference.prepare import PreparedModel
from multigrain.inference.store import embedded_paths, list_shards, load_embeddings, read_shard
from multigrain.runtime.distributed import DistributedContext
from multigrain.runtime.errors import MultiGrainError
from multigrain.runtime.precision import InferencePrecision, resolve_inference_precision
from multigrain.search.descriptors import EmbeddingMetadata
from multigrain.search.neighbourhood import (
    NEIGHBOURS,
    Neighbourhoods,
    collection_neighbourhoods,
)

logger = logging.getLogger(__name__)


class ScoreKind(str, enum.Enum):
    """What a pair is linked by (:mod:`multigrain.search.neighbourhood`)."""

    NEIGHBOURHOOD = "neighbourhood"  # cosine minus what both images score with the rest
    COSINE = "cosine"  # the raw cosine similarity of the two descriptors


#: Candidate partners per image: a pair is scored when one image is among the other's
#: nearest by cosine (a photo with more copies than this still chains to all of them).
CANDIDATES = 32


@dataclass
class DuplicateReport:
    folder: str
    num_images: int
    threshold: float
    threshold_source: str  # "calibrated on this folder" or "given"
    score_kind: ScoreKind
    calibration: SelfCalibration | None
    model: str
    resolution: int
    exponent: float
    whitened: bool
    groups: list[DuplicateGroup] = field(default_factory=list)
    failures: list[EmbedFailure] = field(default_factory=list)
    min_inliers: int | None = None  # the count that verifies a pair (None: not verified)
    verification: VerificationCalibration | None = None

    @property
    def num_duplicates(self) -> int:
        """Files a person could delete: every member but the one to keep."""
        return sum(len(group.members) - 1 for group in self.groups)


def find_duplicates_in_folder(
    folder: str | Path,
    prepared: PreparedModel,
    *,
    cache: Path,
    context: DistributedContext,
    precision: InferencePrecision | str = InferencePrecision.AUTO,
    target_precision: float = 0.9,
    threshold: float | None = None,
    score_kind: ScoreKind = ScoreKind.NEIGHBOURHOOD,
    num_sources: int = 100,
    seed: int = 0,
    verify: bool = True,
    min_inliers: int | None = None,
    progress: bool = True,
) -> DuplicateReport:
    """Exact and near-duplicate groups of the images under `folder` (see the module doc).

    Args:
        prepared: the model and its settings (:func:`multigrain.inference.prepare.prepare_model`).
        cache: the embedding job's folder (created; reused on the next call).
        target_precision: the share of true links the folder's links must reach, as the
            calibration on synthetic copies of its images estimates it; ignored when
            `threshold` is given.
        threshold: a score (of `score_kind`) to use instead of calibrating.
        score_kind: what pairs are linked by: the neighbourhood score (default; the
            threshold is then relative to what each image scores with the rest of the
            folder) or the raw cosine.
        verify: match each image point for point with its nearest (:mod:`.verify`) and
            link the pairs that count enough inliers, whatever their score.
        min_inliers: the count that verifies a pair, instead of calibrating it (with a
            given `threshold`: :data:`~.verify.MIN_INLIERS` unless given).
    """
    if threshold is not None and not -2.0 <= threshold <= 2.0:
        raise MultiGrainError(f"--threshold is a score in [-2, 2], got {threshold}")
    paths = list_images(folder)
    used = resolve_inference_precision(precision, context.device)
    metadata = prepared.embedding_metadata(used)
    model, whitening = prepared.model, prepared.whitening
    trunk = fast_trunk_for(model, used, device=context.device, resolution=metadata.resolution)
    metadata = with_trunk(metadata, trunk)  # int8: a cache of another quantisation is stale
    apply = whitening.apply if whitening is not None else None
    if context.is_main:
        _drop_stale_cache(cache, metadata, paths)
    if context.is_distributed:
        torch.distributed.barrier()  # no rank embeds into a cache being deleted
    report = embed_collection(
        model, paths, output_dir=cache, metadata=metadata, context=context, precision=used,
        trunk=trunk, whitening=apply, resume=True, progress=progress,
    )  # fmt: skip
    stored = load_embeddings(cache)
    names = list(stored.paths)
    if len(names) < 2:
        raise MultiGrainError(
            f"{folder}: fewer than 2 images could be read, so there are no duplicates to find"
        )
    same_file = exact_groups(names)
    # byte-identical files are one image from here on: its first file stands for them all
    copies_of = {group[0]: group for group in same_file}
    extra = {row for group in same_file for row in group[1:]}
    distinct = [row for row in range(len(names)) if row not in extra]
    descriptors = np.ascontiguousarray(np.asarray(stored.descriptors)[distinct], np.float32)
    # one search of the folder against itself serves the neighbourhoods and the candidates
    nearest = faiss.knn(
        descriptors, descriptors, min(CANDIDATES + 1, len(distinct)), faiss.METRIC_INNER_PRODUCT
    )
    hood = collection_neighbourhoods(
        descriptors, knn=nearest,
        neighbours=NEIGHBOURS if score_kind is ScoreKind.NEIGHBOURHOOD else 0,
    )  # fmt: skip
    pairs, scores = candidate_pairs(descriptors, nearest[1], hood)
    side = max(metadata.resolution, VERIFY_SIDE) if verify else metadata.resolution

    def load_image(row: int, longest_side: int = side) -> Image.Image | None:
        try:
            return decode_image(names[distinct[row]], longest_side=longest_side)
        except ImageDecodeError:
            return None

    threads = max(1, torch.get_num_threads())
    features = FeatureCache(lambda row: load_image(row, VERIFY_SIDE), threads=threads)
    matched, found = np.zeros((0, 2), np.int64), np.zeros(0, np.int64)
    if verify:  # before calibrating: the pairs it verifies are copies, not wrong links
        matched = neighbour_pairs(nearest[1], NEIGHBOURS_VERIFIED)
        with tqdm(
            total=len(matched), desc="matching points", unit="pair", disable=not progress
        ) as bar:
            found = verify_pairs(features, matched, threads=threads, progress=bar.update)
    floor = MIN_INLIERS if min_inliers is None else int(min_inliers)
    copies = matched[found >= floor]
    if threshold is None and len(distinct) >= 2:

        def embed_images(images: Sequence[Image.Image]) -> np.ndarray:
            rows = embed_pil_images(
                model, trunk, images, resolution=metadata.resolution, whitening=apply
            )
            return rows.numpy()

        sample = sample_links(
            descriptors, load_image, embed_images, longest_side=metadata.resolution,
            neighbourhoods=hood, num_sources=num_sources, seed=seed,
            features=features if verify else None, known_copies=copies,
        )  # fmt: skip
        calibration = folder_threshold(
            sample, scores, collection_size=len(distinct), target_precision=target_precision,
            seed=seed,
        )  # fmt: skip
        chosen, source = calibration.threshold, "calibrated on this folder"
    else:
        sample, calibration = None, None
        chosen = 1.0 if threshold is None else float(threshold)
        source = "given" if threshold is not None else "nothing to calibrate (one image)"
    linked = pairs[scores >= chosen]
    needed, verification = None, None
    if verify:
        needed = floor
        if sample is not None:
            verification = verification_calibration(sample, chosen, found, min_inliers=min_inliers)
            needed = verification.min_inliers
        linked = np.concatenate([linked, matched[found >= needed]]).reshape(-1, 2)
    counts = {(int(i), int(j)): int(c) for (i, j), c in zip(matched, found, strict=True)}
    files = [[names[r] for r in copies_of.get(row, [row])] for row in distinct]
    groups = duplicate_groups(
        files, descriptors, hood, linked, chosen, inliers=counts, min_inliers=needed
    )
    return DuplicateReport(
        folder=str(folder), num_images=len(names), threshold=chosen, threshold_source=source,
        score_kind=score_kind,
        calibration=calibration, model=metadata.model, resolution=metadata.resolution,
        exponent=metadata.exponent, whitened=metadata.whitened, groups=groups,
        failures=list(report.failures), min_inliers=needed, verification=verification,
    )  # fmt: skip


def _drop_stale_cache(cache: Path, metadata: EmbeddingMetadata, paths: Sequence[Path]) -> None:
    """The cache is ours to manage: descriptors made with other settings (another model or
    whitening, as after an upgrade) or holding images since removed from the folder are
    deleted and the folder embedded again, where ``embed --resume`` would refuse them."""
    shards = list_shards(cache)
    if not shards:
        return
    found = read_shard(shards[0]).metadata
    if not found.matches(metadata):
        reason = (
            f"made with other settings ({found.model}, whitening {found.whitening}"
            f"{f', int8 model {found.int8}' if found.int8 else ''})"
        )
    elif not embedded_paths(cache) <= {str(path) for path in paths}:
        reason = "some of its images are no longer in the folder"
    else:
        return
    logger.warning("%s: %s; embedding the folder again", cache, reason)
    shutil.rmtree(cache)


def candidate_pairs(
    descriptors: np.ndarray, nearest: np.ndarray, hood: Neighbourhoods
) -> tuple[np.ndarray, np.ndarray]:
    """(N, d) distinct images and (N, m) the ids of each one's nearest by cosine (itself
    included) -> ((P, 2) rows i < j, (P,) their scores): every pair where one image is
    among the other's nearest."""
    a = np.repeat(np.arange(len(descriptors)), nearest.shape[1])
    b = nearest.ravel()
    valid = (b >= 0) & (a != b)
    pairs = np.unique(np.stack([np.minimum(a, b), np.maximum(a, b)], axis=1)[valid], axis=0)
    cosine = np.einsum("ij,ij->i", descriptors[pairs[:, 0]], descriptors[pairs[:, 1]])
    return pairs, hood.normalised(pairs[:, 0], pairs[:, 1], cosine)
