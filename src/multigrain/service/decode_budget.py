"""A memory budget for the images the service decodes at the same time.

A 155 KiB PNG can hold 7000 x 7000 pixels; decoded, it takes ~400 MB at the peak (PIL
keeps RGB in 4 bytes a pixel, and the EXIF step makes a copy of it). Sixteen such uploads decoded
at once took a server from 1.0 to 4.5 GiB. The model only ever sees the image at
resolution s, but PNG cannot be decoded reduced (only JPEG can: ``draft``, which
:func:`~multigrain.data.images.decode_image` already uses), and decoding another way would
change the descriptors that ``embed`` stores. So the service bounds what it decodes in
parallel instead:

* :func:`decode_cost` weighs a decode before it starts, from the file's header alone: the
  pixels it will decode (a JPEG's after its draft scale) times the peak resident bytes a
  pixel of that kind costs (:data:`BYTES_PER_PIXEL`, measured; ``tests/test_decode_budget.py``
  checks them against the resident memory of real decodes), plus a fixed allowance; a
  progressive JPEG adds its DCT coefficients, which libjpeg holds for the whole file
  whatever the draft scale (a 24 Mpx one: ~72 MB even when decoded at 1/8);
* :class:`DecodeBudget` lets a decode start only while the costs in flight, its own
  included, stay within the budget; others wait in arrival order (a large image is not
  overtaken forever by small ones). A decode costing more than the whole budget runs
  alone. So the decodes in flight hold at most max(budget, the largest single cost).

The default budget (:func:`default_budget`) is the decode of one RGB image at the pixel
limit: ``max_pixels x 9`` bytes, 429 MiB at the default 50 Mpx. The largest single cost at
that limit is a 16-bit greyscale PNG's, ``50 Mpx x 25`` bytes = 1.2 GiB (run alone).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from multigrain.data.images import decoded_size
from multigrain.data.resize import resized_shape

#: Peak resident bytes per decoded pixel of ``Service.load_input`` (decode, EXIF step, mode
#: conversion to RGB), by PIL mode: measured on 2000-3000 px images under glibc and
#: tcmalloc (the allocator `multigrain` runs under when installed), rounded up.
BYTES_PER_PIXEL: dict[str, int] = {
    "1": 7, "L": 7, "P": 10, "RGB": 9, "RGBA": 13, "LA": 13, "CMYK": 13, "YCbCr": 13,
    "I;16": 25, "I;16L": 25, "I;16B": 25, "I;16N": 25, "I": 29, "F": 21,
}  # fmt: skip
#: Any other mode: as the costliest above.
OTHER_MODES = 29
#: What decoders that do not write into PIL's image directly add per pixel (libjpeg's
#: output buffers, libwebp's whole decoded frame).
FORMAT_EXTRA = {"JPEG": 9, "MPO": 9, "WEBP": 8}
#: Per pixel of the image resized to s: the resized PIL image (4) and its uint8 tensor (3).
OUTPUT_BYTES_PER_PIXEL = 7
#: Per decode, whatever the size: decoder state, small buffers.
FIXED_COST = 4 * 2**20


def decode_cost(path: Path, *, longest_side: int, max_pixels: int | None = None) -> int:
    """Peak bytes of decoding `path` as ``decode_image(path, longest_side=...)`` and resizing
    it to that longest side, as the service does; FIXED_COST for a file over `max_pixels`,
    which decode_image refuses from its header (a bomb must not wait for, nor hold, the
    budget). Raises ImageDecodeError when the header is unreadable.
    """
    size = decoded_size(path, longest_side=longest_side)
    if max_pixels is not None and size.stored_pixels > max_pixels:
        return FIXED_COST
    per_pixel = BYTES_PER_PIXEL.get(size.mode, OTHER_MODES) + FORMAT_EXTRA.get(size.format, 0)
    out_width, out_height = resized_shape(size.width, size.height, longest_side)
    output = out_width * out_height * OUTPUT_BYTES_PER_PIXEL
    # a progressive JPEG: its coefficients, and the file read twice (data.progressive)
    progressive = size.coefficient_bytes + 2 * path.stat().st_size if size.coefficient_bytes else 0
    return size.width * size.height * per_pixel + output + progressive + FIXED_COST


def default_budget(max_pixels: int) -> int:
    """Bytes: the decode of one RGB image at the pixel limit (``max_pixels x 9``)."""
    return max_pixels * BYTES_PER_PIXEL["RGB"]


@dataclass
class BudgetStats:
    """What the budget has seen: the largest total in flight, the decodes that waited."""

    peak_bytes: int = 0
    waited: int = 0


class DecodeBudget:
    """A first-come first-served semaphore weighted in bytes (see the module docstring).

    Used from one event loop: ``async with budget.reserve(cost): <decode in a thread>``.
    """

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"the decode budget must be >= 1 byte, got {capacity}")
        self.capacity = capacity
        self.in_flight = 0
        self.stats = BudgetStats()
        self._waiters: deque[tuple[int, asyncio.Future[None]]] = deque()

    @contextlib.asynccontextmanager
    async def reserve(self, cost: int, *, timeout: float | None = None) -> AsyncIterator[None]:
        """Hold `cost` bytes of the budget for the block (at most the whole budget).

        Raises TimeoutError when the bytes are not free within `timeout` seconds.
        """
        cost = max(1, min(cost, self.capacity))  # more than the budget: it runs alone
        await self._acquire(cost, timeout)
        try:
            yield
        finally:
            self.in_flight -= cost
            self._grant()

    async def _acquire(self, cost: int, timeout: float | None) -> None:
        if not self._waiters and self.in_flight + cost <= self.capacity:
            self._take(cost)
            return
        self.stats.waited += 1
        granted: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        waiter = (cost, granted)
        self._waiters.append(waiter)
        try:
            await asyncio.wait_for(asyncio.shield(granted), timeout)
        except asyncio.TimeoutError:  # not the builtin before Python 3.11
            self._give_up(waiter)
            raise TimeoutError(f"no decode memory free within {timeout:.3f} s") from None
        except BaseException:  # cancelled
            self._give_up(waiter)
            raise

    def _give_up(self, waiter: tuple[int, asyncio.Future[None]]) -> None:
        cost, granted = waiter
        if granted.done() and not granted.cancelled():  # granted just as it gave up
            self.in_flight -= cost
        else:
            granted.cancel()
            self._waiters.remove(waiter)
        self._grant()  # the waiters behind it may fit now

    def _take(self, cost: int) -> None:
        self.in_flight += cost
        self.stats.peak_bytes = max(self.stats.peak_bytes, self.in_flight)

    def _grant(self) -> None:
        """Start the waiters at the head of the queue that fit, in order."""
        while self._waiters:
            cost, granted = self._waiters[0]
            if granted.done():  # cancelled meanwhile
                self._waiters.popleft()
                continue
            if self.in_flight + cost > self.capacity:
                return
            self._waiters.popleft()
            self._take(cost)
            granted.set_result(None)
