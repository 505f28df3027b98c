"""aiohttp's runner, server and connection protocol as the fast engine runs them.

Two changes to aiohttp's own, both below the application:

- TCP_NODELAY comes from the listening socket instead of a system call per connection.
  echo.listeners sets it on every listening socket, and Linux copies it to every
  accepted socket; aiohttp's per-connection call (a Python socket object and a system
  call) was about 3% of the server's time per handshake in a py-spy profile. Until
  :func:`nodelay_on_listeners` says a runner's listeners have it, connections take
  aiohttp's own per-connection path.
- An upgraded WebSocket can outlive its request handler
  (:meth:`EchoRequestHandler.detach`, used by ``echo.engine.fast.fastpath.EchoResponse.detach``),
  which frees aiohttp's per-request objects for the connection's life.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any, cast

from aiohttp import web
from aiohttp.base_protocol import BaseProtocol
from aiohttp.web_protocol import RequestHandler


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


class EchoRequestHandler(RequestHandler, _NoDelayFromListener):
    """aiohttp's connection protocol: TCP_NODELAY from the listener, and WebSockets that
    outlive their request handler (:meth:`detach`)."""

    __slots__ = ()

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
            super().data_received(data)
        elif data and self._payload_parser is not None:
            self._payload_parser.feed_data(data)


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

    def __call__(self) -> RequestHandler:
        return EchoRequestHandler(self, loop=self._loop, **self._kwargs)


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
