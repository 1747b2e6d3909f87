"""Checks every request passes before it reaches a route, and headers on every answer: the
security headers below and ``Server-Timing`` (the time spent in this server, for browsers'
developer tools and the benchmark).

- Headers: a Content-Security-Policy that lets pages load only this server's scripts, styles
  and data (inline ``style`` attributes allowed: the charts set them; no inline script), and
  forbids framing (``frame-ancestors 'none'``, with ``X-Frame-Options: DENY`` for old
  browsers); ``nosniff``; no Referer sent anywhere.

- Size: a body must declare its length (no chunked uploads) and stay under ``MAX_BODY`` bytes,
  so no request can make the server buffer more than that.
- Cross-site use of a dashboard on the loopback interface: a web page the user visits can make
  the browser send requests to ``127.0.0.1``. Without a token, two checks stop that: a mutating
  request that carries an ``Origin`` must come from this server's own origin, and, when bound to
  loopback, the ``Host`` header must name a loopback host (defeats DNS rebinding, where an
  outside name resolves to 127.0.0.1).
"""

from __future__ import annotations

import time
from urllib.parse import urlsplit

from starlette.responses import PlainTextResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from server.dashboard.settings import is_loopback

SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}
MAX_BODY = 1 << 20  # the largest valid request (an experiment or an event) is a few KiB
CSP = ("default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
       "img-src 'self' data:; connect-src 'self'; object-src 'none'; base-uri 'none'; "
       "form-action 'self'; frame-ancestors 'none'")
SECURITY_HEADERS = {
    "content-security-policy": CSP,
    "x-frame-options": "DENY",
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
}
_RAW_HEADERS = [(k.encode(), v.encode()) for k, v in SECURITY_HEADERS.items()]


def _hostname(host: str) -> str:
    return urlsplit(f"//{host}").hostname or ""


class RequestGuard:
    def __init__(self, app: ASGIApp, loopback_only: bool, extra_hosts: frozenset[str]) -> None:
        self.app = app
        self.loopback_only = loopback_only
        self.extra_hosts = extra_hosts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        refusal = self._refusal(scope)
        if refusal:
            status, reason = refusal
            await PlainTextResponse(reason, status_code=status, headers=SECURITY_HEADERS)(
                scope, receive, send)
            return
        start = time.perf_counter()

        async def timed(message: Message) -> None:
            if message["type"] == "http.response.start":
                took = f"app;dur={1000 * (time.perf_counter() - start):.2f}".encode()
                message = {**message, "headers": [*message.get("headers", []), *_RAW_HEADERS,
                                                  (b"server-timing", took)]}
            await send(message)

        await self.app(scope, receive, timed)

    def _refusal(self, scope: Scope) -> tuple[int, str] | None:
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        if "chunked" in headers.get("transfer-encoding", "").lower():
            return 411, "a request body needs a Content-Length"
        length = headers.get("content-length", "0")
        if not length.isdigit() or int(length) > MAX_BODY:
            return 413, f"request bodies are limited to {MAX_BODY} bytes"
        host = headers.get("host", "")
        name = _hostname(host)
        if self.loopback_only and not (is_loopback(name) or name in self.extra_hosts):
            return 403, f"host {name!r} is not served here"
        origin = headers.get("origin")
        if scope["method"] not in SAFE_METHODS and origin and urlsplit(origin).netloc != host:
            return 403, f"cross-origin {scope['method']} from {origin!r} refused"
        return None
