"""Gzip for responses of 1 KiB and more, for clients that accept it.

Starlette's GZipMiddleware compresses whenever ``gzip`` appears in ``Accept-Encoding``,
so ``gzip;q=0`` (RFC 9110 §12.5.3: "not acceptable") still got gzip. This reads the
header's q-values first and hands only requests that accept gzip to it.
"""

from __future__ import annotations

from starlette.datastructures import Headers
from starlette.middleware.gzip import GZipMiddleware
from starlette.types import ASGIApp, Receive, Scope, Send


def _quality(params: list[str]) -> float:
    for param in params:
        name, _, value = param.partition("=")
        if name.strip().lower() == "q":
            try:
                return min(max(float(value.strip()), 0.0), 1.0)
            except ValueError:
                return 0.0  # an unreadable weight accepts nothing rather than everything
    return 1.0


def accepts_gzip(header: str) -> bool:
    """Whether an ``Accept-Encoding`` value accepts gzip: its own weight (``x-gzip`` is an
    alias), else the weight of ``*``, else no. An absent header is the caller's case."""
    weights: dict[str, float] = {}
    for item in header.split(","):
        coding, *params = item.split(";")
        coding = coding.strip().lower()
        if coding:
            weights[coding] = max(weights.get(coding, 0.0), _quality(params))
    gzip = max(weights.get("gzip", -1.0), weights.get("x-gzip", -1.0))
    return (gzip if gzip >= 0 else weights.get("*", 0.0)) > 0


class Compression:
    def __init__(self, app: ASGIApp, minimum_size: int = 1024, compresslevel: int = 5) -> None:
        self.app = app
        self.gzip = GZipMiddleware(app, minimum_size=minimum_size, compresslevel=compresslevel)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and accepts_gzip(Headers(scope=scope).get("accept-encoding", "")):
            await self.gzip(scope, receive, send)
        else:
            await self.app(scope, receive, send)
