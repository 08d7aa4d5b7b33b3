"""The service's endpoints, on one APIRouter; the state and the token check come by Depends.

Every endpoint takes the shared :class:`~multigrain.service.state.Service` from
``request.app.state.service`` (:func:`current_service`); index edits also depend on
:func:`require_token` (which :class:`~multigrain.service.guards.RequestGuard` has already
checked, with the Origin, before the body was read). Refusals raise the
:mod:`multigrain.service.errors` class naming their cause, which the app's handler turns
into the status code.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, cast

from fastapi import APIRouter, Depends, File, Form, Header, Request, UploadFile
from fastapi.responses import FileResponse, Response
from starlette.concurrency import run_in_threadpool

from multigrain.data.images import ImageDecodeError
from multigrain.data.thumbnails import thumbnail_jpeg
from multigrain.service.errors import IndexedImageGone, NotInIndex, Unauthorized
from multigrain.service.guards import token_matches
from multigrain.service.queries import Deadline, embed_stored, embed_upload
from multigrain.service.schemas import Added, ClassScore, Embedding, Health, Hit, top_classes
from multigrain.service.state import Service
from multigrain.service.uploads import extension_of

logger = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).parent / "static"
THUMBNAIL_SIDE = 192
MAX_K = 100


def current_service(request: Request) -> Service:
    """The state that create_app attached to the app."""
    return cast(Service, request.app.state.service)


# module level: with postponed annotations, FastAPI resolves these names in module globals
ServiceDep = Annotated[Service, Depends(current_service)]
ImageField = Annotated[UploadFile, File(description="an image file")]


def require_token(
    service: ServiceDep, authorization: Annotated[str | None, Header()] = None
) -> None:
    """Let the request through when the service has no token or it sends the right one."""
    if service.token is not None and not token_matches(authorization, service.token):
        raise Unauthorized("missing or wrong token: send 'Authorization: Bearer <token>'")


router = APIRouter()
# RequestGuard checks the token and the Origin of requests to these before their body
editing = APIRouter(dependencies=[Depends(require_token)])


@router.get("/", include_in_schema=False)
def home() -> FileResponse:
    return FileResponse(STATIC_DIR / "index.html", media_type="text/html")


@router.get("/health")
def health(service: ServiceDep) -> Health:
    with service.lock:
        return Health(status="ok", images=len(service.index), threshold=service.threshold)


@router.post("/embed")
async def embed(image: ImageField, service: ServiceDep) -> Embedding:
    descriptor, _ = await embed_upload(service, image, Deadline.start(service.request_timeout))
    return Embedding(dim=descriptor.shape[1], descriptor=descriptor[0].tolist())


@router.post("/classify")
async def classify(image: ImageField, service: ServiceDep) -> list[ClassScore]:
    _, logits = await embed_upload(service, image, Deadline.start(service.request_timeout))
    return top_classes(logits, service.classes, 5)


@router.post("/search")
async def search(
    image: ImageField, service: ServiceDep, k: Annotated[int, Form(ge=1, le=MAX_K)] = 10
) -> list[Hit]:
    descriptor, _ = await embed_upload(service, image, Deadline.start(service.request_timeout))
    return await run_in_threadpool(service.search, descriptor, k)


@editing.post("/index")
async def add(
    image: ImageField, service: ServiceDep, name: Annotated[str | None, Form()] = None
) -> Added:
    """Embed and index an upload. An add that runs out of time is never applied: the
    deadline is checked for the last time before the index changes."""
    # `name` is accepted for clients' bookkeeping and logged, never used as a path
    deadline = Deadline.start(service.request_timeout)
    stored = await run_in_threadpool(service.store_upload, image)
    try:
        descriptor, _ = await embed_stored(service, stored, image.filename, deadline)
        deadline.check()  # the last point where an add may give up
        final = service.uploads_dir / f"{stored.stem}{extension_of(stored)}"
        stored = stored.rename(final)
    except BaseException:
        stored.unlink(missing_ok=True)
        raise
    # from here the file belongs to the index (add_image deletes it if the index refuses it)
    image_id, count = await run_in_threadpool(service.add_image, descriptor, final)
    logger.info("added %s (%r) as id %d", final.name, name, image_id)
    return Added(id=image_id, path=str(final), images=count)


@editing.delete("/index/{image_id}")
def remove(image_id: int, service: ServiceDep) -> Health:
    return Health(status="ok", images=service.remove_image(image_id))


@router.get("/thumb/{image_id}", response_class=Response)
async def thumb(image_id: int, service: ServiceDep) -> Response:
    """A JPEG thumbnail of an indexed image, decoded within the decode memory budget."""
    path = await run_in_threadpool(service.path_of, image_id)
    if path is None:
        raise NotInIndex(f"no image with id {image_id} in the index")
    try:
        cost = await run_in_threadpool(service.decode_cost, Path(path), THUMBNAIL_SIDE)
        async with service.decode_budget.reserve(cost):
            jpeg = await run_in_threadpool(
                thumbnail_jpeg, path, THUMBNAIL_SIDE, max_pixels=service.max_pixels
            )
    except ImageDecodeError as error:
        raise IndexedImageGone(f"indexed image {image_id} is unreadable: {error.reason}") from None
    return Response(jpeg, media_type="image/jpeg")


router.include_router(editing)
