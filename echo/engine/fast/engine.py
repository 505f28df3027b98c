"""The fast engine: detached connections echoed from inside aiohttp's frame parser.

:meth:`FastEngine.accept` upgrades with :class:`echo.engine.fast.fastpath.EchoResponse`,
starts the echo in the parser's callback and detaches the connection from aiohttp's
request machinery (see fastpath and runner). What the fast path cannot answer wakes
:class:`FastLink`, which serves the queue in order with aiohttp's ``receive()`` in a
short-lived task, until it is empty.

A connection that :func:`echo.engine.plain_reason` names a reason for, or that the
fast path cannot detach (aiohttp's own runner, no gate in front of it), is handed to
the plain engine instead.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

from aiohttp import WSMsgType, web

from echo import protocol
from echo.engine import App, Connection, plain_reason, subprotocols
from echo.engine.fast.fastpath import EchoResponse
from echo.engine.fast.heartbeat import Heartbeat
from echo.engine.fast.runner import EchoRequestHandler, EchoRunner, nodelay_on_listeners
from echo.engine.plain import PlainEngine, fail
from echo.listeners import CLOSE_TIMEOUT, Gate, gate_of

log = logging.getLogger("echo.server")


class FastLink:
    """Ties a detached connection's queue to the application: :meth:`wake` when
    something waits for ``receive()``, :meth:`ended` once the connection is lost."""

    __slots__ = ("app", "closing", "conn", "gate", "serving", "ws")

    def __init__(self, app: App, ws: EchoResponse, conn: Connection, gate: Gate) -> None:
        self.app = app
        self.ws = ws
        self.conn = conn
        self.gate = gate
        self.serving: asyncio.Future[None] | None = None
        self.closing: asyncio.Future[None] | None = None

    def wake(self) -> None:
        """The queue holds a message or error: serve it in a task (one at a time)."""
        if self.serving is None and not self.ws.closed:
            self.serving = asyncio.ensure_future(self.serve())

    def ended(self) -> None:
        ws = self.ws
        ws.release()
        self.app.ended(ws, self.conn)

    def too_big(self) -> None:
        """The gate stopped the stream at a frame that takes its message past
        MAX_MESSAGE_SIZE: fail the connection with 1009."""
        self.app.peer_error(self.conn, "message over limit")
        if self.closing is None:
            transport = self.gate.transport
            failing = fail(self.ws, transport, protocol.MESSAGE_TOO_BIG, b"message too big")
            self.closing = asyncio.ensure_future(failing)

    async def serve(self) -> None:
        ws = self.ws
        try:
            await self.serve_queue()
        except ConnectionError:
            pass  # the peer vanished mid-send: an abnormal closure, not our fault
        except Exception as error:
            self.app.internal_error(self.conn, error)
            await ws.close(code=protocol.INTERNAL_ERROR, message=b"internal error")
        finally:
            self.serving = None

    async def serve_queue(self) -> None:
        """Echo what waits in the queue, in order, until it is empty."""
        ws, conn, app = self.ws, self.conn, self.app
        receive = ws.receive
        send_frame = ws.send_frame
        limit = app.settings.max_message_size
        sizes = app.sizes
        binary = WSMsgType.BINARY
        while ws.pending:
            msg = await receive()
            kind = msg.type
            if kind is WSMsgType.TEXT or kind is binary:
                data: bytes = msg.data
                if kind is WSMsgType.TEXT and not protocol.is_utf8(data):
                    app.peer_error(conn, "invalid UTF-8 text")
                    await ws.close(code=protocol.INVALID_PAYLOAD, message=b"invalid UTF-8")
                    return
                if len(data) > limit:
                    app.peer_error(conn, f"message of {len(data)} bytes over limit")
                    await ws.close(code=protocol.MESSAGE_TOO_BIG, message=b"message too big")
                    return
                conn.messages_in += 1
                conn.bytes_in += len(data)
                if sizes is not None:
                    sizes.observe(len(data))
                    if kind is binary:
                        conn.binary_in += 1
                        conn.binary_bytes_in += len(data)
                await send_frame(data, kind)
                conn.messages_out += 1
                conn.bytes_out += len(data)
                if sizes is not None and kind is binary:
                    conn.binary_out += 1
                    conn.binary_bytes_out += len(data)
            elif kind is WSMsgType.CLOSE:
                # The peer closes its end next: no point waiting for our frame to drain
                # (aiohttp's own autoclose does the same).
                await ws.close(code=protocol.close_reply(msg.data), drain=False)
                return
            elif kind is WSMsgType.ERROR:
                # aiohttp has closed already: 1002, 1007, 1009 for what its parser
                # refuses, 1011 (EchoResponse.close) for anything else.
                fault = protocol.peer_fault(msg.data)
                if fault is not None:
                    # The gate's words for its failures (unmasked frames), not aiohttp's.
                    app.peer_error(conn, self.gate.failure or fault)
                elif not isinstance(msg.data, asyncio.TimeoutError):
                    app.internal_error(conn, msg.data)
                return
            else:  # CLOSING (we are closing it) or CLOSED (the transport went away)
                return


class FastEngine:
    """Echoes from inside aiohttp's frame parser; see the module."""

    name = "fast"

    def __init__(self, plain: PlainEngine, heartbeat_interval: float) -> None:
        self.plain = plain
        self.heartbeat = Heartbeat(heartbeat_interval)

    def install(self, app: web.Application) -> None:
        app.cleanup_ctx.append(self._beating)

    async def _beating(self, _app: web.Application) -> AsyncIterator[None]:
        """Cleanup context: the shared heartbeat timer runs while the app serves."""
        self.heartbeat.start()
        yield
        self.heartbeat.stop()

    def runner(self, app: web.Application, **options: Any) -> web.AppRunner:
        return EchoRunner(app, **options)

    def protocols(
        self, runner: web.BaseRunner, options: dict[str, Any]
    ) -> Callable[[], asyncio.Protocol]:
        """Our runner's server makes EchoRequestHandler (echo.engine.fast.runner)."""
        server = runner.server
        assert server is not None, "runner.setup() first"
        return server

    def listening(self, runner: web.BaseRunner) -> None:
        nodelay_on_listeners(runner)

    async def accept(self, request: web.Request, conn: Connection, app: App) -> web.StreamResponse:
        gate = gate_of(request.transport)
        if (
            plain_reason(request, conn, app.settings) is not None
            or gate is None  # not through our listeners: no gate to check the frames
            or not isinstance(request.protocol, EchoRequestHandler)  # cannot detach
        ):
            return await self.plain.accept(request, conn, app)
        ws = EchoResponse.serving(
            conn=conn,
            heartbeat=self.heartbeat,
            sizes=app.sizes,
            frames=gate.tracker,
            protocols=subprotocols(request, app.settings),
            # aiohttp refuses a frame of exactly max_msg_size bytes: serve_queue checks.
            max_msg_size=app.settings.max_message_size + 1,
            timeout=CLOSE_TIMEOUT,
        )
        await ws.prepare(request)
        app.opened(ws, conn)
        ws.start_echo(conn, app.settings.max_message_size)
        link = FastLink(app, ws, conn, gate)
        gate.upgraded(link.too_big)
        ws.detach(wake=link.wake, ended=link.ended)
        return ws
