"""Files -> batches of same-shape uint8 images at test resolution s, decoded ahead of use.

Decoding runs in DataLoader worker processes (or inline with ``num_workers=0``) and stays
up to ``2 x batch_size`` images ahead, so the next batch is decoded while the model runs
on the current one. Images are resized so that their longest side is s (SPEC §4) and
batched only with others of the same shape; pending images wait in per-shape buckets whose
total is capped (PENDING_BYTES), so memory is bounded whatever the collection's size.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from multigrain.data.images import ImageDecodeError, decode_image
from multigrain.data.resize import resize_longest_side, to_uint8_tensor
from multigrain.runtime.errors import MultiGrainError
from multigrain.runtime.machine import usable_cores

Item = tuple[int, torch.Tensor | None, str]  # (index, (3, H, W) uint8 or None, failure reason)

#: Added to the nice value of decoding workers that share the CPU with the model: the
#: model's threads then win the cores and the workers decode in the gaps (single-threaded
#: phases, shard writes), staying up to 2 batches ahead.
CPU_DECODE_NICENESS = 10

#: Budget of the per-shape buckets of decoded images waiting for a batch (uint8, counted at
#: s x s): about 440 images at s = 224, the floor of 4 batches from s = 420. A collection of
#: many aspect ratios spreads over many buckets (73 shapes among the built-in photos at
#: s = 224); a small budget then sends batches of a few images, a larger one fuller and
#: faster batches (benchmarks/embed_throughput.py measures the pipeline).
PENDING_BYTES = 64 * 2**20


class DecodedImages(Dataset[Item]):
    """Item i -> (i, (3, H, W) uint8 image with max(H, W) == s, or None, reason or '').

    uint8 rather than normalised float32: a quarter of the bytes through worker queues and
    pending buckets; :func:`multigrain.data.resize.normalise` runs on whole batches.
    """

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

    def __getitem__(self, index: int) -> Item:
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
        return index, to_uint8_tensor(resize_longest_side(image, self.resolution)), ""


def _first(items: list[Item]) -> Item:
    return items[0]


class _Niceness:
    """worker_init_fn: raise the worker's nice value by `increment` (picklable)."""

    def __init__(self, increment: int) -> None:
        self.increment = increment

    def __call__(self, worker_id: int) -> None:
        if self.increment:
            os.nice(self.increment)


def default_num_workers(device: torch.device) -> int:
    """Decoding processes when the user gives none.

    CPU: one per core (up to 8), at a lower priority (CPU_DECODE_NICENESS): they take the
    cores the model leaves idle, so they decode while the model waits, and only 2 batches
    ahead whatever their number; none on a single core. On camera photos (progressive JPEGs
    take 100-1000 ms each) one worker left the model waiting: 2 workers on 2 cores took
    ResNet-50 at s = 224 from 11.4 to 17.6 images/s, with the small built-in photos
    unchanged within noise (benchmarks/embed_pipeline.py, docs/benchmarks/embed_pipeline*.json).
    CUDA: the model is rarely the bottleneck there, so up to 8, leaving one core for the
    main process.
    """
    cores = usable_cores()
    if device.type == "cuda":
        return max(1, min(8, cores - 1))
    return min(8, cores) if cores >= 2 else 0


def default_batch_size(device: torch.device) -> int:
    """Images per forward when the user gives none: 16 on the CPU, 64 on CUDA.

    On 2 CPU cores `embed` with ResNet-50 runs as fast at 16 as at 32 at s = 224 (40.4 vs
    40.5 images/s) and 8 % slower at s = 500, with 60 / 510 MiB less peak memory
    (benchmarks/embed_throughput.py, docs/benchmarks/embed_throughput.json); a GPU wants
    larger batches.
    """
    return 64 if device.type == "cuda" else 16


def shape_batches(
    items: Iterator[Item],
    *,
    batch_size: int,
    on_failure: Callable[[int, str], None],
    max_pending: int | None = None,
) -> Iterator[tuple[list[int], torch.Tensor]]:
    """Group decoded images by shape -> (indices, (B, 3, H, W)) batches of one shape.

    A bucket is emitted when it holds `batch_size` images; when all buckets together hold
    `max_pending` images (default 4 x batch_size) the fullest is emitted early. A partial
    bucket goes out as batches of power-of-two sizes (13 -> 8 + 4 + 1): oneDNN builds and
    caches kernels per input shape, batch size included, so arbitrary partial sizes would
    let that cache (and peak memory) grow with the number of images.
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
            yield from _split(chosen, batch_size)
    for chosen in buckets.values():
        yield from _split(chosen, batch_size)


def _split(
    chosen: list[tuple[int, torch.Tensor]], batch_size: int
) -> Iterator[tuple[list[int], torch.Tensor]]:
    """One full batch as it is; a partial one as power-of-two pieces, largest first."""
    start = 0
    while start < len(chosen):
        left = len(chosen) - start
        size = left if left >= batch_size else 1 << (left.bit_length() - 1)
        piece = chosen[start : start + size]
        start += size
        yield [i for i, _ in piece], torch.stack([t for _, t in piece])


def decoded_batches(
    paths: Sequence[Path],
    *,
    resolution: int,
    batch_size: int,
    num_workers: int,
    max_pixels: int,
    on_failure: Callable[[int, str], None],
    adjust: Callable[[int, Image.Image], Image.Image] | None = None,
    device: torch.device | None = None,
) -> Iterator[tuple[list[int], torch.Tensor]]:
    """paths -> (indices into `paths`, (B, 3, H, W) uint8) batches; failures to `on_failure`.

    `device` is where the batches will go: CUDA pins them; on the CPU, workers run at a
    lower priority than the model.
    """
    on_cuda = device is not None and device.type == "cuda"
    loader = DataLoader(
        DecodedImages(paths, resolution, max_pixels, adjust),
        batch_size=1,
        collate_fn=_first,
        num_workers=num_workers,
        # each worker keeps this many images decoded ahead: 2 batches in all
        prefetch_factor=math.ceil(2 * batch_size / num_workers) if num_workers else None,
        pin_memory=on_cuda,
        worker_init_fn=_Niceness(0 if on_cuda else CPU_DECODE_NICENESS),
    )
    pending = max(4 * batch_size, PENDING_BYTES // (3 * resolution * resolution))
    return shape_batches(
        _unwrapped(iter(loader)), batch_size=batch_size, on_failure=on_failure,
        max_pending=pending,
    )  # fmt: skip


def _unwrapped(items: Iterator[Item]) -> Iterator[Item]:
    """`items`, with a MultiGrainError of a worker process raised as it was raised there.

    torch re-raises a worker's exception in this process as the same type with a message
    of its own: "Caught MultiGrainError in DataLoader worker process 0.\nOriginal Traceback
    (most recent call last): ... multigrain.runtime.errors.MultiGrainError: <message>".
    The user gets <message> alone, as when decoding runs in this process.
    """
    try:
        yield from items
    except MultiGrainError as error:
        raise MultiGrainError(worker_message(error)) from None


def worker_message(error: BaseException) -> str:
    """The original message of an exception torch re-raised from a DataLoader worker.

    Returns str(error) itself when it is not such a wrapped exception.
    """
    text = str(error)
    if not text.startswith("Caught ") or "DataLoader worker process" not in text:
        return text
    # the traceback ends with "<module>.<qualified name>: <message>" (format_exception_only)
    kind = type(error)
    for name in (f"{kind.__module__}.{kind.__qualname__}", kind.__qualname__):
        start = text.rfind(f"\n{name}: ")
        if start >= 0:
            return text[start + len(name) + 3 :].strip()
    return text.strip().splitlines()[-1]
