"""aiohttp's runner, server and connection protocol as the echo server runs them.

Three changes to aiohttp's own, all below the application:

- Handshake timeouts are counted. aiohttp's keep-alive timer cuts off a connection that
  has not sent a complete request in HANDSHAKE_TIMEOUT (see
  ``echo.server.runner_options``); :class:`EchoRequestHandler` counts those cut-offs
  into the app's metrics, when it has them.
- TCP_NODELAY is set once on each listening socket (:func:`nodelay_on_listeners`)
  instead of once per connection. Linux copies it to every accepted socket, and
  aiohttp's per-connection call (a Python socket object and a system call) was about
  3% of the server's time per handshake in a py-spy profile. Until a runner's
  listening sockets have it, connections take aiohttp's own per-connection path.
- An upgraded WebSocket can outlive its request handler
  (:meth:`EchoRequestHandler.detach`, used by ``echo.engine.fast.fastpath.EchoResponse.detach``),
  which frees aiohttp's per-request objects for the connection's life.
"""

from __future__ import annotations

import asyncio
import re
import socket
from collections import deque
from typing import Any, cast

from aiohttp import web
from aiohttp.base_protocol import BaseProtocol
from aiohttp.http_parser import HttpRequestParserPy
from aiohttp.web_protocol import MAX_MSG_QUEUE_SIZE, RequestHandler, RequestPayloadError

from echo.httperrors import ErrorPages
from echo.metrics import HANDSHAKE_TIMEOUT, METRICS_KEY, Metrics


class _NoDelayFromListener(BaseProtocol):
    """Sits between RequestHandler and BaseProtocol in the MRO of EchoRequestHandler,
    so RequestHandler's ``super().connection_made`` lands here."""

    __slots__ = ()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        manager = cast(EchoRequestHandler, self)._manager
        if isinstance(manager, EchoHTTPServer) and manager.listener_nodelay:
            self.transport = cast(asyncio.Transport, transport)
        else:
            super().connection_made(transport)


_DETACHED: deque[Any] = deque(maxlen=0)  # a detached handler's (never used) request queue
# Methods every HTTP parser knows: a connection whose first request uses another one
# (a token up to 32 characters) is parsed in Python (EchoRequestHandler._parse_in_python).
_COMMON_METHODS = frozenset(b"GET HEAD POST PUT DELETE OPTIONS PATCH TRACE CONNECT".split())
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]{1,32}")


def _unusual_method(data: bytes) -> bool:
    """Whether ``data``, a connection's first bytes, starts with a method token that is
    not one of the common methods."""
    space = data.find(b" ", 0, 33)
    if space <= 0:
        return False
    method = data[:space]
    return method not in _COMMON_METHODS and _TOKEN.fullmatch(method) is not None


class EchoRequestHandler(ErrorPages, _NoDelayFromListener):
    """aiohttp's connection protocol: TCP_NODELAY from the listener, timeouts counted,
    WebSockets that outlive their request handler (:meth:`detach`), and error answers
    that quote nothing of the request (echo.httperrors)."""

    __slots__ = ("_first_data",)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._first_data = True
        super().connection_made(transport)

    def detach(self) -> None:
        """Keep the upgraded connection open and fed after the handler returns.

        aiohttp's connection task closes the transport after the handler unless
        ``_force_close`` is set, and ``data_received`` drops data once it is; so it is
        set, and ``data_received`` feeds the frame parser itself while detached (the
        request queue, never used again, is swapped for a shared empty one, which
        marks the state). The connection task then ends, and with it every object of
        the HTTP request. The end of the connection reaches the frame parser's queue
        as EOF, from ``connection_lost``.
        """
        self._force_close = True
        self._messages = _DETACHED
        task = self._task_handler
        if task is not None:
            task.add_done_callback(self._forget_task)

    def _forget_task(self, _task: Any) -> None:
        self._task_handler = None

    def data_received(self, data: bytes) -> None:
        if self._messages is not _DETACHED:
            if self._first_data:
                self._first_data = False
                if _unusual_method(data):
                    self._parse_in_python()
            super().data_received(data)
        elif data and self._payload_parser is not None:
            self._payload_parser.feed_data(data)

    def _parse_in_python(self) -> None:
        """Parse this connection's requests with aiohttp's pure-Python parser.

        aiohttp's C parser (llhttp) refuses methods it does not know (``FOO``) with
        400; the Python one takes any token (RFC 9110 9.1), so the HTTP echo can show
        what a proxy did with them. Same arguments as ``RequestHandler.__init__``.
        """
        manager = self._manager
        assert manager is not None
        self._parser = HttpRequestParserPy(
            self,
            self._loop,
            self._read_bufsize,
            max_line_size=self.max_line_size,
            max_field_size=self.max_field_size,
            max_headers=self.max_headers,
            payload_exception=RequestPayloadError,
            auto_decompress=manager._kwargs.get("auto_decompress", True),
            max_msg_queue_size=MAX_MSG_QUEUE_SIZE,
        )

    def _process_keepalive(self) -> None:
        already = self._force_close
        super()._process_keepalive()
        if self._force_close and not already and self._request_count == 0:
            manager = self._manager
            if isinstance(manager, EchoHTTPServer) and manager.metrics is not None:
                manager.metrics.refusal(HANDSHAKE_TIMEOUT)


class EchoHTTPServer(web.Server):
    """aiohttp's low-level server whose connections are :class:`EchoRequestHandler`."""

    def __init__(self, model: web.Server, metrics: Metrics | None) -> None:
        super().__init__(
            model.request_handler,
            request_factory=model.request_factory,
            handler_cancellation=model.handler_cancellation,
            loop=model._loop,
            **model._kwargs,
        )
        self.metrics = metrics
        self.listener_nodelay = False  # set by nodelay_on_listeners

    def __call__(self) -> RequestHandler:
        return EchoRequestHandler(self, loop=self._loop, **self._kwargs)


class EchoRunner(web.AppRunner):
    """AppRunner whose server is an :class:`EchoHTTPServer` (metrics from the app)."""

    __slots__ = ()

    async def _make_server(self) -> web.Server:
        return EchoHTTPServer(await super()._make_server(), self.app.get(METRICS_KEY))


def nodelay_on_listeners(runner: web.BaseRunner, sockets: list[Any] | None = None) -> None:
    """Set TCP_NODELAY on the runner's listening sockets, then stop setting it per
    connection. ``sockets`` defaults to those of the runner's started sites."""
    if sockets is None:
        sockets = [
            sock
            for site in runner.sites
            if (server := getattr(site, "_server", None)) is not None
            for sock in server.sockets
        ]
    for sock in sockets:
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    server = runner.server
    if isinstance(server, EchoHTTPServer) and sockets:
        server.listener_nodelay = True
