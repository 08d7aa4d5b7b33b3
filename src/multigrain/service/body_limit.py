"""An ASGI middleware that refuses request bodies over a byte limit while they stream in.

A body that announces its length (Content-Length) over the limit is refused before any of
it is read. A chunked body (no Content-Length) is counted as it arrives: the request fails
with 413 as soon as the count passes the limit, so at most the limit (plus one network
read) is ever received, and the multipart parser never spools more than that to disk.
Before, a chunked 400 MiB upload was written whole to a temporary file before its 413.

The overflow is raised from ``receive`` as an ``HTTPException`` (413): FastAPI re-raises
those from its body parsing (other exceptions there become a 400), and its handler answers
``{"detail": ...}`` like every other refusal; if no one has answered yet when the
exception reaches this middleware, it answers itself.
"""

from __future__ import annotations

from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from multigrain.service.errors import UploadTooLarge, error_response


class BodyTooLarge(HTTPException):
    """The body passed the limit while it was being received."""

    def __init__(self, limit: int) -> None:
        super().__init__(
            status_code=UploadTooLarge.status_code,
            detail=f"the request body is over the limit of {limit} bytes: send a smaller file",
        )


class BodyLimit:
    """413 for any HTTP request whose body is over `limit` bytes (see the module doc)."""

    def __init__(self, app: ASGIApp, *, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = Headers(scope=scope).get("content-length")
        if length is not None and length.isdigit() and int(length) > self.limit:
            error = UploadTooLarge(
                f"upload of {length} bytes is over the limit of {self.limit} bytes"
            )
            await error_response(error)(scope, receive, send)
            return
        received = 0
        answered = False

        async def counted_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise BodyTooLarge(self.limit)
            return message

        async def watched_send(message: Message) -> None:
            nonlocal answered
            answered = answered or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted_receive, watched_send)
        except BodyTooLarge as error:
            if answered:
                raise
            await error_response(UploadTooLarge(str(error.detail)))(scope, receive, send)
