"""Opening a WebSocket with the connection options every mode shares.

:class:`Dialer` turns the settings into aiohttp's ``ClientSession.ws_connect``
arguments: headers (``-H``), subprotocols, permessage-deflate (offered unless
``--no-compression``), the TLS context (TLS_CA_FILE, ``--cert``/``--key``,
``--insecure``), a proxy connector (``--proxy``: aiohttp-socks, which tunnels ws:// and
wss:// alike with HTTP CONNECT or SOCKS5), and no Origin unless one is configured.

aiohttp follows redirects inside ``ws_connect`` and offers no switch to stop it, and it
drops the body of a refused handshake. A ``TraceConfig`` (aiohttp's public tracing
hooks) sees each exchange: it records the request and response headers (for
``--show-handshake``), reads up to :data:`BODY_LIMIT` bytes of a refusal's body (the
server's reason, shown to the user) and stops every redirect, which the dialer then
follows itself, if ``--follow-redirects`` allows it: at most :data:`MAX_REDIRECTS`,
never from wss:// to ws:// or http://, credentials dropped when the origin changes.
The hooks find the attempt they belong to through a context variable, so concurrent
handshakes (load mode) do not mix.

Failures that retrying may cure raise :class:`ConnectFailed`; the others raise an
:class:`~echo.client.errors.FatalError`.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import json
import logging
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any, Literal, Protocol

import aiohttp
import aiohttp_socks
from aiohttp import WSMsgType, hdrs
from yarl import URL

from echo.client.backoff import Attempts, parse_retry_after
from echo.client.errors import (
    CertificateUntrusted,
    GaveUp,
    HandshakeRefused,
    OriginRefused,
    RedirectRefused,
)
from echo.config import ClientSettings, redact_proxy
from echo.httpecho import mask_header
from echo.logs import event
from echo.text import preview
from echo.tls import client_context

log = logging.getLogger("echo.client")

WebSocket = aiohttp.ClientWebSocketResponse[Literal[False]]


class Message(Protocol):
    """A message as ``receive()`` returns it (``aiohttp.WSMessage``, or its twin with
    TEXT as undecoded bytes: the client asks for ``decode_text=False``)."""

    @property
    def type(self) -> WSMsgType: ...

    @property
    def data(self) -> Any: ...

    @property
    def extra(self) -> str | None: ...


BODY_LIMIT = 2048  # bytes of a refused handshake's body read for the reason
REASON_LIMIT = 200  # characters of that reason shown
MAX_REDIRECTS = 5
INFO_WAIT = 2.0  # with `info` in the URL: how long to wait for the server's info message
MIN_RECEIVE_LIMIT = 64 << 10
CLOSE_TIMEOUT = 5.0  # how long to wait for the server's close frame after ours
HURRIED_CLOSE_TIMEOUT = 0.25  # the same when stopping in a hurry
TRANSPORT_CLOSE_TIMEOUT = 1.0  # for the TLS shutdown after the closing handshake
# Statuses worth retrying besides 5xx: the server or a proxy is busy or timed out.
RETRY_STATUSES = frozenset({408, 425, 429})
_CREDENTIALS = frozenset({"authorization", "cookie", "proxy-authorization"})


class ConnectFailed(Exception):
    """An attempt failed in a way that a later attempt may not: log, wait, retry."""

    def __init__(self, reason: str, *, retry_after: float | None = None, busy: int = 0) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after
        self.busy = busy  # the status (429 or 503) when the server said it is busy


@dataclass
class Exchange:
    """What one HTTP request of a handshake showed (one per redirect hop)."""

    url: str
    request: list[tuple[str, str]] = field(default_factory=list)
    status: int = 0
    reason: str = ""
    response: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""
    location: str | None = None
    transport: asyncio.Transport | None = None  # the connection's, once upgraded (101)

    def said(self) -> str:
        """The server's reason from the body: one escaped line, cut to REASON_LIMIT."""
        text = self.body.decode("utf-8", "replace").strip()
        return preview(text, REASON_LIMIT) if text else ""

    def header(self, name: str) -> str | None:
        for key, value in self.response:
            if key.lower() == name.lower():
                return value
        return None


class _Redirected(Exception):
    """Raised by the redirect hook to stop aiohttp following a redirect by itself."""


_exchange: contextvars.ContextVar[Exchange | None] = contextvars.ContextVar(
    "echo_client_exchange", default=None
)


def _decode(raw: tuple[tuple[bytes, bytes], ...]) -> list[tuple[str, str]]:
    return [(k.decode("latin-1"), v.decode("latin-1")) for k, v in raw]


async def _on_headers_sent(
    session: aiohttp.ClientSession,
    context: SimpleNamespace,
    params: aiohttp.TraceRequestHeadersSentParams,
) -> None:
    exchange = _exchange.get()
    if exchange is not None:
        exchange.request = list(params.headers.items())


async def _on_redirect(
    session: aiohttp.ClientSession,
    context: SimpleNamespace,
    params: aiohttp.TraceRequestRedirectParams,
) -> None:
    response = params.response
    exchange = _exchange.get()
    if exchange is not None:
        exchange.status, exchange.reason = response.status, response.reason or ""
        exchange.response = _decode(response.raw_headers)
        exchange.location = response.headers.get(hdrs.LOCATION)
    response.close()
    raise _Redirected


async def _on_request_end(
    session: aiohttp.ClientSession,
    context: SimpleNamespace,
    params: aiohttp.TraceRequestEndParams,
) -> None:
    response = params.response
    exchange = _exchange.get()
    if exchange is None:
        return
    exchange.status, exchange.reason = response.status, response.reason or ""
    exchange.response = _decode(response.raw_headers)
    connection = response.connection
    if connection is not None and connection.transport is not None:
        # Not an asyncio.Transport subclass on every loop: uvloop's TLS transport is not.
        exchange.transport = connection.transport
    if response.status != 101:
        # The refusal's reason; bounded in size here and in time by the handshake's limit.
        body = b""
        while len(body) < BODY_LIMIT:
            chunk = await response.content.read(BODY_LIMIT - len(body))
            if not chunk:
                break
            body += chunk
        exchange.body = body


def trace_config() -> aiohttp.TraceConfig:
    """The hooks that record each handshake exchange (see the module docstring)."""
    trace = aiohttp.TraceConfig()
    trace.on_request_headers_sent.append(_on_headers_sent)
    trace.on_request_redirect.append(_on_redirect)
    trace.on_request_end.append(_on_request_end)
    return trace


def tls_context(settings: ClientSettings) -> ssl.SSLContext:
    """Verification against TLS_CA_FILE or the system store (none with --insecure), and
    the client certificate of --cert/--key."""
    context = client_context(settings.ca_file)
    if settings.insecure:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if settings.cert_file:
        context.load_cert_chain(settings.cert_file, settings.key_file or None)
    return context


def info_requested(url: URL) -> bool:
    """The URL asks the server for its info message first (the `info` test control)."""
    value = url.query.get("info")
    return value is not None and value.lower() not in ("0", "false", "no", "off")


def close_description(code: int | None, reason: str | None) -> tuple[int, str]:
    """The code and reason of a closing handshake as logged: 1005 for a close frame
    without a code, 1006 and "abnormal" when the connection ended without one."""
    if code is None or code == 1006:
        return 1006, "abnormal"
    return (1005 if code == 0 else code), preview(reason or "", 123)


class Link:
    """One open WebSocket and what its handshake said.

    ``receive()`` hands out first a message read while waiting for the server's info,
    if it was not the info. ``close()`` closes the WebSocket and waits (bounded) for
    the transport underneath to go, TLS close_notify included.
    """

    def __init__(
        self,
        ws: WebSocket,
        url: str,
        exchange: Exchange,
        redirected_from: str | None,
    ) -> None:
        self.ws = ws
        self.url = url
        self.exchange = exchange
        self.redirected_from = redirected_from
        self.status = exchange.status or 101
        self.subprotocol = ws.protocol
        self.extensions = exchange.header(hdrs.SEC_WEBSOCKET_EXTENSIONS) or ""
        self.info: object | None = None
        self._first: Message | None = None
        self._transport = TransportWatch.of(exchange.transport)

    def where(self) -> str:
        """The URL connected to, and the one it was redirected from, for log lines."""
        if self.redirected_from is None:
            return self.url
        return f"{self.url} (redirected from {self.redirected_from})"

    def fields(self) -> dict[str, object]:
        """The ``connected`` event's fields."""
        fields: dict[str, object] = {
            "url": self.url,
            "status": self.status,
            "subprotocol": self.subprotocol,
            "extensions": preview(self.extensions, 200)[1:-1] if self.extensions else None,
        }
        if self.redirected_from is not None:
            fields["redirected_from"] = self.redirected_from
        if self.info is not None:
            fields["info"] = self.info
        return fields

    async def read_info(self, wait: float = INFO_WAIT) -> None:
        """Take the server's first message as its info if it is a JSON object."""
        try:
            async with asyncio.timeout(wait):
                while True:
                    msg = await self.ws.receive()
                    if msg.type is WSMsgType.PING:
                        await self.ws.pong(msg.data)
                        continue
                    break
        except TimeoutError:
            return
        if msg.type is WSMsgType.TEXT and len(msg.data) <= MIN_RECEIVE_LIMIT:
            try:
                info = json.loads(msg.data)
            except ValueError:
                info = None
            if isinstance(info, dict):
                self.info = info
                return
        self._first = msg

    async def receive(self) -> Message:
        if self._first is not None:
            msg, self._first = self._first, None
            return msg
        return await self.ws.receive()

    async def close(
        self, code: int = aiohttp.WSCloseCode.OK, message: bytes = b"", *, hurry: bool = False
    ) -> None:
        """The closing handshake (aiohttp gives up and drops the connection if the wait
        is cut short), then the end of the transport."""
        if not self.ws.closed:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    self.ws.close(code=code, message=message),
                    HURRIED_CLOSE_TIMEOUT if hurry else None,
                )
        await self.wait_closed(hurry=hurry)

    async def wait_closed(self, *, hurry: bool = False) -> None:
        if self._transport is not None:
            await self._transport.wait_closed(
                HURRIED_CLOSE_TIMEOUT if hurry else TRANSPORT_CLOSE_TIMEOUT
            )


class Dialer:
    """Connects to ``settings.url`` with the connection options; one per client run."""

    def __init__(
        self,
        settings: ClientSettings,
        *,
        heartbeat: float | None = None,
        autoping: bool = True,
        max_message: int = MIN_RECEIVE_LIMIT,
    ) -> None:
        self.settings = settings
        self.heartbeat = heartbeat
        self.autoping = autoping
        self.max_message = max(max_message, MIN_RECEIVE_LIMIT)
        self.ssl = tls_context(settings)

    def session(self, connections: int = 1) -> aiohttp.ClientSession:
        """The ClientSession for up to ``connections`` WebSockets at once, through the
        proxy if there is one."""
        settings = self.settings
        connector: aiohttp.BaseConnector
        if settings.proxy:
            proxy = URL(settings.proxy)
            rdns = proxy.scheme == "socks5h"
            if rdns:
                proxy = proxy.with_scheme("socks5")
            connector = aiohttp_socks.ProxyConnector.from_url(
                str(proxy), rdns=rdns, limit=connections
            )
        else:
            connector = aiohttp.TCPConnector(limit=connections)
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=settings.heartbeat_interval)
        return aiohttp.ClientSession(
            connector=connector, timeout=timeout, trace_configs=[trace_config()]
        )

    def describe(self) -> str:
        """The options in force, for the start line: ``via socks5://..., 2 header(s)``."""
        settings = self.settings
        parts = []
        if settings.proxy:
            parts.append(f"via {redact_proxy(settings.proxy)}")
        if settings.origin:
            parts.append(f"origin={settings.origin}")
        if settings.headers:
            parts.append(f"{len(settings.headers)} header(s)")
        if settings.subprotocols:
            parts.append("subprotocols=" + ",".join(settings.subprotocols))
        if settings.cert_file:
            parts.append("client certificate")
        if not settings.compression:
            parts.append("no compression")
        return ", ".join(parts)

    def warn_insecure(self) -> None:
        """The line --insecure prints every time it is used."""
        if self.settings.insecure:
            log.warning(
                "--insecure: the server's TLS certificate and host name are NOT verified; "
                "anyone on the path can read and change the traffic",
                extra=event("insecure"),
            )

    async def connect(self, session: aiohttp.ClientSession) -> Link:
        """One attempt (following redirects if allowed), bounded per hop by the heartbeat
        interval. Raises ConnectFailed or a FatalError."""
        settings = self.settings
        url = URL(settings.url)
        start = str(url)
        secure = url.scheme == "wss"
        headers = list(settings.headers)
        for _hop in range(MAX_REDIRECTS + 1):
            exchange = Exchange(str(url))
            token = _exchange.set(exchange)
            via = "" if str(url) == start else f" (redirected from {start})"
            try:
                async with asyncio.timeout(settings.heartbeat_interval):
                    ws = await session.ws_connect(
                        url,
                        origin=settings.origin,
                        headers=headers,
                        protocols=settings.subprotocols,
                        compress=15 if settings.compression else 0,
                        ssl=self.ssl,
                        heartbeat=self.heartbeat,
                        autoping=self.autoping,
                        max_msg_size=self.max_message + 1,
                        decode_text=False,
                        # Waiting for the server's close frame: no longer than silence is trusted.
                        timeout=aiohttp.ClientWSTimeout(
                            ws_close=min(CLOSE_TIMEOUT, settings.heartbeat_interval)
                        ),
                    )
            except _Redirected:
                self._show(exchange)
                target = self._redirect(url, exchange, secure)
                log.info(
                    "redirected (HTTP %d) from %s to %s",
                    exchange.status,
                    url,
                    target,
                    extra=event(
                        "redirected", url=str(url), status=exchange.status, location=str(target)
                    ),
                )
                if target.origin() != url.origin():
                    headers = [(k, v) for k, v in headers if k.lower() not in _CREDENTIALS]
                secure = secure or target.scheme == "wss"
                url = target
                continue
            except aiohttp.WSServerHandshakeError as error:
                self._show(exchange)
                raise self._refusal(error, exchange, str(url), via) from None
            except aiohttp.ClientConnectorCertificateError as error:
                raise CertificateUntrusted(
                    str(url), _certificate_reason(error.certificate_error)
                ) from None
            except ssl.SSLCertVerificationError as error:  # through a proxy, unwrapped
                raise CertificateUntrusted(str(url), _certificate_reason(error)) from None
            except TimeoutError:
                raise ConnectFailed(
                    f"no handshake within {settings.heartbeat_interval:g} s{via}"
                ) from None
            except (
                aiohttp.ClientError,
                OSError,
                aiohttp_socks.ProxyError,
                aiohttp_socks.ProxyConnectionError,
                aiohttp_socks.ProxyTimeoutError,
            ) as error:
                what = _failure(error)
                if settings.proxy and isinstance(error, aiohttp_socks.ProxyError | OSError):
                    what = f"{what} (proxy {redact_proxy(settings.proxy)})"
                raise ConnectFailed(f"{what}{via}") from None
            finally:
                _exchange.reset(token)
            self._show(exchange)
            link = Link(ws, str(url), exchange, None if str(url) == start else start)
            if info_requested(url):
                await link.read_info(min(INFO_WAIT, settings.heartbeat_interval))
            return link
        raise RedirectRefused(
            start, exchange.status, str(url), f"more than {MAX_REDIRECTS} redirects"
        )

    def _redirect(self, url: URL, exchange: Exchange, secure: bool) -> URL:
        """Where a redirect leads, as a ws:// or wss:// URL, if the client may follow it."""
        location = exchange.location or ""
        shown = preview(location, 200)
        if not self.settings.follow_redirects:
            raise RedirectRefused(
                str(url),
                exchange.status,
                location,
                "not followed; connect to that URL, or pass --follow-redirects",
            )
        try:
            target = url.join(URL(location))
        except ValueError:
            raise RedirectRefused(str(url), exchange.status, location, "not a URL") from None
        scheme = {"http": "ws", "https": "wss"}.get(target.scheme, target.scheme)
        if scheme not in ("ws", "wss") or not target.host:
            raise RedirectRefused(
                str(url), exchange.status, location, "not an http(s) or ws(s) URL"
            )
        if secure and scheme == "ws":
            raise RedirectRefused(
                str(url),
                exchange.status,
                location,
                f"refused: {shown} is not encrypted and the connection started as wss://",
            )
        return target.with_scheme(scheme)

    def _refusal(
        self, error: aiohttp.WSServerHandshakeError, exchange: Exchange, url: str, via: str
    ) -> Exception:
        status = error.status
        said = exchange.said()
        if status in (429, 503):
            retry_after = parse_retry_after(exchange.header(hdrs.RETRY_AFTER))
            return ConnectFailed(
                f"server busy (HTTP {status}){via}, Retry-After={retry_after}",
                retry_after=retry_after,
                busy=status,
            )
        if status == 101 or status >= 500 or status in RETRY_STATUSES:
            detail = said or preview(error.message)
            return ConnectFailed(f"handshake refused: HTTP {status} {detail}{via}")
        if status == 403:
            return OriginRefused(status, url, said, self.settings.origin)
        return HandshakeRefused(status, url, said, self.settings.origin)

    def _show(self, exchange: Exchange) -> None:
        """``--show-handshake``: the request and response headers, one line each
        (credentials masked, the server's values escaped), and one event."""
        if not self.settings.show_handshake:
            return
        request = [(k, _mask(k, v)) for k, v in exchange.request]
        response = [(k, preview(_mask(k, v), 200)[1:-1]) for k, v in exchange.response]
        log.info("> GET %s", exchange.url)
        for name, value in request:
            log.info("> %s: %s", name, value)
        if exchange.status:
            log.info("< HTTP %d %s", exchange.status, preview(exchange.reason, 80)[1:-1])
        for name, value in response:
            log.info("< %s: %s", preview(name, 80)[1:-1], value)
        log.debug(
            "handshake",
            extra=event(
                "handshake",
                url=exchange.url,
                request_headers=request,
                status=exchange.status,
                response_headers=response,
            ),
        )


def _mask(name: str, value: str) -> str:
    return mask_header(name.encode("latin-1"), value.encode("latin-1")).decode("latin-1")


CLOSED_POLL = 0.01  # how often wait_closed looks at the socket


class TransportWatch:
    """The transport under a WebSocket, to see it really closed before moving on.

    aiohttp closes a connection's transport and forgets it (aiohttp issue #1925). A TLS
    transport then still exchanges close_notify with the server; if the event loop ends
    first, the socket is leaked (ResourceWarning at exit). ``wait_closed`` waits for
    the end of that exchange, bounded, and aborts the transport if it takes too long.
    The transport is the handshake response's connection's (public API, seen by the
    trace hook); its end shows as its socket's descriptor going (-1), on asyncio's
    loop and uvloop alike.
    """

    def __init__(self, transport: asyncio.Transport, sock: Any) -> None:
        self.transport = transport
        self.socket = sock

    @classmethod
    def of(cls, transport: asyncio.Transport | None) -> TransportWatch | None:
        if transport is None:
            return None
        sock = transport.get_extra_info("socket")
        if sock is None or sock.fileno() == -1:
            return None  # gone already, or nothing to watch
        return cls(transport, sock)

    @property
    def closed(self) -> bool:
        return bool(self.socket.fileno() == -1)

    async def wait_closed(self, grace: float) -> None:
        """Wait up to ``grace`` seconds for the socket to close; then abort the transport."""
        for _ in range(max(1, int(grace / CLOSED_POLL))):
            if self.closed:
                return
            await asyncio.sleep(CLOSED_POLL)
        if not self.closed:
            self.transport.abort()


def _failure(error: BaseException) -> str:
    """A failed connection in a few words: '127.0.0.1:8080: connection refused'."""
    if isinstance(error, aiohttp.ClientConnectorError):
        cause = error.os_error
        what = (cause.strerror or str(cause) or type(cause).__name__).lower()
        if isinstance(cause, ConnectionRefusedError) or "connect call failed" in what:
            what = "connection refused"
        return f"{error.host}:{error.port}: {preview(what, 100)[1:-1]}"
    return preview(str(error) or type(error).__name__)


def _certificate_reason(cause: BaseException) -> str:
    """What verification said: 'certificate verify failed: unable to get local issuer...'."""
    if isinstance(cause, ssl.SSLCertVerificationError) and cause.verify_message:
        return f"certificate verify failed: {cause.verify_message}"
    return str(cause) or type(cause).__name__


async def connect_retrying(
    dialer: Dialer,
    session: aiohttp.ClientSession,
    attempts: Attempts,
    stop: asyncio.Event,
    level: int = logging.INFO,
    on_failure: Callable[[ConnectFailed], None] | None = None,
) -> Link | None:
    """Attempts until one connects (the Link), ``stop`` is set (None), or the attempts
    run out (GaveUp); each failure is one line with the attempt number and next delay,
    and is passed to ``on_failure``."""
    while not stop.is_set():
        attempts.start()
        attempt = asyncio.ensure_future(dialer.connect(session))
        stopper = asyncio.ensure_future(stop.wait())
        try:
            await asyncio.wait({attempt, stopper}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (attempt, stopper):
                task.cancel()
            await asyncio.gather(attempt, stopper, return_exceptions=True)
        if attempt.cancelled():
            return None
        failure = attempt.exception()
        if failure is None:
            return attempt.result()
        if not isinstance(failure, ConnectFailed):
            raise failure
        if on_failure is not None:
            on_failure(failure)
        if attempts.exhausted:
            raise GaveUp(attempts.number, dialer.settings.url, failure.reason)
        delay = attempts.next_delay(failure.retry_after)
        log.log(
            level,
            "cannot connect (attempt %s): %s; retrying in %.3f s",
            attempts.label(),
            failure.reason,
            delay,
            extra=event(
                "connect_failed",
                attempt=attempts.number,
                reason=failure.reason,
                status=failure.busy or None,
                retry_after=failure.retry_after,
                delay=round(delay, 3),
            ),
        )
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), delay)
    return None
