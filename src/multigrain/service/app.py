"""HTTP service over one model and one index: embed, classify, search, add, remove.

:func:`create_app` loads the model (at the index's resolution s and exponent p, so queries
are embedded exactly as the indexed images were) and the index once, and returns a FastAPI
app. Design choices:

* Uploads go to ``data_dir/tmp/<uuid>.upload`` and through the batch tools' safe decoder
  (:mod:`multigrain.service.uploads`); added images move to ``data_dir/uploads/<uuid>.<ext>``.
  No client-provided name ever reaches the filesystem.
* Index access is serialised by one lock, and index edits are saved by group commit
  (:mod:`multigrain.service.state`).
* Forwards are batched across concurrent requests (:mod:`multigrain.service.batching`): /embed,
  /classify, /search and /index decode their upload in a worker thread, then await one
  row of a shared forward.
* ``request_timeout`` bounds the time from the endpoint's start (the upload is received by
  then) to the end of the forward; past it the answer is 503 with a Retry-After header. An
  add that times out is never applied: the deadline is checked before the index changes.
* A threshold stored by ``multigrain calibrate-threshold`` (on raw scores) marks each hit
  with ``match``.
* Request bodies announcing more than ``max_upload_bytes`` (plus multipart overhead) are
  refused with 413 before they are read; chunked bodies are checked after reading.
"""

from __future__ import annotations

import contextlib
import hmac
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import torch
from fastapi import Depends, FastAPI, File, Form, Header, HTTPException, Request, UploadFile
from fastapi.responses import FileResponse, JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from multigrain.data.images import ImageDecodeError, thumbnail_jpeg
from multigrain.runtime.errors import MultiGrainError
from multigrain.search.index_store import load_index
from multigrain.service.schemas import Added, ClassScore, Embedding, Health, Hit, top_classes
from multigrain.service.state import Service
from multigrain.service.uploads import decode_http_error, extension_of, store_upload

logger = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).parent / "static"
MULTIPART_OVERHEAD = 64 * 1024  # boundaries, part headers and small form fields
THUMBNAIL_SIDE = 192
MAX_K = 100

# module level: with postponed annotations, FastAPI resolves these names in module globals
ImageField = Annotated[UploadFile, File(description="an image file")]


def create_app(
    *,
    checkpoint: Path | None,
    index_folder: Path,
    data_dir: Path,
    token: str | None,
    max_upload_bytes: int = 20 * 1024 * 1024,
    max_pixels: int = 50_000_000,
    device: str = "cpu",
    max_batch: int = 16,
    batch_wait_s: float = 0.005,
    request_timeout: float | None = None,
) -> FastAPI:
    """Load the model and the index once and return the app (see the module docstring).

    max_batch and batch_wait_s shape the micro-batches; request_timeout (seconds) bounds
    each request's wait for its forward.
    """
    from multigrain.inference.prepare import prepare_model
    from multigrain.search.threshold import load_threshold

    if request_timeout is not None and request_timeout <= 0:
        raise MultiGrainError(f"request timeout must be > 0 seconds, got {request_timeout}")

    # absolute: index_store opens its sqlite file by URI, which a relative path cannot be
    index_folder, data_dir = index_folder.resolve(), data_dir.resolve()
    index = load_index(index_folder)
    whitened = bool(index.metadata.get("whitened"))
    resolution = int(index.metadata.get("resolution", 500))
    exponent = index.metadata.get("exponent")
    torch_device = torch.device(device)
    if checkpoint is None and index.metadata.get("bundle"):
        checkpoint = Path(str(index.metadata["bundle"]))
    loaded = prepare_model(
        checkpoint, resolution=resolution,
        exponent=None if exponent is None else float(exponent),
        use_bundle_whitening=whitened, device=torch_device,
    )  # fmt: skip
    for note in loaded.notes:
        logger.warning("%s", note)
    if whitened and loaded.whitening is None:
        raise MultiGrainError(
            f"the index {index_folder} holds whitened descriptors, but the model has no "
            "whitening at its s and p*: serve the model bundle that embedded it, or build the "
            "index from unwhitened embeddings"
        )
    for sub in ("tmp", "uploads"):
        (data_dir / sub).mkdir(parents=True, exist_ok=True)
    stored = load_threshold(index_folder)
    if stored is not None and stored.background is not None:
        logger.warning("the threshold of %s is on normalised scores: not applied", index_folder)
        stored = None
    service = Service(
        model=loaded.model,
        classes=list(loaded.classes),
        index=index,
        index_folder=index_folder,
        data_dir=data_dir,
        resolution=resolution,
        token=token,
        max_upload_bytes=max_upload_bytes,
        max_pixels=max_pixels,
        device=torch_device,
        request_timeout=request_timeout,
        threshold=stored.threshold if stored is not None else loaded.threshold,
        whitening=loaded.whitening,
        max_batch=max_batch,
        batch_wait_s=batch_wait_s,
    )
    logger.info("serving %d images at s=%d, p=%s", len(index), resolution, exponent)
    return _build_app(service)


def _build_app(service: Service) -> FastAPI:
    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        await service.batcher.close()

    app = FastAPI(
        title="MultiGrain", summary="embed, classify and search images", lifespan=lifespan
    )
    app.state.service = service

    @app.middleware("http")
    async def refuse_large_bodies(request: Request, call_next: Any) -> Any:
        length = request.headers.get("content-length")
        limit = service.max_upload_bytes + MULTIPART_OVERHEAD
        if length is not None and length.isdigit() and int(length) > limit:
            return JSONResponse(
                {"detail": f"upload of {length} bytes is over the limit of {limit} bytes"}, 413
            )
        return await call_next(request)

    def require_token(authorization: Annotated[str | None, Header()] = None) -> None:
        if service.token is None:
            return
        expected = f"Bearer {service.token}".encode()
        if authorization is None or not hmac.compare_digest(authorization.encode(), expected):
            raise HTTPException(
                401,
                "missing or wrong token: send 'Authorization: Bearer <token>'",
                headers={"WWW-Authenticate": "Bearer"},
            )

    @app.get("/", include_in_schema=False)
    def home() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html")

    @app.get("/health")
    def health() -> Health:
        with service.lock:
            return Health(status="ok", images=len(service.index), threshold=service.threshold)

    @app.post("/embed")
    async def embed(image: ImageField) -> Embedding:
        descriptor, _ = await _infer_upload(service, image, _deadline(service))
        return Embedding(dim=descriptor.shape[1], descriptor=descriptor[0].tolist())

    @app.post("/classify")
    async def classify(image: ImageField) -> list[ClassScore]:
        _, logits = await _infer_upload(service, image, _deadline(service))
        return top_classes(logits, service.classes, 5)

    @app.post("/search")
    async def search(image: ImageField, k: Annotated[int, Form(ge=1, le=MAX_K)] = 10) -> list[Hit]:
        descriptor, _ = await _infer_upload(service, image, _deadline(service))
        return await run_in_threadpool(_search_index, service, descriptor, k)

    @app.post("/index", dependencies=[Depends(require_token)])
    async def add(image: ImageField, name: Annotated[str | None, Form()] = None) -> Added:
        # `name` is accepted for clients' bookkeeping and logged, never used as a path
        deadline = _deadline(service)
        stored = await run_in_threadpool(_store_upload, service, image)
        committed = False  # set once the index holds the image: then the file must stay

        def commit(descriptor: np.ndarray, final: Path) -> tuple[int, int]:
            nonlocal committed
            with service.lock:
                ids = service.index.add(descriptor, [str(final)])
                committed = True
                service.edits += 1
                edit, count = service.edits, len(service.index)
            service.persist(edit)
            return int(ids[0]), count

        try:
            descriptor, _ = await _infer_path(service, stored, image, deadline)
            _check_deadline(service, deadline)  # the last point where an add may give up
            final = service.data_dir / "uploads" / f"{stored.stem}{extension_of(stored)}"
            stored.rename(final)
            stored = final
            image_id, count = await run_in_threadpool(commit, descriptor, final)
        except BaseException:
            if not committed:
                stored.unlink(missing_ok=True)
            raise
        logger.info("added %s (%r) as id %d", final.name, name, image_id)
        return Added(id=image_id, path=str(final), images=count)

    @app.delete("/index/{image_id}", dependencies=[Depends(require_token)])
    def remove(image_id: int) -> Health:
        with service.lock:
            rows = np.flatnonzero(service.index.ids == image_id)
            if rows.size == 0:
                raise HTTPException(404, f"no image with id {image_id} in the index")
            path = Path(service.index.paths[int(rows[0])])
            service.index.remove([image_id])
            service.edits += 1
            edit, count = service.edits, len(service.index)
        service.persist(edit)
        if path.parent == service.data_dir / "uploads":  # only files the service itself stored
            path.unlink(missing_ok=True)
        return Health(status="ok", images=count)

    @app.get("/thumb/{image_id}", response_class=Response)
    def thumb(image_id: int) -> Response:
        path = service.path_of(image_id)
        if path is None:
            raise HTTPException(404, f"no image with id {image_id} in the index")
        try:
            jpeg = thumbnail_jpeg(path, THUMBNAIL_SIDE, max_pixels=service.max_pixels)
        except ImageDecodeError as error:
            raise HTTPException(
                410, f"indexed image {image_id} is unreadable: {error.reason}"
            ) from None
        return Response(jpeg, media_type="image/jpeg")

    return app


def _store_upload(service: Service, upload: UploadFile) -> Path:
    return store_upload(upload, service.data_dir / "tmp", service.max_upload_bytes)


def _deadline(service: Service) -> float | None:
    """time.monotonic() by which the request's forward must be done; None: no limit."""
    if service.request_timeout is None:
        return None
    return time.monotonic() + service.request_timeout


def _check_deadline(service: Service, deadline: float | None) -> None:
    if deadline is not None and time.monotonic() >= deadline:
        raise _timeout_error(service)


def _timeout_error(service: Service) -> HTTPException:
    return HTTPException(
        503,
        f"the request took longer than the server's timeout of {service.request_timeout} s: "
        "the server is busy, retry later (or start it with a larger --request-timeout)",
        headers={"Retry-After": "1"},
    )


async def _infer_path(
    service: Service, path: Path, upload: UploadFile, deadline: float | None
) -> tuple[np.ndarray, torch.Tensor]:
    """Decode a stored upload, embed it in a shared batch -> ((1, D), (classes,) logits)."""
    try:
        image = await run_in_threadpool(service.load_input, path)
    except ImageDecodeError as error:
        raise decode_http_error(error, upload) from None
    _check_deadline(service, deadline)
    timeout = None if deadline is None else deadline - time.monotonic()
    try:
        descriptor, logits = await service.batcher.submit(image, timeout=timeout)
    except TimeoutError:
        raise _timeout_error(service) from None
    return descriptor.numpy()[None].astype(np.float32), logits


async def _infer_upload(
    service: Service, upload: UploadFile, deadline: float | None
) -> tuple[np.ndarray, torch.Tensor]:
    """Store, decode and embed an upload, then delete the temporary copy."""
    path = await run_in_threadpool(_store_upload, service, upload)
    try:
        return await _infer_path(service, path, upload, deadline)
    finally:
        path.unlink(missing_ok=True)


def _search_index(service: Service, descriptor: np.ndarray, k: int) -> list[Hit]:
    with service.lock:
        if len(service.index) == 0:
            return []
        result = service.index.search(descriptor, min(k, len(service.index)))
    threshold = service.threshold
    return [
        Hit(
            id=int(i),
            path=p,
            score=float(s),
            match=None if threshold is None else bool(s >= threshold),
        )
        for i, p, s in zip(result.ids[0], result.paths[0], result.scores[0], strict=True)
        if i >= 0
    ]
