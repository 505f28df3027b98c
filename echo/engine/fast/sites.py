"""aiohttp's TCPSite and SockSite with the TLS handshake bounded by HANDSHAKE_TIMEOUT.

Both copy the ``start`` of aiohttp 3.14's sites (``_runner``, ``_server``, ``_host``,
``_port``, ``_sock``, ``_ssl_context``, ``_backlog``, ``_bound_port`` are aiohttp's
private attributes) to pass ``ssl_handshake_timeout`` to ``loop.create_server``.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from typing import Any

from aiohttp import web


class TLSSite(web.TCPSite):
    """aiohttp's TCPSite with the TLS handshake bounded by ``handshake_timeout``.

    aiohttp's own timers start once the TLS handshake is done, and asyncio's default
    limit for the handshake itself is 60 s; this keeps a silent TCP connection on a TLS
    port from outliving HANDSHAKE_TIMEOUT.
    """

    __slots__ = ("_handshake_timeout",)

    def __init__(
        self,
        runner: web.BaseRunner,
        host: str,
        port: int,
        *,
        ssl_context: ssl.SSLContext,
        handshake_timeout: float,
        backlog: int = 128,
    ) -> None:
        super().__init__(runner, host, port, ssl_context=ssl_context, backlog=backlog)
        self._handshake_timeout = handshake_timeout

    async def start(self) -> None:
        await web.BaseSite.start(self)
        server = self._runner.server
        assert server is not None
        self._server = await asyncio.get_running_loop().create_server(
            server,
            self._host,
            self._port,
            ssl=self._ssl_context,
            ssl_handshake_timeout=self._handshake_timeout,
            backlog=self._backlog,
        )
        sockets = self._server.sockets
        self._bound_port = sockets[0].getsockname()[1] if sockets else self._port


class ListenerSite(web.SockSite):
    """aiohttp's SockSite on an inherited listening socket, with TLS as the single process.

    Like TLSSite, it bounds the TLS handshake by HANDSHAKE_TIMEOUT, which
    SockSite cannot.
    """

    __slots__ = ("_handshake_timeout",)

    def __init__(
        self,
        runner: web.BaseRunner,
        sock: socket.socket,
        *,
        ssl_context: ssl.SSLContext | None,
        handshake_timeout: float,
        backlog: int,
    ) -> None:
        super().__init__(runner, sock, ssl_context=ssl_context, backlog=backlog)
        self._handshake_timeout = handshake_timeout

    async def start(self) -> None:
        await web.BaseSite.start(self)
        server = self._runner.server
        assert server is not None
        tls: dict[str, Any] = {}
        if self._ssl_context is not None:
            tls = {"ssl": self._ssl_context, "ssl_handshake_timeout": self._handshake_timeout}
        self._server = await asyncio.get_running_loop().create_server(
            server, sock=self._sock, backlog=self._backlog, **tls
        )
