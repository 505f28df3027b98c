"""HTTP echo for proxy testing: any other request answers with the request it received.

A request the server does not otherwise serve (any path, ``*`` included, any method) is
answered ``200 text/plain`` with its request line, its headers in the order and
spelling they arrived, a blank line and its body exactly as received, so a person can
see what a proxy in front of the server forwarded. The body is never decoded: the
runner is started with ``auto_decompress=False`` (``echo.server.runner_options``), so a
gzip body comes back as the gzip bytes that were sent, under its own Content-Encoding.

Credentials are not reflected (:func:`mask_header`): the values of Authorization and
Proxy-Authorization (the scheme is kept), Cookie and Set-Cookie (the names are kept) and
of every header whose name matches :data:`CREDENTIAL_NAME` are masked.

Bodies are bounded by MAX_MESSAGE_SIZE (413 beyond, before any ``100 Continue``) and
must arrive within HANDSHAKE_TIMEOUT (408 otherwise, and the connection is closed at
once rather than lingering). A body that breaks off or cannot be parsed (a bad chunk)
gets 400; none of it is logged above debug, since a peer causes it at will.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from aiohttp import hdrs, web
from yarl import URL

from echo.text import preview

log = logging.getLogger("echo.httpecho")

MASK = b"[masked]"
# Paths with a handler of their own; another method on them is 405, not an echo.
RESERVED_PATHS = frozenset({"/", "/healthz", "/readyz", "/metrics", "/page.js", "/page.css"})
# Header names whose values are masked whole (after the special cases of mask_header).
CREDENTIAL_NAME = re.compile(
    rb"auth|token|secret|passw|session|credential|signature|api[-_]?key", re.IGNORECASE
)
_AUTH_HEADERS = frozenset({b"authorization", b"proxy-authorization"})
_COOKIE_HEADERS = frozenset({b"cookie", b"set-cookie"})
_COOKIE = re.compile(rb"^\s*([^=;\s]+)\s*=")
_SECURITY_HEADERS = {
    hdrs.CACHE_CONTROL: "no-store",
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": "default-src 'none'; sandbox",
}


def mask_header(name: bytes, value: bytes) -> bytes:
    """The value of header ``name`` as echoed: credentials replaced by ``[masked]``.

    Authorization and Proxy-Authorization keep their scheme (``Bearer [masked]``);
    Cookie keeps each cookie's name and Set-Cookie the first one's
    (``session=[masked]``); any other header whose name contains one of the words of
    :data:`CREDENTIAL_NAME` (``X-Api-Key``, ``X-Auth-Token``, ``X-Client-Secret``...)
    is masked whole.
    """
    lowered = name.lower()
    if lowered in _AUTH_HEADERS:
        scheme, _, credentials = value.strip().partition(b" ")
        return scheme + b" " + MASK if credentials else MASK
    if lowered in _COOKIE_HEADERS:
        pairs = value.split(b";") if lowered == b"cookie" else value.split(b";")[:1]
        masked = []
        for pair in pairs:
            match = _COOKIE.match(pair)
            masked.append(match.group(1) + b"=" + MASK if match else MASK)
        return b"; ".join(masked)
    if CREDENTIAL_NAME.search(name) is not None:
        return MASK
    return value


def render(request: web.BaseRequest, body: bytes) -> bytes:
    """Request line, headers (credentials masked), a blank line, then the body."""
    version = f"HTTP/{request.version.major}.{request.version.minor}"
    lines = [f"{request.method} {request.raw_path} {version}".encode("latin-1", "replace")]
    lines.extend(name + b": " + mask_header(name, value) for name, value in request.raw_headers)
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


async def expect_continue(request: web.Request) -> None:
    """aiohttp's ``Expect: 100-continue`` handling, without quoting the header.

    aiohttp's own answers an unknown expectation with 417 and the header's value in
    the body; a fixed text says the same. HTTP/1.0 requests are not answered (RFC
    9110 10.1.1: a server ignores 100-continue from them).
    """
    if request.version < (1, 1):
        return
    if request.headers.get(hdrs.EXPECT, "").strip().lower() != "100-continue":
        raise web.HTTPExpectationFailed(text="only 'Expect: 100-continue' is supported\n")
    await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
    request.writer.output_size = 0  # what aiohttp's does: the response has not started


async def answer_and_close(request: web.Request, refusal: web.HTTPException) -> web.Response:
    """Send ``refusal`` and close the connection right after it."""
    response = web.Response(status=refusal.status, text=refusal.text, headers=refusal.headers)
    response.force_close()
    await response.prepare(request)
    await response.write_eof()
    if request.transport is not None:
        request.transport.close()
    return response


@dataclass(frozen=True, slots=True)
class HttpEcho:
    """The catch-all handler, with the body limits it enforces."""

    max_body: int
    read_timeout: float

    def check(self, request: web.Request) -> None:
        """Refuse before the body is read: a served path's other methods (405), an
        announced body over the limit (413)."""
        if request.path in RESERVED_PATHS:
            self._reserved(request)
        length = request.content_length
        if length is not None and length > self.max_body:
            raise web.HTTPRequestEntityTooLarge(max_size=self.max_body, actual_size=length)

    async def expect(self, request: web.Request) -> web.StreamResponse | None:
        """The expect handler: :meth:`check` first, so a refusal (413, 405) comes instead
        of ``100 Continue``, and the connection closes with it: the client will not
        send the body, so there is nothing to wait for."""
        if request.headers.get(hdrs.EXPECT, "").strip().lower() == "100-continue":
            try:
                self.check(request)
            except web.HTTPException as refusal:
                return await answer_and_close(request, refusal)
        await expect_continue(request)
        return None

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.check(request)
        try:
            async with asyncio.timeout(self.read_timeout):
                body = await request.read()  # 413 beyond client_max_size, also when chunked
        except TimeoutError:
            # Closed at once: aiohttp would otherwise go on reading the rest of the
            # body for up to its lingering time (10 s).
            return await answer_and_close(
                request, web.HTTPRequestTimeout(text="request body too slow\n")
            )
        except (web.RequestPayloadError, ConnectionError) as error:
            # The body broke off (the peer closed or reset) or is malformed (a bad
            # chunk): the peer's doing, answered if it can still hear it.
            log.debug("bad request body remote=%s error=%s", request.remote, preview(str(error)))
            raise web.HTTPBadRequest(text="incomplete or malformed request body\n") from None
        return web.Response(
            body=render(request, body), content_type="text/plain", headers=_SECURITY_HEADERS
        )

    @staticmethod
    def _reserved(request: web.Request) -> None:
        """Another method on a served path (405), or a path not served (/metrics: 404
        when METRICS=false)."""
        if request.method in (hdrs.METH_GET, hdrs.METH_HEAD):
            raise web.HTTPNotFound()
        raise web.HTTPMethodNotAllowed(request.method, [hdrs.METH_GET, hdrs.METH_HEAD])


class EveryRequest(web.AbstractResource):
    """A resource that matches every request: any path (newlines included, which the
    ``.`` of a ``{tail:.*}`` route does not match) and ``*`` (``OPTIONS *``), with any
    method. (CONNECT's authority form has no path: aiohttp's router answers it 404
    before any resource is asked, which suits an echo that is no proxy.)

    Indexed under ``/`` and registered last, it is tried after every other resource.
    """

    def __init__(self, echo: HttpEcho) -> None:
        super().__init__(name=None)
        self._route = web.ResourceRoute(
            hdrs.METH_ANY, echo.handle, self, expect_handler=echo.expect
        )

    @property
    def canonical(self) -> str:
        return "/"

    def url_for(self, **kwargs: str) -> URL:
        return URL.build(path="/")

    async def resolve(self, request: web.Request) -> tuple[web.UrlMappingMatchInfo, set[str]]:
        return web.UrlMappingMatchInfo({}, self._route), {hdrs.METH_ANY}

    def add_prefix(self, prefix: str) -> None:
        raise RuntimeError("the HTTP echo is not meant for a sub-application")

    def get_info(self) -> Any:  # aiohttp's type for it is private
        return {}

    def raw_match(self, path: str) -> bool:
        return False

    def __len__(self) -> int:
        return 1

    def __iter__(self) -> Iterator[web.AbstractRoute]:
        yield self._route

    def __repr__(self) -> str:
        return "<EveryRequest (the HTTP echo)>"


def add_http_echo(app: web.Application, max_body: int, read_timeout: float) -> None:
    """Register the catch-all resource; paths registered on ``app`` keep their handlers.

    ``app``'s ``client_max_size`` must be ``max_body`` (it bounds ``request.read()``).
    """
    app.router.register_resource(EveryRequest(HttpEcho(max_body, read_timeout)))
