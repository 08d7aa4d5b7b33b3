"""An ASGI middleware that checks who a request is for and from before its body is read.

* **Host**: the ``Host`` header must name the server (``allowed_hosts``: by default the
  address it listens on and the loopback names). A web page on another site whose name
  the attacker re-points at 127.0.0.1 (DNS rebinding) sends its own name there, and is
  refused with 400.
* **Origin**: an edit of the index (a request that one of ``editing_routes`` matches, as
  the app's router would match it) whose ``Origin``
  (else ``Referer``) names another site than the ``Host`` it was sent to is refused with
  403. Browsers send these headers with every cross-site form post, which needs no CORS
  permission: without it, any page a user of a server without token opened could add images.
  Clients that are not browsers send neither and pass.
* **Token**: an edit without the server's bearer token is refused with 401 before its
  body is read (the route's dependency checks it again; FastAPI reads the body first).
"""

from __future__ import annotations

import hmac
from collections.abc import Sequence
from urllib.parse import urlsplit

from starlette.datastructures import Headers
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Receive, Scope, Send

from multigrain.service.errors import (
    ForeignOrigin,
    ServiceError,
    Unauthorized,
    UnknownHost,
    error_response,
)

#: The names a loopback server answers to by default.
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


def token_matches(authorization: str | None, token: str) -> bool:
    """Whether an Authorization header carries ``Bearer <token>`` (constant-time)."""
    expected = f"Bearer {token}".encode()
    return authorization is not None and hmac.compare_digest(authorization.encode(), expected)


def host_name(host: str) -> str:
    """'Name:port', '[v6]:port' or a bare name -> the lower-case name without brackets."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host[1:]
    if host.count(":") == 1:  # a name or IPv4 address with a port; bare IPv6 has several
        return host.split(":")[0]
    return host


def host_allowed(host: str, allowed: Sequence[str]) -> bool:
    """`host` (a Host header) against names, '*' (any) and '*.domain' patterns."""
    name = host_name(host)
    for pattern in allowed:
        pattern = host_name(pattern) if pattern != "*" else pattern
        if pattern == "*" or name == pattern:
            return True
        if pattern.startswith("*.") and name.endswith(pattern[1:]):
            return True
    return False


class RequestGuard:
    """Host, Origin and token checks before the app sees the request (module docstring)."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        allowed_hosts: Sequence[str],
        token: str | None,
        editing_routes: Sequence[BaseRoute],
    ) -> None:
        self.app = app
        self.allowed_hosts = tuple(allowed_hosts)
        self.token = token
        self.editing_routes = tuple(editing_routes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            refusal = self.refusal(scope)
            if refusal is not None:
                await error_response(refusal)(scope, receive, send)
                return
        await self.app(scope, receive, send)

    def refusal(self, scope: Scope) -> ServiceError | None:
        """The error that refuses this request, or None to let it through."""
        headers = Headers(scope=scope)
        host = headers.get("host", "")
        if not host_allowed(host, self.allowed_hosts):
            names = ", ".join(self.allowed_hosts)
            return UnknownHost(
                f"this server does not answer for the host {host_name(host)!r} (it answers "
                f"for {names}): start it with --allowed-host {host_name(host) or 'NAME'} if "
                "that name is yours"
            )
        if not any(route.matches(scope)[0] is Match.FULL for route in self.editing_routes):
            return None
        origin = headers.get("origin") or headers.get("referer")
        if origin is not None and urlsplit(origin).netloc.lower() != host.strip().lower():
            return ForeignOrigin(
                f"index edits from another origin ({origin}) are refused: send them from "
                "this server's own page, or from a client that sends no Origin header"
            )
        if self.token is not None and not token_matches(headers.get("authorization"), self.token):
            return Unauthorized("missing or wrong token: send 'Authorization: Bearer <token>'")
        return None
