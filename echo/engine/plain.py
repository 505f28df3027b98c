"""The plain engine: aiohttp's public WebSocket API, as its documentation shows it.

Each connection is a :class:`PlainResponse` (aiohttp's ``WebSocketResponse`` with
``autoping`` and ``heartbeat``) served by :class:`PlainSession`, a ``receive()`` loop in
the request handler's task that echoes every data message with the opcode it came
with, until the connection ends. Nothing here touches aiohttp's private names, so it
works on every aiohttp release the dependency range allows; it is the fallback when the
fast engine is not proven, what ``make dev`` (adev) runs, and the path the fast engine
hands compressed, debug-logged and test-controlled connections to.

The loop owns the connection: every close frame the server sends is sent from it
(aiohttp's own for protocol errors too, from inside ``receive()``), and a close asked
for from elsewhere (shutdown, a frame past the size limit, test controls) is handed to
it (:meth:`PlainSession.close`), which is what keeps the codes sent and received exact:
aiohttp reads the peer's answer to a close only when no ``receive()`` is waiting.
Per-connection behaviour extends the loop at its points: :meth:`PlainSession.echo`
is :meth:`~PlainSession.received` (the promises: UTF-8, size limit, counting in) then
:meth:`~PlainSession.send` (sending, counting out); pings and pongs reach the loop
when autoping is off, and a ``receive_timeout`` ends a silent connection with 1001.
Test controls (echo.engine.controlled) are built on these.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Callable
from typing import Any

from aiohttp import WSCloseCode, WSMsgType, web

from echo import protocol
from echo.engine import App, Connection, subprotocols
from echo.httperrors import ErrorPages
from echo.listeners import CLOSE_TIMEOUT, closing, gate_of
from echo.text import preview

log = logging.getLogger("echo.server")

IDLE_MESSAGE = b"no frame for too long"  # the close reason after receive_timeout

_WS_OPTIONS = inspect.signature(web.WebSocketResponse.__init__).parameters
# aiohttp 3.14 can hand text over undecoded (we only check it is UTF-8, never use it).
_UNDECODED: dict[str, Any] = {"decode_text": False} if "decode_text" in _WS_OPTIONS else {}


class PlainResponse(web.WebSocketResponse):
    """aiohttp's WebSocketResponse; :meth:`close` records the close codes on the record.

    ``close`` is public API that every close frame the server sends goes through,
    aiohttp's own (from inside ``receive()``) included.
    """

    def __init__(self, conn: Connection, transport: Any, **options: Any) -> None:
        super().__init__(**options, **_UNDECODED)
        self.echo_conn = conn
        self.echo_transport = transport

    async def close(
        self, *, code: int = WSCloseCode.OK, message: bytes = b"", drain: bool = True
    ) -> bool:
        """aiohttp's close, with the right code after an error and the codes recorded.

        When ``receive()`` meets an error that is not a WebSocketError it closes with
        its default 1000; the error it keeps (``exception()``) says which code is right:
        1007 for a corrupt permessage-deflate stream (the peer's fault; RFC 7692 names
        no code, and 1007 is the one for payload data that is not what it claims to
        be), 1011 for anything else (ours).
        """
        if self.closed or not self.prepared:
            return await super().close(code=code, message=message, drain=drain)
        error = self.exception()
        if error is not None and code == WSCloseCode.OK:
            if protocol.peer_fault(error) is not None:
                code, message = protocol.INVALID_PAYLOAD, b"invalid compressed data"
            else:
                code, message = protocol.INTERNAL_ERROR, b"internal error"
        conn = self.echo_conn
        transport = self.echo_transport
        if transport is not None and not transport.is_closing():
            conn.sent_close(code)
        closing(transport)  # a peer that reads nothing cannot hold it past CLOSE_TIMEOUT
        result = await super().close(code=code, message=message, drain=drain)
        # Our loop never closes while a receive() waits, so aiohttp read the peer's
        # answer unless the peer closed first (already recorded) or aiohttp had given
        # up on the connection (1006, which no peer may send).
        answer = self.close_code
        if answer is not None and answer != protocol.ABNORMAL_CLOSURE:
            conn.received_close(answer)
        return result


async def fail(ws: web.WebSocketResponse, transport: Any, code: int, message: bytes) -> None:
    """Fail the connection: close with ``code``, and drop the transport at once rather
    than wait for the peer's answer, which the gate (echo.listeners) no longer passes on.
    """
    closing = asyncio.ensure_future(ws.close(code=code, message=message))
    await asyncio.sleep(0)  # close() writes its frame in its first step, then waits
    if transport is not None:
        transport.close()
    await closing


class PlainSession:
    """One connection on the plain engine: the echo loop, and closes asked of it."""

    inline_echo = True  # False: every data message goes through echo() (controls)

    def __init__(self, ws: PlainResponse, conn: Connection, app: App) -> None:
        self.ws = ws
        self.conn = conn
        self.app = app
        self.task: asyncio.Task[Any] | None = None
        self.closing = False  # the loop is closing: nothing to interrupt
        self.interrupting = False  # we cancelled the loop's wait, it has not seen it yet
        self.requested: tuple[int, bytes] | None = None  # a close asked for from elsewhere
        self.failing = False  # the requested close fails the connection (echo.engine.plain.fail)
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.broken: tuple[int, bytes] = (protocol.INTERNAL_ERROR, b"")  # set by take()
        # Read once per connection, not per message: the settings and the log level
        # do not change while the server runs.
        self.limit = app.settings.max_message_size
        self.sizes = app.sizes
        self.counts_binary = self.sizes is not None
        # The first two bucket bounds of the size histogram (one, if it has one only).
        bounds = (0, 0) if self.sizes is None else self.sizes.bounds
        self.smallest, self.small = bounds[0], bounds[min(1, len(bounds) - 1)]
        self.debug = log.isEnabledFor(logging.DEBUG)

    async def close(self, *, code: int, message: bytes) -> None:
        """Have the loop close with ``code`` (it may be waiting in receive(), where a
        close from another task would not read the peer's answer); return once the
        connection is over."""
        if self.requested is None:
            self.requested = (code, message)
        if self.task is not asyncio.current_task():
            self._interrupt()
        await asyncio.shield(self.done)

    def _interrupt(self) -> None:
        """Cancel what the loop waits for (receive or send), once: it closes next."""
        task = self.task
        if task is not None and not self.closing and not self.interrupting:
            self.interrupting = True
            task.cancel()

    def too_big(self) -> None:
        """The gate stopped the stream at a frame that takes its message past
        MAX_MESSAGE_SIZE: fail the connection with 1009."""
        self.app.peer_error(self.conn, "message over limit")
        if self.requested is None:
            self.requested = (protocol.MESSAGE_TOO_BIG, b"message too big")
            self.failing = True
        self._interrupt()

    async def run(self) -> None:
        """Echo until the connection ends; an error of ours closes it with 1011."""
        self.task = asyncio.current_task()
        ws, conn = self.ws, self.conn
        try:
            await self.loop()
        except ConnectionError:
            pass  # the peer vanished mid-send: an abnormal closure, not our fault
        except Exception as error:
            self.app.internal_error(conn, error)
            await self.shut(protocol.INTERNAL_ERROR, b"internal error")
        finally:
            if isinstance(ws.exception(), asyncio.TimeoutError) and ws.echo_transport:
                # No pong within the heartbeat: the peer is gone; over TLS a graceful
                # close would wait for its close_notify (ssl_shutdown_timeout) for nothing.
                ws.echo_transport.abort()
            if not self.done.done():
                self.done.set_result(None)

    async def loop(self) -> None:
        ws = self.ws
        receive = ws.receive
        send_frame = ws.send_frame
        take = self.take
        sent = self.sent
        # Without controls a message is echoed here, without the coroutines of echo(),
        # received() and send() (a fifth of the plain engine's time per message).
        inline = self.inline_echo
        text, binary = WSMsgType.TEXT, WSMsgType.BINARY
        while True:
            if self.requested is not None:
                await self.shut(*self.requested)
                return
            try:
                msg = await receive()
            except asyncio.CancelledError:
                if not self._asked_to_close():
                    raise
                continue
            except TimeoutError:  # receive_timeout, set without a heartbeat: silent too long
                await self.shut(protocol.GOING_AWAY, IDLE_MESSAGE)
                return
            kind = msg.type
            if kind is text or kind is binary:
                try:
                    if not inline:
                        if not await self.echo(kind, msg.data):
                            return
                        continue
                    payload = take(kind, msg.data)
                    if payload is None:
                        await self.shut(*self.broken)
                        return
                    await send_frame(payload, kind)
                    sent(kind, len(payload))
                except asyncio.CancelledError:
                    if not self._asked_to_close():
                        raise
            elif kind is WSMsgType.CLOSE:
                self.conn.received_close(msg.data)
                # The peer closes its end next: no point waiting for our frame to drain.
                await self.shut(protocol.close_reply(msg.data), b"", drain=False)
                return
            elif kind is WSMsgType.ERROR:
                self.failed(msg.data)
                return
            elif kind is WSMsgType.PING or kind is WSMsgType.PONG:
                continue  # without autoping (the ignore_pings control): never answered
            else:  # CLOSING or CLOSED: aiohttp is done with it
                return

    def _asked_to_close(self) -> bool:
        """After a CancelledError: whether it is :meth:`close`'s (the loop then closes)
        rather than aiohttp's (the handler is being cancelled, which goes on)."""
        task = self.task
        if not self.interrupting or task is None or task.cancelling() > 1:
            return False
        task.uncancel()
        self.interrupting = False
        return True

    async def echo(self, kind: WSMsgType, data: bytes | str) -> bool:
        """Echo one data message; False if it closed the connection instead."""
        payload = await self.received(kind, data)
        if payload is None:
            return False
        await self.send(kind, data, payload)
        return True

    async def received(self, kind: WSMsgType, data: bytes | str) -> bytes | None:
        """Check a data message against the promises (UTF-8, size limit) and count it
        in; its payload, or None if it closed the connection instead."""
        payload = self.take(kind, data)
        if payload is None:
            await self.shut(*self.broken)
        return payload

    def take(self, kind: WSMsgType, data: bytes | str) -> bytes | None:
        """:meth:`received` up to the close: the payload of a data message that keeps
        the promises, counted in; None if it breaks one (its close in ``broken``)."""
        conn = self.conn
        payload = data.encode() if isinstance(data, str) else data
        size = len(payload)
        if kind is WSMsgType.TEXT and payload is data and not protocol.is_utf8(payload):
            self.app.peer_error(conn, "invalid UTF-8 text")
            self.broken = (protocol.INVALID_PAYLOAD, b"invalid UTF-8")
            return None
        if size > self.limit:
            self.app.peer_error(conn, f"message of {size} bytes over limit")
            self.broken = (protocol.MESSAGE_TOO_BIG, b"message too big")
            return None
        conn.messages_in += 1
        conn.bytes_in += size
        sizes = self.sizes
        if sizes is not None:
            # Small messages, the common case, without observe()'s bisect call.
            if size <= self.small:
                sizes.sizes[0 if size <= self.smallest else 1] += 1
            else:
                sizes.observe(size)
            if kind is WSMsgType.BINARY:
                conn.binary_in += 1
                conn.binary_bytes_in += size
        if self.debug:
            log.debug(
                "message id=%s %s %d bytes %s",
                conn.id,
                kind.name.lower(),
                size,
                preview(payload, 60),
            )
        return payload

    async def send(self, kind: WSMsgType, data: bytes | str, payload: bytes) -> None:
        """Send a data message (``data`` as received, ``payload`` its bytes) and count
        it out."""
        if kind is WSMsgType.BINARY:
            await self.ws.send_bytes(payload)
        elif isinstance(data, str):
            await self.ws.send_str(data)
        else:
            await self.ws.send_frame(payload, WSMsgType.TEXT)
        self.sent(kind, len(payload))

    def sent(self, kind: WSMsgType, size: int) -> None:
        """Count a data message the server sent."""
        conn = self.conn
        conn.messages_out += 1
        conn.bytes_out += size
        if kind is WSMsgType.BINARY and self.counts_binary:
            conn.binary_out += 1
            conn.binary_bytes_out += size

    def failed(self, error: BaseException) -> None:
        """receive() returned an error; aiohttp has closed already (our close() chose
        the code): the peer's protocol violation, a heartbeat timeout, or our bug."""
        fault = protocol.peer_fault(error)
        if fault is not None:
            gate = gate_of(self.ws.echo_transport)
            failure = None if gate is None else gate.failure  # ours, not aiohttp's words
            self.app.peer_error(self.conn, failure or fault)
        elif not isinstance(error, asyncio.TimeoutError):  # the heartbeat's: peer gone
            self.app.internal_error(self.conn, error)

    async def shut(self, code: int, message: bytes, *, drain: bool = True) -> None:
        """Close with ``code``, within a bound: a peer that reads nothing would keep
        aiohttp's close draining forever; then the transport is dropped."""
        self.closing = True
        try:
            async with asyncio.timeout(2 * CLOSE_TIMEOUT):
                if self.failing:
                    await fail(self.ws, self.ws.echo_transport, code, message)
                else:
                    await self.ws.close(code=code, message=message, drain=drain)
        except TimeoutError:
            if self.ws.echo_transport is not None:
                self.ws.echo_transport.abort()


class PlainEngine:
    """Serves every connection with aiohttp's public WebSocket API."""

    name = "plain"

    def install(self, app: web.Application) -> None:
        pass  # aiohttp's own heartbeat, one timer per connection: nothing app-wide

    def runner(self, app: web.Application, **options: Any) -> web.AppRunner:
        return web.AppRunner(app, **options)

    def protocols(
        self, runner: web.BaseRunner, options: dict[str, Any]
    ) -> Callable[[], asyncio.Protocol]:
        """aiohttp's connection protocol with error answers that quote nothing of the
        request (echo.httperrors.ErrorPages: ``handle_error`` is aiohttp's public hook),
        made as ``runner.server()`` makes it."""
        server = runner.server
        assert server is not None, "runner.setup() first"
        loop = asyncio.get_running_loop()

        def protocol() -> asyncio.Protocol:
            return ErrorPages(server, loop=loop, **options)

        return protocol

    def listening(self, runner: web.BaseRunner) -> None:
        pass  # aiohttp sets TCP_NODELAY on each connection itself

    async def accept(self, request: web.Request, conn: Connection, app: App) -> web.StreamResponse:
        settings = app.settings
        transport = request.transport
        options: dict[str, Any] = {
            "protocols": subprotocols(request, settings),
            "autoping": True,
            "autoclose": False,  # the loop answers close frames, with the code they deserve
            "heartbeat": settings.heartbeat_interval,
            "compress": settings.compression,
            # aiohttp refuses a plain frame of exactly max_msg_size bytes but accepts
            # one byte more when decompressing; echo() checks the rest.
            "max_msg_size": settings.max_message_size + 1,
            "timeout": CLOSE_TIMEOUT,
        }
        controls = conn.controls
        if controls is not None:  # test controls (echo.engine.controlled)
            from echo.engine import controlled

            options.update(controlled.response_options(controls, settings))
        ws = PlainResponse(conn, transport, **options)
        writer = await ws.prepare(request)
        session: PlainSession
        if controls is None:
            session = PlainSession(ws, conn, app)
        else:
            info = app.describe(request, conn, ws) if controls.info else None
            session = controlled.ControlledSession(ws, conn, app, controls, writer, info)
        app.opened(session, conn)
        try:
            gate = gate_of(transport)
            if gate is not None:  # absent under aiohttp's own sites (adev): no checks
                gate.upgraded(session.too_big)
            await session.run()
        finally:
            app.ended(session, conn)
        return ws
