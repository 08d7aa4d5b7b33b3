"""One query's way through the service: upload -> file -> image -> a row of a shared forward.

The upload is stored under a server-chosen name and decoded in a worker thread (the event
loop keeps serving meanwhile) once the decode memory budget has room for it
(:mod:`multigrain.service.decode_budget`); the decoded image then waits for a row of the
micro-batcher's next forward. A :class:`Deadline` bounds the time from the endpoint's
start to the end of that forward: past it the request fails with ServiceBusy (503).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from fastapi import UploadFile
from starlette.concurrency import run_in_threadpool

from multigrain.data.images import ImageDecodeError
from multigrain.service.errors import ServiceBusy, upload_error
from multigrain.service.state import Service


@dataclass(frozen=True)
class Deadline:
    """time.monotonic() by which a request's forward must be done; None: no limit."""

    timeout: float | None  # seconds, as configured
    expires: float | None

    @classmethod
    def start(cls, timeout: float | None) -> Deadline:
        return cls(timeout, None if timeout is None else time.monotonic() + timeout)

    def remaining(self) -> float | None:
        return None if self.expires is None else self.expires - time.monotonic()

    def check(self) -> None:
        """Raise ServiceBusy once the deadline has passed."""
        if self.expires is not None and time.monotonic() >= self.expires:
            raise self.error()

    def error(self) -> ServiceBusy:
        return ServiceBusy(
            f"the request took longer than the server's timeout of {self.timeout} s: "
            "the server is busy, retry later (or start it with a larger --request-timeout)"
        )


async def embed_stored(
    service: Service, path: Path, filename: str | None, deadline: Deadline
) -> tuple[np.ndarray, torch.Tensor]:
    """A stored upload -> ((1, d) float32 descriptor, (classes,) logits).

    Raises UploadTooLarge / UnreadableUpload when it cannot be decoded (the message quotes
    the client's `filename`, never the server's path), ServiceBusy past the deadline (while
    it waits for decode memory too).
    """
    try:
        cost = await run_in_threadpool(service.decode_cost, path)
        try:
            async with service.decode_budget.reserve(cost, timeout=deadline.remaining()):
                image = await run_in_threadpool(service.load_input, path)
        except TimeoutError:
            raise deadline.error() from None
    except ImageDecodeError as error:
        raise upload_error(error, filename) from None
    deadline.check()
    try:
        descriptor, logits = await service.batcher.submit(image, timeout=deadline.remaining())
    except TimeoutError:
        raise deadline.error() from None
    return descriptor.numpy()[None].astype(np.float32), logits


async def embed_upload(
    service: Service, upload: UploadFile, deadline: Deadline
) -> tuple[np.ndarray, torch.Tensor]:
    """Store, decode and embed an upload, then delete the temporary copy."""
    path = await run_in_threadpool(service.store_upload, upload)
    try:
        return await embed_stored(service, path, upload.filename, deadline)
    finally:
        path.unlink(missing_ok=True)
