"""Images -> descriptors at resolution s and exponent p* (SPEC §4).

Each image is resized so that its longest side is s (aspect kept, no crop). Images are
batched only with others of the same resized shape, so a batched descriptor is the
one-image-at-a-time descriptor up to float round-off. Decoding runs in DataLoader workers;
pending images are held in per-shape buckets whose total is capped, so memory is bounded
by the batch size whatever the collection's size. Results go to self-describing shards
(see embedding_store), unreadable images to a failure list; `resume` skips both.
Under `torchrun`, rank r takes every W-th image of the sorted listing.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from multigrain.data.images import DEFAULT_MAX_PIXELS, ImageDecodeError, decode_image
from multigrain.data.resize import prepare
from multigrain.distributed import DistributedContext
from multigrain.embedding_store import (
    SHARD_FOLDER,
    EmbeddingMetadata,
    check_metadata,
    failures_name,
    iter_shards,
    list_shards,
    merge_shards,
    next_shard_index,
    read_failures,
    shard_name,
    write_shard,
)
from multigrain.errors import MultiGrainError
from multigrain.models import MultiGrain
from multigrain.precision import autocast

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class EmbedFailure:
    path: str
    reason: str


@dataclass
class EmbedReport:
    output_dir: Path
    num_inputs: int  # images given to this process
    num_embedded: int  # embedded by this run (not counting resumed work)
    num_already_done: int
    failures: list[EmbedFailure] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def images_per_second(self) -> float:
        return self.num_embedded / self.seconds if self.seconds > 0 else 0.0


class _DecodedImages(Dataset[tuple[int, torch.Tensor | None, str]]):
    """Item i -> (i, (3, H, W) model input or None, failure reason or '')."""

    def __init__(
        self,
        paths: Sequence[Path],
        resolution: int,
        max_pixels: int,
        adjust: Callable[[int, Image.Image], Image.Image] | None = None,
    ) -> None:
        self.paths = paths
        self.resolution = resolution
        self.max_pixels = max_pixels
        self.adjust = adjust  # e.g. a query crop box: needs the full-resolution decode

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[int, torch.Tensor | None, str]:
        try:
            image = decode_image(
                self.paths[index],
                longest_side=None if self.adjust else self.resolution,
                max_pixels=self.max_pixels,
            )
        except ImageDecodeError as error:
            return index, None, error.reason
        if self.adjust is not None:
            image = self.adjust(index, image)
        return index, prepare(image, self.resolution), ""


def _first(
    items: list[tuple[int, torch.Tensor | None, str]],
) -> tuple[int, torch.Tensor | None, str]:
    return items[0]


def shape_batches(
    items: Iterator[tuple[int, torch.Tensor | None, str]],
    *,
    batch_size: int,
    on_failure: Callable[[int, str], None],
    max_pending: int | None = None,
) -> Iterator[tuple[list[int], torch.Tensor]]:
    """Group decoded images by shape -> (indices, (B, 3, H, W)) batches of one shape.

    A bucket is emitted when it holds `batch_size` images; when all buckets together hold
    `max_pending` images (default 4 x batch_size) the fullest is emitted early.
    """
    limit = max_pending or 4 * batch_size
    buckets: dict[tuple[int, ...], list[tuple[int, torch.Tensor]]] = {}
    pending = 0
    for index, tensor, reason in items:
        if tensor is None:
            on_failure(index, reason)
            continue
        bucket = buckets.setdefault(tuple(tensor.shape), [])
        bucket.append((index, tensor))
        pending += 1
        if len(bucket) >= batch_size or pending >= limit:
            key = (
                tuple(tensor.shape)
                if len(bucket) >= batch_size
                else max(buckets, key=lambda k: len(buckets[k]))
            )
            chosen = buckets.pop(key)
            pending -= len(chosen)
            yield [i for i, _ in chosen], torch.stack([t for _, t in chosen])
    for chosen in buckets.values():
        yield [i for i, _ in chosen], torch.stack([t for _, t in chosen])


@torch.no_grad()
def embed_batch(
    model: MultiGrain,
    images: torch.Tensor,
    *,
    device: torch.device,
    amp_dtype: torch.dtype | None = None,
    whitening: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """(B, 3, H, W) -> (B, D) float32 descriptors: embedding, optional whitening, L2-normalised.

    `whitening` maps raw embeddings (B, D) to L2-normalised whitened descriptors (B, d),
    e.g. `Whitening.apply`.
    """
    images = images.to(device).contiguous(memory_format=torch.channels_last)
    with autocast(device, amp_dtype):
        embedding, _ = model(images)
    embedding = embedding.float()
    if whitening is not None:
        return whitening(embedding)
    return F.normalize(embedding, dim=1)


def embed_collection(
    model: MultiGrain,
    paths: Sequence[Path],
    *,
    output_dir: Path,
    metadata: EmbeddingMetadata,
    context: DistributedContext,
    batch_size: int = 32,
    shard_size: int = 10_000,
    num_workers: int = 0,
    amp_dtype: torch.dtype | None = None,
    whitening: Callable[[torch.Tensor], torch.Tensor] | None = None,
    resume: bool = False,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    progress: bool = True,
) -> EmbedReport:
    """Embed this rank's share of `paths` into `output_dir`; rank 0 then merges all shards.

    The model must already be on `context.device`, in eval mode, with its pool exponent
    set to `metadata.exponent`.
    """
    if batch_size < 1 or shard_size < 1:
        raise MultiGrainError("--batch-size and --shard-size must be >= 1")
    started = time.perf_counter()
    output_dir.mkdir(parents=True, exist_ok=True)
    if list_shards(output_dir) or read_failures(output_dir):
        if not resume:
            raise MultiGrainError(
                f"{output_dir} already holds embeddings: pass --resume to continue that job, "
                "or choose an empty --output folder"
            )
        check_metadata(output_dir, metadata)
    share = [str(p) for p in paths[context.rank :: context.world_size]]
    done: set[str] = set(read_failures(output_dir))
    for shard in iter_shards(output_dir):
        done.update(shard.paths)
    todo = [p for p in share if p not in done]
    report = EmbedReport(output_dir, len(share), 0, len(share) - len(todo))
    if report.num_already_done:
        logger.info("resuming: %d of %d images already done", report.num_already_done, len(share))

    failure_file = open(output_dir / failures_name(context.rank), "a", encoding="utf-8")  # noqa: SIM115
    shard_index = next_shard_index(output_dir, context.rank)
    buffer_paths: list[str] = []
    buffer_rows: list[np.ndarray] = []

    def flush() -> None:
        nonlocal shard_index
        if not buffer_paths:
            return
        target = output_dir / SHARD_FOLDER / shard_name(context.rank, shard_index)
        write_shard(target, np.concatenate(buffer_rows), list(buffer_paths), metadata)
        shard_index += 1
        buffer_paths.clear()
        buffer_rows.clear()

    bar = _progress(len(todo), progress and context.is_main)

    def on_failure(index: int, reason: str) -> None:
        report.failures.append(EmbedFailure(todo[index], reason))
        failure_file.write(f"{todo[index]}\t{reason}\n")
        failure_file.flush()
        logger.warning("skipped %s: %s", todo[index], reason)
        if bar is not None:
            bar.update(1)

    loader = DataLoader(
        _DecodedImages([Path(p) for p in todo], metadata.resolution, max_pixels),
        batch_size=1,
        collate_fn=_first,
        num_workers=num_workers,
        prefetch_factor=4 if num_workers else None,
    )
    try:
        for indices, images in shape_batches(
            iter(loader), batch_size=batch_size, on_failure=on_failure
        ):
            descriptors = embed_batch(
                model, images, device=context.device, amp_dtype=amp_dtype, whitening=whitening
            )
            buffer_rows.append(descriptors.cpu().numpy())
            buffer_paths.extend(todo[i] for i in indices)
            report.num_embedded += len(indices)
            if len(buffer_paths) >= shard_size:
                flush()
            if bar is not None:
                bar.update(len(indices))
        flush()
    finally:
        failure_file.close()
        if bar is not None:
            bar.close()
    _barrier(context)
    if context.is_main:
        merge_shards(output_dir, [str(p) for p in paths], metadata)
    _barrier(context)
    report.seconds = time.perf_counter() - started
    return report


def _barrier(context: DistributedContext) -> None:
    if context.is_distributed:
        torch.distributed.barrier()


def _progress(total: int, enabled: bool) -> Any:
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="embed", unit="img", dynamic_ncols=True, smoothing=0.1)


@torch.no_grad()
def embed_in_memory(
    model: MultiGrain,
    paths: Sequence[Path],
    *,
    resolution: int,
    device: torch.device,
    batch_size: int = 32,
    num_workers: int = 0,
    amp_dtype: torch.dtype | None = None,
    normalise: bool = True,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    adjust: Callable[[int, Image.Image], Image.Image] | None = None,
    progress: bool = False,
) -> tuple[torch.Tensor, list[str], list[EmbedFailure]]:
    """Embed a collection small enough to hold in memory (e.g. a whitening fit set).

    Returns ((N, D) float32 descriptors in the order of `paths` minus failures, their
    paths, the failures). `normalise=False` gives the raw embeddings the classifier reads;
    `adjust(i, image)` changes image i after decoding (crop box, upright rotation).
    """
    loader = DataLoader(
        _DecodedImages(list(paths), resolution, max_pixels, adjust),
        batch_size=1,
        collate_fn=_first,
        num_workers=num_workers,
    )
    failures: list[EmbedFailure] = []
    rows: dict[int, torch.Tensor] = {}
    bar = _progress(len(paths), progress)
    for indices, images in shape_batches(
        iter(loader),
        batch_size=batch_size,
        on_failure=lambda i, reason: failures.append(EmbedFailure(str(paths[i]), reason)),
    ):
        images = images.to(device).contiguous(memory_format=torch.channels_last)
        with autocast(device, amp_dtype):
            embedding, _ = model(images)
        embedding = embedding.float()
        if normalise:
            embedding = F.normalize(embedding, dim=1)
        rows.update(zip(indices, embedding.cpu(), strict=True))
        if bar is not None:
            bar.update(len(indices))
    if bar is not None:
        bar.close()
    order = sorted(rows)
    if not order:
        raise MultiGrainError("none of the images could be read: see the reasons logged above")
    return torch.stack([rows[i] for i in order]), [str(paths[i]) for i in order], failures
