"""The service's errors: one exception class per HTTP status, turned into responses here.

Code that refuses a request raises the class that says why (``UploadTooLarge``,
``NotInIndex`` ...); :func:`install_error_handlers` maps every :class:`ServiceError` to a
JSON response ``{"detail": message}`` with the class's status code and headers. The status
is therefore chosen by the error's type, never by reading its message.
"""

from __future__ import annotations

from typing import ClassVar

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from multigrain.data.images import ImageDecodeError, ImageOverPixelLimit


class ServiceError(Exception):
    """A refused request: `detail` tells the client what to change."""

    status_code: ClassVar[int] = 500
    headers: ClassVar[dict[str, str]] = {}

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class BadUpload(ServiceError):
    """The request carries no usable upload (e.g. an empty file)."""

    status_code = 400


class UnknownHost(ServiceError):
    """A Host header naming a host the server does not answer for (DNS rebinding)."""

    status_code = 400


class Unauthorized(ServiceError):
    """An index edit without the right bearer token."""

    status_code = 401
    headers = {"WWW-Authenticate": "Bearer"}


class ForeignOrigin(ServiceError):
    """An index edit sent by a page of another site (cross-site form post)."""

    status_code = 403


class NotInIndex(ServiceError):
    """No image with the requested id."""

    status_code = 404


class IndexedImageGone(ServiceError):
    """The index lists the image, but its file can no longer be read."""

    status_code = 410


class UploadTooLarge(ServiceError):
    """An upload over the byte limit, or an image over the pixel limit."""

    status_code = 413


class UnreadableUpload(ServiceError):
    """The upload is not an image the decoder can read."""

    status_code = 422


class ServiceBusy(ServiceError):
    """The request's forward did not finish within the server's request timeout."""

    status_code = 503
    headers = {"Retry-After": "1"}


def upload_error(error: ImageDecodeError, filename: str | None) -> ServiceError:
    """The error for an upload that failed to decode: 413 over the pixel limit, else 422."""
    kind = UploadTooLarge if isinstance(error, ImageOverPixelLimit) else UnreadableUpload
    return kind(f"cannot read the uploaded image {filename!r}: {error.reason}")


def error_response(error: ServiceError) -> JSONResponse:
    return JSONResponse(
        {"detail": error.detail}, status_code=error.status_code, headers=dict(error.headers)
    )


async def _handle(_: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, ServiceError)  # registered for ServiceError only
    return error_response(error)


def install_error_handlers(app: FastAPI) -> None:
    """Answer every ServiceError raised by a route or a dependency with its status."""
    app.add_exception_handler(ServiceError, _handle)
