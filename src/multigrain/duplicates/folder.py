"""A folder of photos -> duplicate groups, in one call (``multigrain find-duplicates``).

1. list the images; embed them into a cache folder with ``embed``'s own resumable job
   (a rerun, or a run after photos were added, embeds only what is new);
2. exact duplicates by content hash (no decoding);
3. the threshold: calibrated on the folder itself (:mod:`.calibration`) unless given;
4. near-duplicate groups: connected components of the pairs scoring at or above it
   (:func:`multigrain.search.dedup.find_duplicate_groups`), with every pair's score and a
   suggestion of which file to keep (:mod:`.keep`).
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from multigrain.data.images import ImageDecodeError, decode_image
from multigrain.data.listing import list_images
from multigrain.duplicates.calibration import SelfCalibration, calibrate_on_collection
from multigrain.duplicates.exact import exact_groups
from multigrain.duplicates.keep import FileFacts, file_facts, rank_for_keeping
from multigrain.inference.embed import EmbedFailure, embed_collection
from multigrain.inference.fast_trunk import fast_trunk_for
from multigrain.inference.pil_images import embed_pil_images
from multigrain.inference.prepare import PreparedModel
from multigrain.inference.store import load_embeddings
from multigrain.runtime.distributed import DistributedContext
from multigrain.runtime.errors import MultiGrainError
from multigrain.runtime.precision import InferencePrecision, resolve_inference_precision
from multigrain.search.dedup import find_duplicate_groups

logger = logging.getLogger(__name__)


class GroupKind(str, enum.Enum):
    EXACT = "exact"  # every member has the same bytes
    NEAR = "near"  # found by the descriptors


@dataclass(frozen=True)
class PairScore:
    a: str
    b: str
    score: float  # cosine similarity of the two descriptors
    linked: bool  # score >= the threshold (what put them in one group)


@dataclass
class DuplicateGroup:
    kind: GroupKind
    members: list[FileFacts]  # best to keep first
    pairs: list[PairScore]

    @property
    def keep(self) -> str:
        return self.members[0].path


@dataclass
class DuplicateReport:
    folder: str
    num_images: int
    threshold: float
    threshold_source: str  # "calibrated on this folder" or "given"
    calibration: SelfCalibration | None
    model: str
    resolution: int
    exponent: float
    whitened: bool
    groups: list[DuplicateGroup] = field(default_factory=list)
    failures: list[EmbedFailure] = field(default_factory=list)

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
    num_sources: int = 100,
    seed: int = 0,
    progress: bool = True,
) -> DuplicateReport:
    """Exact and near-duplicate groups of the images under `folder` (see the module doc).

    Args:
        prepared: the model and its settings (:func:`multigrain.inference.prepare.prepare_model`).
        cache: the embedding job's folder (created; reused on the next call).
        target_precision: the precision the calibrated threshold must reach on synthetic
            copies of this folder's images; ignored when `threshold` is given.
        threshold: a cosine similarity to use instead of calibrating.
    """
    if threshold is not None and not -1.0 <= threshold <= 1.0:
        raise MultiGrainError(f"--threshold is a cosine similarity in [-1, 1], got {threshold}")
    paths = list_images(folder)
    used = resolve_inference_precision(precision, context.device)
    metadata = prepared.embedding_metadata(used)
    model, whitening = prepared.model, prepared.whitening
    trunk = fast_trunk_for(
        model, used, device=context.device, calibration_paths=paths,
        resolution=metadata.resolution,
    )  # fmt: skip
    apply = whitening.apply if whitening is not None else None
    report = embed_collection(
        model, paths, output_dir=cache, metadata=metadata, context=context, precision=used,
        trunk=trunk, whitening=apply, resume=True, progress=progress,
    )  # fmt: skip
    stored = load_embeddings(cache)
    descriptors = np.asarray(stored.descriptors, dtype=np.float32)
    names = list(stored.paths)
    same_file = exact_groups(names)
    if threshold is None:

        def load_image(row: int) -> Image.Image | None:
            try:
                return decode_image(names[row], longest_side=metadata.resolution)
            except ImageDecodeError:
                return None

        def embed_images(images: Sequence[Image.Image]) -> np.ndarray:
            rows = embed_pil_images(
                model, trunk, images, resolution=metadata.resolution, whitening=apply
            )
            return rows.numpy()

        calibration = calibrate_on_collection(
            descriptors, load_image, embed_images, longest_side=metadata.resolution,
            target_precision=target_precision, num_sources=num_sources, same_file=same_file,
            seed=seed,
        )  # fmt: skip
        chosen, source = calibration.threshold, "calibrated on this folder"
    else:
        calibration, chosen, source = None, float(threshold), "given"
    groups = _groups(descriptors, names, same_file, chosen)
    return DuplicateReport(
        folder=str(folder), num_images=len(names), threshold=chosen, threshold_source=source,
        calibration=calibration, model=metadata.model, resolution=metadata.resolution,
        exponent=metadata.exponent, whitened=metadata.whitened, groups=groups,
        failures=list(report.failures),
    )  # fmt: skip


def _groups(
    descriptors: np.ndarray, names: list[str], same_file: list[list[int]], threshold: float
) -> list[DuplicateGroup]:
    """Groups, largest first; a group is EXACT when all its members share their bytes."""
    if len(names) < 2:
        return []
    row_of = {name: row for row, name in enumerate(names)}
    exact_sets = [frozenset(group) for group in same_file]
    groups = []
    for members in find_duplicate_groups(descriptors, names, threshold=threshold):
        rows = sorted(row_of[m] for m in members)
        kind = GroupKind.EXACT if frozenset(rows) in exact_sets else GroupKind.NEAR
        pairs = []
        for i, a in enumerate(rows):
            for b in rows[i + 1 :]:
                score = float(descriptors[a] @ descriptors[b])
                pairs.append(PairScore(names[a], names[b], round(score, 4), score >= threshold))
        facts = rank_for_keeping([file_facts(names[row]) for row in rows])
        groups.append(DuplicateGroup(kind=kind, members=facts, pairs=pairs))
    # byte-identical files always score 1 (same decode, same forward), but a group found
    # only by hash must not depend on that: add exact groups the descriptors missed
    grouped = {row_of[m.path] for group in groups for m in group.members}
    for rows in same_file:
        if not grouped.intersection(rows):
            facts = rank_for_keeping([file_facts(names[row]) for row in rows])
            pairs = [
                PairScore(names[a], names[b], 1.0, True)
                for i, a in enumerate(rows)
                for b in rows[i + 1 :]
            ]
            groups.append(DuplicateGroup(kind=GroupKind.EXACT, members=facts, pairs=pairs))
    return sorted(groups, key=lambda g: (-len(g.members), g.members[0].path))
