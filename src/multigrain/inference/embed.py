"""Images -> descriptors at resolution s and exponent p* (SPEC §4).

Each image is resized so that its longest side is s (aspect kept, no crop) and batched
only with others of the same resized shape (data.inference_loading), decoded in worker
processes while the model runs. The model runs through the fast inference path
(inference.py: batch norm folded, channels-last, bf16 where the CPU or GPU has it, or int8
through onnxruntime when asked), so a batched descriptor equals the one-image-at-a-time
descriptor up to the precision's round-off. Results go to self-describing shards (see
embedding_store), unreadable images to a failure list; `resume` skips both. Under
`torchrun`, rank r takes every W-th image of the sorted listing.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from multigrain.data.images import DEFAULT_MAX_PIXELS
from multigrain.data.inference_loading import (
    DecodedImages,
    decoded_batches,
    default_batch_size,
)
from multigrain.data.resize import normalise as normalise_images
from multigrain.inference.fast_trunk import Trunk, embed_features, inference_trunk
from multigrain.inference.store import (
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
from multigrain.models import MultiGrain
from multigrain.runtime.distributed import DistributedContext
from multigrain.runtime.errors import MultiGrainError
from multigrain.runtime.precision import InferencePrecision, resolve_inference_precision

logger = logging.getLogger(__name__)

#: Defaults shared by the CLI and benchmarks/embed_throughput.py (what "our default" runs);
#: the batch size is data.inference_loading.default_batch_size(device).
#: Descriptors per shard: 8 MiB of buffer at D = 2048. The buffer (and its copy when a shard
#: is written) is the part of embed's memory that grows with the collection up to this size,
#: so it is kept small; 1,000 shards per million images.
DEFAULT_SHARD_SIZE = 1024
DEFAULT_PRECISION = InferencePrecision.AUTO


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


@torch.no_grad()
def embed_batch(
    model: MultiGrain,
    trunk: Trunk,
    images: torch.Tensor,
    *,
    whitening: Callable[[torch.Tensor], torch.Tensor] | None = None,
    normalise_output: bool = True,
) -> torch.Tensor:
    """(B, 3, H, W) uint8 images -> (B, D) float32 descriptors on the model's device.

    Normalised with the ImageNet statistics, run through `trunk`, GeM-pooled in fp32 with
    the model's exponent, then whitened by `whitening` (raw (B, D) -> L2-normalised (B, d),
    e.g. `Whitening.apply`) or L2-normalised; `normalise_output=False` returns the raw GeM
    embedding that the classifier reads.
    """
    device = model.pool.p.device
    features = trunk(normalise_images(images.to(device, non_blocking=True)))
    embedding = embed_features(model, features)
    if whitening is not None:
        return whitening(embedding)
    return F.normalize(embedding, dim=1) if normalise_output else embedding


def build_trunk(
    model: MultiGrain,
    precision: InferencePrecision | str,
    *,
    device: torch.device,
    calibration_paths: Sequence[Path] = (),
    resolution: int = 224,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    adjust: Callable[[int, Image.Image], Image.Image] | None = None,
    calibration_images: int = 32,
) -> Trunk:
    """The trunk that runs `model` at `precision` on `device` (see inference.py).

    int8 is calibrated on up to `calibration_images` of `calibration_paths`, spread evenly
    over them and decoded at `resolution` exactly as they will be embedded.
    """
    used = resolve_inference_precision(precision, device)
    if used is not InferencePrecision.INT8:
        return inference_trunk(model, precision=used, device=device)
    from multigrain.inference.int8 import int8_trunk

    step = max(1, len(calibration_paths) // calibration_images)
    decoded = DecodedImages(list(calibration_paths), resolution, max_pixels, adjust)
    calibration = []
    for index in range(0, len(calibration_paths), step)[:calibration_images]:
        image = decoded[index][1]
        if image is not None:
            calibration.append(normalise_images(image[None]))
    return int8_trunk(model, calibration)


def embed_collection(
    model: MultiGrain,
    paths: Sequence[Path],
    *,
    output_dir: Path,
    metadata: EmbeddingMetadata,
    context: DistributedContext,
    batch_size: int | None = None,
    shard_size: int = DEFAULT_SHARD_SIZE,
    num_workers: int = 0,
    precision: InferencePrecision | str = InferencePrecision.FP32,
    trunk: Trunk | None = None,
    whitening: Callable[[torch.Tensor], torch.Tensor] | None = None,
    resume: bool = False,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    progress: bool = True,
) -> EmbedReport:
    """Embed this rank's share of `paths` into `output_dir`; rank 0 then merges all shards.

    The model must already be on `context.device`, in eval mode, with its pool exponent
    set to `metadata.exponent`. It runs at `precision` (resolved on the device: record
    `resolve_inference_precision(precision, device).value` in `metadata.precision`), or
    through `trunk` when one is given (e.g. a compiled one; `precision` is then ignored).
    Memory stays bounded whatever the number of images: 2 batches decoded ahead, at most
    64 MiB of decoded images waiting in per-shape buckets (PENDING_BYTES), at most
    `shard_size` descriptors before a shard is written. `batch_size` defaults to
    `default_batch_size(context.device)`.
    """
    if batch_size is None:
        batch_size = default_batch_size(context.device)
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
    todo_paths = [Path(p) for p in todo]
    if trunk is None and todo:
        trunk = build_trunk(
            model, precision, device=context.device, calibration_paths=todo_paths,
            resolution=metadata.resolution, max_pixels=max_pixels,
        )  # fmt: skip

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

    batches = decoded_batches(
        todo_paths, resolution=metadata.resolution, batch_size=batch_size,
        num_workers=num_workers, max_pixels=max_pixels, on_failure=on_failure,
        device=context.device,
    )  # fmt: skip
    try:
        for indices, images in batches:
            assert trunk is not None  # built above whenever there is work to do
            descriptors = embed_batch(model, trunk, images, whitening=whitening)
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
    precision: InferencePrecision | str = InferencePrecision.FP32,
    trunk: Trunk | None = None,
    normalise: bool = True,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    adjust: Callable[[int, Image.Image], Image.Image] | None = None,
    progress: bool = False,
    whitening: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> tuple[torch.Tensor, list[str], list[EmbedFailure]]:
    """Embed a collection small enough to hold in memory (e.g. a whitening fit set).

    Returns ((N, D) float32 descriptors in the order of `paths` minus failures, their
    paths, the failures). `whitening` maps raw (B, D) embeddings to (B, d) descriptors
    as in `embed_batch` (e.g. `Whitening.apply`, as `embed --whitening` applies it);
    `normalise=False` gives the raw embeddings the classifier reads;
    `adjust(i, image)` changes image i after decoding (crop box, upright rotation).
    `precision` and `trunk` as in `embed_collection`; the model must be on `device`.
    """
    if trunk is None:
        trunk = build_trunk(
            model, precision, device=device, calibration_paths=list(paths),
            resolution=resolution, max_pixels=max_pixels, adjust=adjust,
        )  # fmt: skip
    failures: list[EmbedFailure] = []
    rows: dict[int, torch.Tensor] = {}
    bar = _progress(len(paths), progress)
    for indices, images in decoded_batches(
        list(paths), resolution=resolution, batch_size=batch_size, num_workers=num_workers,
        max_pixels=max_pixels, adjust=adjust, device=device,
        on_failure=lambda i, reason: failures.append(EmbedFailure(str(paths[i]), reason)),
    ):  # fmt: skip
        embedding = embed_batch(
            model, trunk, images, whitening=whitening, normalise_output=normalise
        )
        rows.update(zip(indices, embedding.cpu(), strict=True))
        if bar is not None:
            bar.update(len(indices))
    if bar is not None:
        bar.close()
    order = sorted(rows)
    if not order:
        first = f"cannot read image {failures[0].path}: {failures[0].reason}" if failures else ""
        raise MultiGrainError(f"none of the {len(paths)} images could be read; first: {first}")
    return torch.stack([rows[i] for i in order]), [str(paths[i]) for i in order], failures
