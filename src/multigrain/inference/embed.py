"""Images -> descriptors at resolution s and exponent p* (SPEC §4): THE forward path.

Each image is resized so that its longest side is s (aspect kept, no crop) and batched
only with others of the same resized shape (data.inference_loading), decoded in worker
processes while the model runs. :func:`embed_batch` runs the trunk that
:func:`fast_trunk_for` builds (fast_trunk.py: batch norm folded, channels-last, bf16 where
the CPU or GPU has it, or int8 through onnxruntime when asked); every caller -- embed,
classify, the service, the Python API -- goes through these two, so a descriptor does not
depend on who computed it. Results go to self-describing shards (see store.py), unreadable
images (and names that are not UTF-8) to a failure list; `resume` skips both. Under
`torchrun`, rank r takes every W-th image of the sorted listing.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image

from multigrain.data.images import DEFAULT_MAX_PIXELS
from multigrain.data.inference_loading import decoded_batches, default_batch_size
from multigrain.data.listing import UNDECODABLE_NAME, is_utf8_name
from multigrain.data.resize import normalise as normalise_images
from multigrain.inference import path_lists, store
from multigrain.inference.embed_defaults import DEFAULT_PRECISION as DEFAULT_PRECISION
from multigrain.inference.embed_defaults import DEFAULT_SHARD_SIZE
from multigrain.inference.embed_job import EmbedFailure as EmbedFailure
from multigrain.inference.embed_job import EmbedReport as EmbedReport
from multigrain.inference.embed_job import FailureLog, ShardWriter, progress_bar
from multigrain.inference.fast_trunk import Trunk, embed_features, fast_trunk_for, with_trunk
from multigrain.inference.store import EmbeddingMetadata
from multigrain.models import MultiGrain
from multigrain.runtime.distributed import DistributedContext
from multigrain.runtime.errors import MultiGrainError
from multigrain.runtime.precision import InferencePrecision

logger = logging.getLogger(__name__)

#: (B, D) raw embeddings -> (B, d) L2-normalised descriptors, e.g. ``Whitening.apply``.
WhiteningFn = Callable[[torch.Tensor], torch.Tensor]


def descriptors_from(embedding: torch.Tensor, whitening: WhiteningFn | None) -> torch.Tensor:
    """(B, D) raw GeM embeddings -> (B, d) unit descriptors: whitened, or L2-normalised."""
    return whitening(embedding) if whitening is not None else F.normalize(embedding, dim=1)


@torch.no_grad()
def embed_batch(
    model: MultiGrain,
    trunk: Trunk,
    images: torch.Tensor,
    *,
    whitening: WhiteningFn | None = None,
    normalise_output: bool = True,
) -> torch.Tensor:
    """(B, 3, H, W) uint8 images -> (B, D) float32 descriptors on the model's device.

    Normalised with the ImageNet statistics, run through `trunk`, GeM-pooled in fp32 with
    the model's exponent, then whitened by `whitening` (raw (B, D) -> L2-normalised (B, d),
    e.g. `Whitening.apply`) or L2-normalised; `normalise_output=False` returns the raw GeM
    embedding that the classifier reads (and ignores `whitening`).
    """
    device = model.pool.p.device
    features = trunk(normalise_images(images.to(device, non_blocking=True)))
    embedding = embed_features(model, features)
    return descriptors_from(embedding, whitening) if normalise_output else embedding


def _work_left(
    output_dir: Path, paths: Sequence[Path], metadata: EmbeddingMetadata,
    context: DistributedContext, resume: bool,
) -> tuple[list[str], EmbedReport]:  # fmt: skip
    """This rank's images not embedded (nor failed) by an earlier run, and the report."""
    output_dir.mkdir(parents=True, exist_ok=True)
    if store.list_shards(output_dir) or store.read_failures(output_dir):
        if not resume:
            raise MultiGrainError(
                f"{output_dir} already holds embeddings: pass --resume to continue that job, "
                "or choose an empty --output folder"
            )
        store.check_metadata(output_dir, metadata)
    share = [str(p) for p in paths[context.rank :: context.world_size]]
    embedded = store.embedded_paths(output_dir)
    store.check_kept(output_dir, embedded, {str(p) for p in paths})  # resume drops no row
    done = embedded | set(store.read_failures(output_dir))
    todo = [p for p in share if p not in done]
    report = EmbedReport(output_dir, len(share), 0, len(share) - len(todo))
    if report.num_already_done:
        logger.info("resuming: %d of %d images already done", report.num_already_done, len(share))
    return todo, report


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
    whitening: WhiteningFn | None = None,
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
    todo, report = _work_left(output_dir, paths, metadata, context, resume)
    # skipped by name, before any decoding: the outputs could not carry their names
    undecodable = [path for path in todo if not is_utf8_name(path)]
    todo = [path for path in todo if is_utf8_name(path)]
    todo_paths = [Path(p) for p in todo]
    writer = ShardWriter(output_dir, metadata, context.rank, shard_size)
    failures_path = output_dir / store.failures_name(context.rank)
    with (
        path_lists.open_failure_list(failures_path) as failure_file,
        progress_bar(len(todo) + len(undecodable), progress and context.is_main) as bar,
    ):
        failures = FailureLog(todo, report, failure_file, bar)
        for path in undecodable:
            failures.record(path, UNDECODABLE_NAME)
        batches = decoded_batches(
            todo_paths, resolution=metadata.resolution, batch_size=batch_size,
            num_workers=num_workers, max_pixels=max_pixels, device=context.device,
            on_failure=failures,
        )  # fmt: skip
        # built once the decoding workers have started (decoded_batches starts them), so
        # that the first images are decoded while the trunk is folded and cast
        if trunk is None and todo:
            trunk = fast_trunk_for(
                model, precision, device=context.device, resolution=metadata.resolution
            )
        if trunk is not None and (recorded := with_trunk(metadata, trunk)) != metadata:
            metadata = writer.metadata = recorded  # int8: its fingerprint, known once quantised
            store.check_metadata(output_dir, metadata)  # resumed: the same quantisation only
        for indices, images in batches:
            assert trunk is not None  # built above whenever there is work to do
            descriptors = embed_batch(model, trunk, images, whitening=whitening)
            writer.add([todo[i] for i in indices], descriptors.cpu().numpy())
            report.num_embedded += len(indices)
            bar.update(len(indices))
        writer.flush()  # not on an exception: a shard holds only complete work
    _barrier(context)
    if context.is_main:
        store.merge_shards(output_dir, [str(p) for p in paths], metadata)
    _barrier(context)
    report.seconds = time.perf_counter() - started
    return report


def _barrier(context: DistributedContext) -> None:
    if context.is_distributed:
        torch.distributed.barrier()


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
    whitening: WhiteningFn | None = None,
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
        trunk = fast_trunk_for(model, precision, device=device, resolution=resolution)
    failures: list[EmbedFailure] = []
    rows: dict[int, torch.Tensor] = {}
    with progress_bar(len(paths), progress) as bar:
        for indices, images in decoded_batches(
            list(paths), resolution=resolution, batch_size=batch_size, num_workers=num_workers,
            max_pixels=max_pixels, adjust=adjust, device=device,
            on_failure=lambda i, reason: failures.append(EmbedFailure(str(paths[i]), reason)),
        ):  # fmt: skip
            embedding = embed_batch(
                model, trunk, images, whitening=whitening, normalise_output=normalise
            )
            rows.update(zip(indices, embedding.cpu(), strict=True))
            bar.update(len(indices))
    order = sorted(rows)
    if not order:
        first = f"cannot read image {failures[0].path}: {failures[0].reason}" if failures else ""
        raise MultiGrainError(f"none of the {len(paths)} images could be read; first: {first}")
    return torch.stack([rows[i] for i in order]), [str(paths[i]) for i in order], failures
