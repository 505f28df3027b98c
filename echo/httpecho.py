"""HTTP echo for proxy testing: any other path answers with the request it received.

A request to a path the server does not otherwise serve (any method) is answered
``200 text/plain`` with its request line, its headers in the order and spelling they
arrived, a blank line and its body, so a person can see what a proxy in front of the
server forwarded. Credentials are not reflected: the values of Authorization,
Proxy-Authorization and Cookie are masked (the auth scheme and cookie names are kept).
Bodies are bounded by MAX_MESSAGE_SIZE (413 beyond) and must arrive within
HANDSHAKE_TIMEOUT (408 otherwise).
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass

from aiohttp import hdrs, web

MASK = b"[masked]"
# Paths with a handler of their own; another method on them is 405, not an echo.
RESERVED_PATHS = frozenset({"/", "/healthz", "/readyz", "/metrics", "/page.js", "/page.css"})
_AUTH_HEADERS = frozenset({b"authorization", b"proxy-authorization"})
_COOKIE = re.compile(rb"^\s*([^=;\s]+)\s*=")


def mask_header(name: bytes, value: bytes) -> bytes:
    """The value of header ``name`` as echoed: credentials replaced by ``[masked]``."""
    lowered = name.lower()
    if lowered in _AUTH_HEADERS:
        scheme, _, credentials = value.strip().partition(b" ")
        return scheme + b" " + MASK if credentials else MASK
    if lowered == b"cookie":
        masked = []
        for pair in value.split(b";"):
            match = _COOKIE.match(pair)
            masked.append(match.group(1) + b"=" + MASK if match else MASK)
        return b"; ".join(masked)
    return value


def render(request: web.BaseRequest, body: bytes) -> bytes:
    """Request line, headers (credentials masked), a blank line, then the body."""
    version = f"HTTP/{request.version.major}.{request.version.minor}"
    lines = [f"{request.method} {request.raw_path} {version}".encode("latin-1", "replace")]
    lines.extend(name + b": " + mask_header(name, value) for name, value in request.raw_headers)
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


@dataclass(frozen=True, slots=True)
class HttpEcho:
    """The catch-all handler, with the body limits it enforces."""

    max_body: int
    read_timeout: float

    async def handle(self, request: web.Request) -> web.Response:
        if request.path in RESERVED_PATHS:
            return self._reserved(request)
        length = request.content_length
        if length is not None and length > self.max_body:
            raise web.HTTPRequestEntityTooLarge(max_size=self.max_body, actual_size=length)
        try:
            async with asyncio.timeout(self.read_timeout):
                body = await request.read()  # 413 beyond client_max_size, also when chunked
        except TimeoutError:
            raise web.HTTPRequestTimeout(text="request body too slow\n") from None
        return web.Response(
            body=render(request, body),
            content_type="text/plain",
            headers={
                hdrs.CACHE_CONTROL: "no-store",
                "X-Content-Type-Options": "nosniff",
                "Content-Security-Policy": "default-src 'none'; sandbox",
            },
        )

    @staticmethod
    def _reserved(request: web.Request) -> web.Response:
        """Another method on a served path (405), or a path not served (/metrics: 404
        when METRICS=false)."""
        if request.method in (hdrs.METH_GET, hdrs.METH_HEAD):
            raise web.HTTPNotFound()
        raise web.HTTPMethodNotAllowed(request.method, [hdrs.METH_GET, hdrs.METH_HEAD])


def add_http_echo(app: web.Application, max_body: int, read_timeout: float) -> None:
    """Register the catch-all route; paths registered on ``app`` keep their handlers.

    ``app``'s ``client_max_size`` must be ``max_body`` (it bounds ``request.read()``).
    """
    echo = HttpEcho(max_body, read_timeout)
    app.router.add_route("*", "/{tail:.*}", echo.handle)
