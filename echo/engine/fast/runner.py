"""aiohttp's runner, server and connection protocol as the fast engine runs them.

Five changes to aiohttp's own, all below the application:

- TCP_NODELAY comes from the listening socket instead of a system call per connection.
  echo.listeners sets it on every listening socket, and Linux copies it to every
  accepted socket; aiohttp's per-connection call (a Python socket object and a system
  call) was about 3% of the server's time per handshake in a py-spy profile. Until
  :func:`nodelay_on_listeners` says a runner's listeners have it, connections take
  aiohttp's own per-connection path.
- An upgraded WebSocket can outlive its request handler
  (:meth:`EchoRequestHandler.detach`, used by ``echo.engine.fast.fastpath.EchoResponse.detach``),
  which frees aiohttp's per-request objects for the connection's life.
- A detached connection reads its fair share (:data:`READ_BUDGET`): the fast path
  answers frames inside ``data_received``, so no queue fills and aiohttp's
  back-pressure never pauses reading; uvloop reads a readable socket up to 32 times
  (256 KB each) before serving anyone else. After READ_BUDGET bytes read while no
  other connection read anything, the connection stops reading until the next turn
  of the event loop.
- Error answers quote nothing of the request (``echo.httperrors.ErrorPages``, whose
  ``handle_error`` override is public API; the plain engine can use it as it is).
- Any token is a method: a connection whose first request starts with a method
  aiohttp's C parser does not know is parsed by aiohttp's pure-Python parser
  (:meth:`EchoRequestHandler._parse_in_python`), so the HTTP echo shows it.
"""

from __future__ import annotations

import asyncio
import re
from collections import deque
from collections.abc import Callable
from typing import Any

from aiohttp import web
from aiohttp.base_protocol import BaseProtocol
from aiohttp.http_parser import HttpRequestParserPy
from aiohttp.web_protocol import MAX_MSG_QUEUE_SIZE, RequestHandler, RequestPayloadError

from echo.httperrors import ErrorPages


class _NoDelayFromListener(BaseProtocol):
    """Sits between RequestHandler and BaseProtocol in the MRO of EchoRequestHandler,
    so RequestHandler's ``super().connection_made`` lands here."""

    __slots__ = ()
    _manager: Any  # RequestHandler's (typing.cast would be a Python call per connection)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        manager = self._manager
        if isinstance(manager, EchoHTTPServer) and manager.listener_nodelay:
            self.transport = transport  # type: ignore[assignment]  # a stream's: a Transport
        else:
            super().connection_made(transport)


_DETACHED: deque[Any] = deque(maxlen=0)  # a detached handler's (never used) request queue
# Methods every HTTP parser knows: a connection whose first request uses another one
# (a token up to 32 characters) is parsed in Python (EchoRequestHandler._parse_in_python).
_COMMON_METHODS = frozenset(b"GET HEAD POST PUT DELETE OPTIONS PATCH TRACE CONNECT".split())
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]{1,32}")

# Bytes a detached connection may read in a row, no other connection reading in
# between, before it lets the others have their turn: about one full socket read
# (uvloop reads 256,000 bytes at a time, asyncio 256 KiB), which is also about what
# aiohttp's own queue lets in before it pauses a reader that the handler cannot keep
# up with. One peer streaming tiny frames then holds the loop for one read's worth of
# echoes at a time. Counting only reads in a row spares connections that take turns
# anyway: pausing and resuming each connection after every 128-256 KiB it read cost
# 5-7% of the server's CPU time per message with ten connections echoing 64 KiB.
READ_BUDGET = 128 * 1024


def _unusual_method(data: bytes) -> bool:
    """Whether ``data``, a connection's first bytes, starts with a method token that is
    not one of the common methods."""
    space = data.find(b" ", 0, 33)
    if space <= 0:
        return False
    method = data[:space]
    return method not in _COMMON_METHODS and _TOKEN.fullmatch(method) is not None


class EchoRequestHandler(ErrorPages, _NoDelayFromListener):
    """aiohttp's connection protocol: TCP_NODELAY from the listener,
    WebSockets that outlive their request handler (:meth:`detach`), and error answers
    that quote nothing of the request (echo.httperrors)."""

    __slots__ = ("_first_data", "_on_writable", "_unyielded")
    _first_data: bool  # set by EchoHTTPServer.__call__ (no __init__ call of our own)

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
        self._unyielded = 0  # bytes read in a row, no other connection reading (READ_BUDGET)
        self._on_writable: Callable[[], None] | None = None  # see hold_until_writable
        task = self._task_handler
        if task is not None:
            task.add_done_callback(self._forget_task)

    def _forget_task(self, _task: Any) -> None:
        self._task_handler = None

    def hold_until_writable(self, callback: Callable[[], None]) -> None:
        """Stop reading until the transport takes writes again, then call ``callback``
        (a detached connection's reply that could not be written, see
        ``EchoQueue.owe_pong``). It holds reading as aiohttp holds it for a buffer it
        cannot drain yet, so neither aiohttp's queue nor the read budget resumes it."""
        self._on_writable = callback
        self._pause_reading_for_buffer()

    def resume_writing(self) -> None:
        super().resume_writing()
        if self._messages is _DETACHED and (callback := self._on_writable) is not None:
            self._on_writable = None
            callback()
            self._resume_reading_for_buffer()

    def release_hold(self) -> None:
        """Forget the callback of :meth:`hold_until_writable` (the connection is over)."""
        if self._messages is _DETACHED:
            self._on_writable = None

    def data_received(self, data: bytes) -> None:
        if self._messages is not _DETACHED:
            if self._first_data:
                self._first_data = False
                if not data.startswith(b"GET ") and _unusual_method(data):
                    self._parse_in_python()
            super().data_received(data)
        elif data and self._payload_parser is not None:
            self._payload_parser.feed_data(data)
            manager: EchoHTTPServer = self._manager  # type: ignore[assignment]
            if manager.reading is self:
                self._unyielded += len(data)
            else:  # someone else read last: a new run
                manager.reading = self
                self._unyielded = len(data)
            if self._unyielded >= READ_BUDGET:
                manager.reading = None
                self._pause_transport_reading()
                self._loop.call_soon(self._take_turn)

    def _take_turn(self) -> None:
        """Read again, one turn of the event loop after the budget paused reading;
        unless aiohttp's back-pressure has paused it meanwhile (a full queue or an
        unparsed tail): then aiohttp resumes it, when it drains."""
        if not (self._reading_paused or self._buffer_paused):
            self._resume_transport_reading()

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


class EchoHTTPServer(web.Server):
    """aiohttp's low-level server whose connections are :class:`EchoRequestHandler`."""

    def __init__(self, model: web.Server) -> None:
        super().__init__(
            model.request_handler,
            request_factory=model.request_factory,
            handler_cancellation=model.handler_cancellation,
            loop=model._loop,
            **model._kwargs,
        )
        self.listener_nodelay = False  # set by nodelay_on_listeners
        # The detached connection that read last (EchoRequestHandler.data_received
        # counts how much it has read in a row against READ_BUDGET).
        self.reading: EchoRequestHandler | None = None

    def connection_lost(self, handler: RequestHandler, exc: BaseException | None = None) -> None:
        if self.reading is handler:
            self.reading = None
        super().connection_lost(handler, exc)

    def __call__(self) -> RequestHandler:
        handler = EchoRequestHandler(self, loop=self._loop, **self._kwargs)
        handler._first_data = True
        return handler


class EchoRunner(web.AppRunner):
    """AppRunner whose server is an :class:`EchoHTTPServer`."""

    __slots__ = ()

    async def _make_server(self) -> web.Server:
        return EchoHTTPServer(await super()._make_server())


def nodelay_on_listeners(runner: web.BaseRunner) -> None:
    """echo.listeners serves ``runner``: its listening sockets have TCP_NODELAY, so the
    connections need no system call of their own to set it."""
    server = runner.server
    if isinstance(server, EchoHTTPServer):
        server.listener_nodelay = True
