"""Request guard against cross-site use of a dashboard on the loopback interface.

A web page the user visits can make the browser send requests to ``127.0.0.1``. Two checks stop
that without a token: a mutating request that carries an ``Origin`` must come from this server's
own origin, and, when bound to loopback, the ``Host`` header must name a loopback host (defeats
DNS rebinding, where an outside name resolves to 127.0.0.1).
"""

from __future__ import annotations

from urllib.parse import urlsplit

from starlette.responses import PlainTextResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from server.dashboard.settings import is_loopback

SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}


def _hostname(host: str) -> str:
    return urlsplit(f"//{host}").hostname or ""


class OriginGuard:
    def __init__(self, app: ASGIApp, loopback_only: bool, extra_hosts: frozenset[str]) -> None:
        self.app = app
        self.loopback_only = loopback_only
        self.extra_hosts = extra_hosts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            problem = self._problem(scope)
            if problem:
                await PlainTextResponse(problem, status_code=403)(scope, receive, send)
                return
        await self.app(scope, receive, send)

    def _problem(self, scope: Scope) -> str | None:
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        host = headers.get("host", "")
        name = _hostname(host)
        if self.loopback_only and not (is_loopback(name) or name in self.extra_hosts):
            return f"host {name!r} is not served here"
        origin = headers.get("origin")
        if scope["method"] not in SAFE_METHODS and origin and urlsplit(origin).netloc != host:
            return f"cross-origin {scope['method']} from {origin!r} refused"
        return None
