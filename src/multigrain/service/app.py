"""HTTP service over one model and one index: embed, classify, search, add, remove.

:func:`create_app` loads the model (at the index's resolution s, exponent p and precision,
so queries are embedded exactly as the indexed images were: :mod:`multigrain.service.loading`)
and the index once, and returns a FastAPI app whose routes live in
:mod:`multigrain.service.routes`. Design choices:

* Uploads go to ``data_dir/tmp/<server>/<uuid>.upload`` (:mod:`multigrain.service.scratch`)
  and through the batch tools' safe decoder (:mod:`multigrain.service.uploads`), within a
  memory budget for the decodes in flight (:mod:`multigrain.service.decode_budget`); added
  images move to ``data_dir/uploads/<uuid>.<ext>``. No client-provided name ever reaches
  the filesystem.
* The server holds the index folder's lock while it runs: ``multigrain index add/remove/
  build`` refuse to change the folder under it (:mod:`multigrain.search.index_lock`).
* Queries run the one forward path of ``embed`` (``embed_batch`` on the ``fast_trunk_for``
  trunk: batch norm folded, channels-last, the index's precision).
* Index access is serialised by one lock, and index edits are saved by group commit
  (:mod:`multigrain.service.state`).
* Forwards are batched across concurrent requests (:mod:`multigrain.service.batching`): /embed,
  /classify, /search and /index decode their upload in a worker thread, then await one
  row of a shared forward (:mod:`multigrain.service.queries`).
* ``request_timeout`` bounds the time from the endpoint's start (the upload is received by
  then) to the end of the forward; past it the answer is 503 with a Retry-After header. An
  add that times out is never applied: the deadline is checked before the index changes.
* A threshold stored by ``multigrain calibrate-threshold`` (on raw scores) marks each hit
  with ``match``.
* Request bodies over ``max_upload_bytes`` (plus multipart overhead) are refused with 413:
  before they are read when they announce their length, as soon as the limit is passed
  when they are chunked (:mod:`multigrain.service.body_limit`).
* Before any body is read, the Host header must name this server, and index edits must
  carry the token and come from no other site's page (:mod:`multigrain.service.guards`).
* Refusals are exceptions of :mod:`multigrain.service.errors`, whose type sets the status.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

from fastapi import FastAPI

from multigrain.runtime.precision import InferencePrecision
from multigrain.service.body_limit import BodyLimit
from multigrain.service.errors import install_error_handlers
from multigrain.service.guards import LOOPBACK_HOSTS, RequestGuard
from multigrain.service.loading import open_service
from multigrain.service.routes import editing, router
from multigrain.service.state import Service

__all__ = ["Service", "build_app", "create_app"]

MULTIPART_OVERHEAD = 64 * 1024  # boundaries, part headers and small form fields


def create_app(
    *,
    checkpoint: Path | None,
    index_folder: Path,
    data_dir: Path,
    token: str | None,
    max_upload_bytes: int = 20 * 1024 * 1024,
    max_pixels: int = 50_000_000,
    device: str = "cpu",
    precision: InferencePrecision | str | None = None,
    max_batch: int = 16,
    batch_wait_s: float = 0.005,
    request_timeout: float | None = None,
    decode_memory_bytes: int | None = None,
    allowed_hosts: Sequence[str] = LOOPBACK_HOSTS,
) -> FastAPI:
    """Load the model and the index once and return the app (see the module docstring).

    max_batch and batch_wait_s shape the micro-batches; request_timeout (seconds) bounds
    each request's wait for its forward; precision None runs the index's precision;
    decode_memory_bytes bounds the decodes in flight (None: one RGB image at max_pixels);
    allowed_hosts are the Host header names answered ('*' any). The index folder stays
    locked until the app's lifespan ends.
    """
    service = open_service(
        checkpoint=checkpoint, index_folder=index_folder, data_dir=data_dir, token=token,
        max_upload_bytes=max_upload_bytes, max_pixels=max_pixels, device=device,
        precision=precision, max_batch=max_batch, batch_wait_s=batch_wait_s,
        request_timeout=request_timeout, decode_memory_bytes=decode_memory_bytes,
    )  # fmt: skip
    return build_app(service, allowed_hosts=allowed_hosts)


def build_app(service: Service, *, allowed_hosts: Sequence[str] = LOOPBACK_HOSTS) -> FastAPI:
    """The FastAPI app serving `service`: routes, error handlers, the request guards."""
    app = FastAPI(
        title="MultiGrain", summary="embed, classify and search images", lifespan=_lifespan
    )
    app.state.service = service
    install_error_handlers(app)
    # the last one added runs first: Host, Origin and token before any byte of the body
    app.add_middleware(BodyLimit, limit=service.max_upload_bytes + MULTIPART_OVERHEAD)
    app.add_middleware(
        RequestGuard, allowed_hosts=allowed_hosts, token=service.token,
        editing_routes=editing.routes,
    )  # fmt: skip
    app.include_router(router)
    return app


@contextlib.asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    yield
    service: Service = app.state.service
    await service.batcher.close()
    service.close()  # frees the index folder: serve one app once
