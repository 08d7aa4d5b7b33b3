"""Micro-batching: concurrent requests share one model forward.

Each request puts its prepared image, a (C, H, W) tensor, on an asyncio queue and awaits a
future. One worker task takes the first waiting image, lets others gather for `max_wait_s`
(unless `max_batch` are already waiting), and runs one forward per distinct image shape --
the service keeps each image's aspect ratio, and padding would change what GeM pools --
in a single worker thread, so the event loop keeps accepting requests meanwhile and images
that arrive during a forward form the next batch.

Batching does not change answers beyond float rounding: the model is in eval mode, where
every row of a batch is computed independently (BatchNorm uses its running statistics).
A request that gave up (its await was cancelled by a timeout) is dropped before the forward.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch

logger = logging.getLogger(__name__)

# (B, C, H, W) -> tensors whose first dimension is B (e.g. embeddings and logits)
BatchForward = Callable[[torch.Tensor], Sequence[torch.Tensor]]


@dataclass
class BatchStats:
    """Counters since start: forwards run, images embedded, largest forward."""

    forwards: int = 0
    images: int = 0
    largest_batch: int = 0
    dropped: int = 0  # requests that gave up before their forward


@dataclass
class _Pending:
    image: torch.Tensor  # (C, H, W)
    future: asyncio.Future[tuple[torch.Tensor, ...]]


class MicroBatcher:
    """Gathers images submitted concurrently into batched forwards (see the module doc)."""

    def __init__(
        self, forward: BatchForward, *, max_batch: int = 16, max_wait_s: float = 0.005
    ) -> None:
        if max_batch < 1 or max_wait_s < 0:
            raise ValueError(f"max_batch must be >= 1 and max_wait_s >= 0, got {max_batch}, "
                             f"{max_wait_s}")  # fmt: skip
        self.forward = forward
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.stats = BatchStats()
        self._queue: asyncio.Queue[_Pending] | None = None
        self._worker: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        # one thread: forwards never overlap, and torch's own threads parallelise each one
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="multigrain-forward")

    async def submit(
        self, image: torch.Tensor, *, timeout: float | None = None
    ) -> tuple[torch.Tensor, ...]:
        """(C, H, W) image -> its rows of the forward's outputs, computed in some batch.

        Raises TimeoutError after `timeout` seconds; the image is then skipped if its batch
        has not started yet.
        """
        self._start()
        assert self._loop is not None and self._queue is not None
        future: asyncio.Future[tuple[torch.Tensor, ...]] = self._loop.create_future()
        self._queue.put_nowait(_Pending(image, future))  # the queue is unbounded
        if timeout is None:
            return await future
        try:
            return await asyncio.wait_for(future, max(timeout, 0.0))
        except asyncio.TimeoutError:  # not the builtin before Python 3.11
            raise TimeoutError(f"no result within {timeout:.3f} s") from None

    async def close(self) -> None:
        """Stop the worker (a later submit starts a new one); waiting requests get an error."""
        if self._worker is not None:
            self._worker.cancel()
            await asyncio.gather(self._worker, return_exceptions=True)
            self._worker = None
        while self._queue is not None and not self._queue.empty():
            pending = self._queue.get_nowait()
            if not pending.future.done():
                pending.future.set_exception(RuntimeError("the service is shutting down"))

    def _start(self) -> None:
        loop = asyncio.get_running_loop()
        if self._worker is not None and self._loop is loop and not self._worker.done():
            return
        # first use, or a new event loop (a restarted server): the queue belongs to one loop
        self._loop, self._queue = loop, asyncio.Queue()
        self._worker = loop.create_task(self._run(), name="multigrain-batcher")

    async def _run(self) -> None:
        assert self._queue is not None and self._loop is not None
        queue, loop = self._queue, self._loop
        while True:
            batch = [await queue.get()]
            if self.max_wait_s > 0 and queue.qsize() < self.max_batch - 1:
                await asyncio.sleep(self.max_wait_s)
            while len(batch) < self.max_batch and not queue.empty():
                batch.append(queue.get_nowait())
            live = [pending for pending in batch if not pending.future.done()]
            self.stats.dropped += len(batch) - len(live)
            groups: dict[tuple[int, ...], list[_Pending]] = {}
            for pending in live:
                groups.setdefault(tuple(pending.image.shape), []).append(pending)
            for group in groups.values():
                try:
                    outputs = await loop.run_in_executor(self._executor, self._forward, group)
                except asyncio.CancelledError:
                    raise
                except Exception as error:  # one bad batch must not stop the worker
                    logger.exception("batched forward of %d images failed", len(group))
                    for pending in group:
                        if not pending.future.done():
                            pending.future.set_exception(error)
                    continue
                for row, pending in enumerate(group):
                    if not pending.future.done():  # it may have timed out meanwhile
                        pending.future.set_result(tuple(output[row] for output in outputs))

    def _forward(self, group: list[_Pending]) -> Sequence[torch.Tensor]:
        outputs = self.forward(torch.stack([pending.image for pending in group]))
        self.stats.forwards += 1
        self.stats.images += len(group)
        self.stats.largest_batch = max(self.stats.largest_batch, len(group))
        return outputs
