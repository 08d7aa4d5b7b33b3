"""HTTP service over one model and one index: embed, classify, search, add, remove.

:func:`create_app` loads the model (at the index's resolution s and exponent p, so queries
are embedded exactly as the indexed images were) and the index once, and returns a FastAPI
app. Design choices:

* Uploads are never decoded from memory: the bytes go to ``data_dir/tmp/<uuid>.upload`` and
  through :func:`multigrain.data.images.decode_image`, so the service applies the same safety
  rules as the batch tools (pixel budget read from the header, EXIF orientation, clear errors).
  Added images move to ``data_dir/uploads/<uuid>.<ext>``, the extension chosen from the
  file's magic bytes. No client-provided name ever reaches the filesystem.
* One ``threading.Lock`` serialises every index access (search, add, remove, save). A Flat
  search over a small index takes microseconds next to the model's forward pass, which runs
  outside the lock, so a read-write lock would buy little.
* Request bodies announcing more than ``max_upload_bytes`` (plus multipart overhead) are
  refused with 413 before they are read; chunked bodies are checked after reading.
"""

from __future__ import annotations

import hmac
import io
import logging
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import torch
import torch.nn.functional as F
from fastapi import Depends, FastAPI, File, Form, Header, HTTPException, Request, UploadFile
from fastapi.responses import FileResponse, JSONResponse, Response
from pydantic import BaseModel

from multigrain.data.images import ImageDecodeError, decode_image
from multigrain.data.resize import prepare
from multigrain.errors import MultiGrainError
from multigrain.index import ImageIndex
from multigrain.models import MultiGrain

logger = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).parent / "static"
MULTIPART_OVERHEAD = 64 * 1024  # boundaries, part headers and small form fields
THUMBNAIL_SIDE = 192
MAX_K = 100

# magic bytes -> extension of a stored upload (the format decode_image then reads)
_SIGNATURES: tuple[tuple[bytes, str], ...] = (
    (b"\xff\xd8\xff", ".jpg"),
    (b"\x89PNG\r\n\x1a\n", ".png"),
    (b"GIF8", ".gif"),
    (b"BM", ".bmp"),
    (b"II*\x00", ".tif"),
    (b"MM\x00*", ".tif"),
)

# module level: with postponed annotations, FastAPI resolves these names in module globals
ImageField = Annotated[UploadFile, File(description="an image file")]


class Health(BaseModel):
    status: str
    images: int


class Embedding(BaseModel):
    dim: int
    descriptor: list[float]


class ClassScore(BaseModel):
    label: str
    index: int
    score: float


class Hit(BaseModel):
    id: int
    path: str
    score: float


class Added(BaseModel):
    id: int
    path: str
    images: int


@dataclass
class Service:
    """Everything the endpoints share; index access only under ``lock``."""

    model: MultiGrain
    classes: list[str]
    index: ImageIndex
    index_folder: Path
    data_dir: Path
    resolution: int
    token: str | None
    max_upload_bytes: int
    max_pixels: int
    device: torch.device
    lock: threading.Lock

    @torch.no_grad()
    def infer(self, image_path: Path) -> tuple[np.ndarray, torch.Tensor]:
        """Image file -> ((1, D) float32 L2-normalised descriptor, (num_classes,) logits)."""
        image = decode_image(image_path, longest_side=self.resolution, max_pixels=self.max_pixels)
        batch = prepare(image, self.resolution).unsqueeze(0).to(self.device)
        embedding, logits = self.model(batch)
        descriptor = F.normalize(embedding.float(), dim=1).cpu().numpy().astype(np.float32)
        return descriptor, logits[0].float().cpu()

    def path_of(self, image_id: int) -> str | None:
        with self.lock:
            rows = np.flatnonzero(self.index.ids == image_id)
            return self.index.paths[int(rows[0])] if rows.size else None


def create_app(
    *,
    checkpoint: Path,
    index_folder: Path,
    data_dir: Path,
    token: str | None,
    max_upload_bytes: int = 20 * 1024 * 1024,
    max_pixels: int = 50_000_000,
    device: str = "cpu",
) -> FastAPI:
    """Load the model and the index once and return the app (see the module docstring)."""
    from multigrain.weights import load_model

    # absolute: index_store opens its sqlite file by URI, which a relative path cannot be
    index_folder, data_dir = index_folder.resolve(), data_dir.resolve()
    index = ImageIndex.load(index_folder)
    if index.metadata.get("whitened"):
        raise MultiGrainError(
            f"the index {index_folder} holds whitened descriptors, which the service cannot "
            "reproduce: build the index from unwhitened embeddings"
        )
    resolution = int(index.metadata.get("resolution", 500))
    loaded = load_model(checkpoint)
    exponent = index.metadata.get("exponent")
    if exponent is not None:
        loaded.model.pool.set_p(float(exponent))
    torch_device = torch.device(device)
    loaded.model.to(torch_device).eval()
    for sub in ("tmp", "uploads"):
        (data_dir / sub).mkdir(parents=True, exist_ok=True)
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
        lock=threading.Lock(),
    )
    logger.info("serving %d images at s=%d, p=%s", len(index), resolution, exponent)
    return _build_app(service)


def _build_app(service: Service) -> FastAPI:
    app = FastAPI(title="MultiGrain", summary="embed, classify and search images")
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
            return Health(status="ok", images=len(service.index))

    @app.post("/embed")
    def embed(image: ImageField) -> Embedding:
        descriptor, _ = _infer_upload(service, image)
        return Embedding(dim=descriptor.shape[1], descriptor=descriptor[0].tolist())

    @app.post("/classify")
    def classify(image: ImageField) -> list[ClassScore]:
        _, logits = _infer_upload(service, image)
        return _top_classes(logits, service.classes, 5)

    @app.post("/search")
    def search(image: ImageField, k: Annotated[int, Form(ge=1, le=MAX_K)] = 10) -> list[Hit]:
        descriptor, _ = _infer_upload(service, image)
        with service.lock:
            if len(service.index) == 0:
                return []
            result = service.index.search(descriptor, min(k, len(service.index)))
        return [
            Hit(id=int(i), path=p, score=float(s))
            for i, p, s in zip(result.ids[0], result.paths[0], result.scores[0], strict=True)
            if i >= 0
        ]

    @app.post("/index", dependencies=[Depends(require_token)])
    def add(image: ImageField, name: Annotated[str | None, Form()] = None) -> Added:
        # `name` is accepted for clients' bookkeeping and logged, never used as a path
        stored = _store_upload(service, image)
        try:
            descriptor, _ = service.infer(stored)
            final = service.data_dir / "uploads" / f"{stored.stem}{_extension(stored)}"
            stored.rename(final)
            stored = final
            with service.lock:
                ids = service.index.add(descriptor, [str(final)])
                service.index.save(service.index_folder)
                count = len(service.index)
        except ImageDecodeError as error:
            stored.unlink(missing_ok=True)
            raise _decode_http_error(error, image) from None
        except BaseException:
            stored.unlink(missing_ok=True)
            raise
        logger.info("added %s (%r) as id %d", final.name, name, int(ids[0]))
        return Added(id=int(ids[0]), path=str(final), images=count)

    @app.delete("/index/{image_id}", dependencies=[Depends(require_token)])
    def remove(image_id: int) -> Health:
        with service.lock:
            rows = np.flatnonzero(service.index.ids == image_id)
            if rows.size == 0:
                raise HTTPException(404, f"no image with id {image_id} in the index")
            path = Path(service.index.paths[int(rows[0])])
            service.index.remove([image_id])
            service.index.save(service.index_folder)
            count = len(service.index)
        if path.parent == service.data_dir / "uploads":  # only files the service itself stored
            path.unlink(missing_ok=True)
        return Health(status="ok", images=count)

    @app.get("/thumb/{image_id}", response_class=Response)
    def thumb(image_id: int) -> Response:
        path = service.path_of(image_id)
        if path is None:
            raise HTTPException(404, f"no image with id {image_id} in the index")
        try:
            image = decode_image(path, longest_side=THUMBNAIL_SIDE, max_pixels=service.max_pixels)
        except ImageDecodeError as error:
            raise HTTPException(
                410, f"indexed image {image_id} is unreadable: {error.reason}"
            ) from None
        image.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE))
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=85)
        return Response(buffer.getvalue(), media_type="image/jpeg")

    return app


def _store_upload(service: Service, upload: UploadFile) -> Path:
    """Copy an upload to data_dir/tmp/<uuid>.upload; 413 over the byte limit, 400 if empty."""
    data = upload.file.read(service.max_upload_bytes + 1)
    if len(data) > service.max_upload_bytes:
        raise HTTPException(
            413,
            f"upload is over the limit of {service.max_upload_bytes} bytes: send a smaller file",
        )
    if not data:
        raise HTTPException(400, "empty upload: send an image file in the 'image' field")
    path = service.data_dir / "tmp" / f"{uuid.uuid4().hex}.upload"
    path.write_bytes(data)
    return path


def _infer_upload(service: Service, upload: UploadFile) -> tuple[np.ndarray, torch.Tensor]:
    """Store, decode and embed an upload, then delete the temporary copy."""
    path = _store_upload(service, upload)
    try:
        return service.infer(path)
    except ImageDecodeError as error:
        raise _decode_http_error(error, upload) from None
    finally:
        path.unlink(missing_ok=True)


def _decode_http_error(error: ImageDecodeError, upload: UploadFile) -> HTTPException:
    # the message names the upload as the client called it, never the server-side path
    status = 413 if "over the limit" in error.reason else 422
    return HTTPException(
        status, f"cannot read the uploaded image {upload.filename!r}: {error.reason}"
    )


def _extension(path: Path) -> str:
    with path.open("rb") as handle:
        head = handle.read(16)
    for signature, extension in _SIGNATURES:
        if head.startswith(signature):
            return extension
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return ".webp"
    return ".img"


def _top_classes(logits: torch.Tensor, classes: list[str], k: int) -> list[ClassScore]:
    probabilities = torch.softmax(logits, dim=0)
    scores, indices = probabilities.topk(min(k, probabilities.numel()))
    return [
        ClassScore(label=classes[int(i)], index=int(i), score=float(s))
        for s, i in zip(scores, indices, strict=True)
    ]
