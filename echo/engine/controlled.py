"""Test controls on the plain engine: one connection behaves as its URL asked.

A connection whose query string carried test controls (echo.controls) runs on the
plain engine as a :class:`ControlledSession`, the plain engine's session with the
controls applied at the points its loop offers: the WebSocketResponse's options
(:func:`response_options`: no autoping, no heartbeat, no compression), what happens to
each message that passed the server's checks (:meth:`ControlledSession.echo`: held,
fragmented, not echoed, counted towards a close or a drop), and tasks that run beside
the loop (the first ``info`` message, deadlines, pings and pushes of the server's
own). Public aiohttp API only.

Every server promise still holds: the loop still checks UTF-8 and the size limit,
answers close frames and closes every connection (shutdown's 1001 included); the
heartbeat runs unless ``heartbeat=off`` (which keeps a silence limit instead); counts
go to the same record (metrics and the close log line, which names the controls).
Nothing waits without a bound:

- held echoes (``delay``, ``jitter``) wait in :class:`Held`, at most
  :data:`HELD_MESSAGES` messages and max(MAX_MESSAGE_SIZE, :data:`HELD_BYTES`) bytes;
  beyond that the loop stops reading, and aiohttp's reader, then TCP, push back;
- pushes are paced by the clock and sent only once the transport has drained
  (``AbstractStreamWriter.drain``), so a peer that does not read gets no more than the
  transport's buffer; missed ticks are skipped, never caught up in a burst; their
  rate was checked against PUSH_MAX_RATE before the upgrade;
- fragments (``fragment``) are frames of our own (aiohttp's ``send_frame`` always sets
  FIN; see echo.fragments) written to the transport in chunks of about 64 KiB, each
  after the transport has drained; compression is not offered on such connections;
- a drop (``drop_after``) closes the transport once what was sent has gone out, and
  aborts it if that has not happened within CLOSE_TIMEOUT;
- with ``heartbeat=off`` no pong timeout ends a peer that stops reading while the
  server waits to send; each wait to send is bounded by the silence limit instead
  (:meth:`ControlledSession.bounded`), past which the connection is dropped (1006).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
from collections import deque
from collections.abc import AsyncIterator, Coroutine
from typing import Any

from aiohttp import WSMsgType
from aiohttp.abc import AbstractStreamWriter

from echo import protocol
from echo.config import ServerSettings
from echo.controls import Controls
from echo.engine import App, Connection
from echo.engine.plain import PlainResponse, PlainSession
from echo.fragments import fragment_frames
from echo.listeners import CLOSE_TIMEOUT

HELD_MESSAGES = 1000  # echoes held back at most, per connection
HELD_BYTES = 1 << 20  # and their bytes, unless MAX_MESSAGE_SIZE is larger


def response_options(controls: Controls, settings: ServerSettings) -> dict[str, Any]:
    """What the controls change in the WebSocketResponse's options."""
    options: dict[str, Any] = {}
    if controls.ignore_pings:
        options["autoping"] = False  # pings reach the loop, which ignores them
    if not controls.heartbeat:
        options["heartbeat"] = None
        # Still bounded: a connection that hears nothing for this long is closed.
        options["receive_timeout"] = settings.silence_limit
    if controls.fragment is not None:
        options["compress"] = False  # our own frames cannot carry compressed data
    return options


def push_payload(sequence: int, size: int) -> bytes:
    """A pushed message: its sequence number (from 1), a space, dots up to ``size``
    bytes (cut to ``size`` if shorter than the number)."""
    head = b"%d " % sequence
    return (head + b"." * (size - len(head)))[:size]


class Held:
    """Echoes held back for their time, in arrival order, bounded in count and bytes.

    One producer (the loop) and one consumer (the sender task): each waits on
    ``changed`` only while the other has work to do.
    """

    def __init__(self, max_messages: int, max_bytes: int) -> None:
        self.max_messages = max_messages
        self.max_bytes = max_bytes
        self.items: deque[tuple[float, WSMsgType, bytes | str, bytes]] = deque()
        self.bytes = 0
        self.changed = asyncio.Event()

    def full_for(self, size: int) -> bool:
        if not self.items:
            return False  # one message is always admitted, however large
        return len(self.items) >= self.max_messages or self.bytes + size > self.max_bytes

    async def put(self, due: float, kind: WSMsgType, data: bytes | str, payload: bytes) -> None:
        while self.full_for(len(payload)):
            self.changed.clear()
            await self.changed.wait()
        self.items.append((due, kind, data, payload))
        self.bytes += len(payload)
        self.changed.set()

    async def get(self) -> tuple[float, WSMsgType, bytes | str, bytes]:
        while not self.items:
            self.changed.clear()
            await self.changed.wait()
        item = self.items.popleft()
        self.bytes -= len(item[3])
        self.changed.set()
        return item


class ControlledSession(PlainSession):
    """A plain-engine session that applies its connection's test controls."""

    inline_echo = False  # echo() below applies them

    def __init__(
        self,
        ws: PlainResponse,
        conn: Connection,
        app: App,
        controls: Controls,
        writer: AbstractStreamWriter,
        info: dict[str, Any] | None,
    ) -> None:
        super().__init__(ws, conn, app)
        self.controls = controls
        self.writer = writer  # prepare()'s: its drain() waits while the peer is not reading
        self.info = info
        self.count = 0  # messages echoed (or, when silent, received)
        self.sending = asyncio.Lock()  # data frames never interleave (fragments)
        self.tasks: list[asyncio.Task[None]] = []
        self.held: Held | None = None
        # heartbeat=off: nothing else ends a peer that stopped reading while we send.
        self.send_limit = None if controls.heartbeat else app.settings.silence_limit
        if controls.holds:
            limit = max(app.settings.max_message_size, HELD_BYTES)
            self.held = Held(HELD_MESSAGES, limit)

    # -- the loop's points ------------------------------------------------------------

    async def run(self) -> None:
        try:
            await super().run()
        finally:
            for task in self.tasks:
                task.cancel()
            if self.tasks:
                await asyncio.gather(*self.tasks, return_exceptions=True)

    async def loop(self) -> None:
        """Send the info first, start the tasks beside the loop, then loop."""
        controls = self.controls
        if self.info is not None:
            await self.send_data(WSMsgType.TEXT, json.dumps(self.info).encode())
        if not self.after(0):
            return
        if self.held is not None:
            self.spawn(self.release_held())
        if controls.close_after_ms is not None:
            self.spawn(self.close_at(controls.close_after_ms / 1000))
        if controls.drop_after_ms is not None:
            self.spawn(self.drop_at(controls.drop_after_ms / 1000))
        if controls.ping_every is not None:
            self.spawn(self.ping(controls.ping_every / 1000))
        if controls.push_every is not None:
            self.spawn(self.push(controls.push_every / 1000))
        await super().loop()

    async def echo(self, kind: WSMsgType, data: bytes | str) -> bool:
        payload = await self.received(kind, data)
        if payload is None:
            return False
        controls = self.controls
        if controls.silent:
            self.count += 1
            return self.after(self.count)
        if self.held is not None:
            wait = controls.delay + random.uniform(0, controls.jitter)
            due = asyncio.get_running_loop().time() + wait / 1000
            await self.held.put(due, kind, data, payload)
            return True
        await self.send(kind, data, payload)
        self.count += 1
        return self.after(self.count)

    async def send(self, kind: WSMsgType, data: bytes | str, payload: bytes) -> None:
        size = self.controls.fragment
        if size is None or len(payload) <= size:
            async with self.sending, self.bounded():
                await super().send(kind, data, payload)
            return
        async with self.sending, self.bounded():
            transport = self.writer.transport
            for chunk in fragment_frames(payload, int(kind), size):
                if self.ws.closed or transport is None or transport.is_closing():
                    raise ConnectionResetError("closed while sending fragments")
                transport.write(chunk)
                await self.writer.drain()
            self.sent(kind, len(payload))

    # -- what the controls do ---------------------------------------------------------

    def after(self, count: int) -> bool:
        """After ``count`` messages: drop or ask to close if a control says so; False
        if the connection is being dropped (the loop ends)."""
        controls = self.controls
        if controls.drop_after is not None and count >= controls.drop_after:
            self.drop()
            return False
        reached = controls.close_after is not None and count >= controls.close_after
        if reached and self.requested is None:
            # The loop closes at its next turn (a close from its own task cannot wait).
            self.requested = (controls.close_code, controls.close_reason.encode())
        return True

    def drop(self) -> None:
        """End the TCP connection without a close frame: the peer sees 1006."""
        transport = self.ws.echo_transport
        if transport is None or transport.is_closing():
            return
        transport.close()  # after what was written has gone out
        asyncio.get_running_loop().call_later(CLOSE_TIMEOUT, transport.abort)

    async def send_data(self, kind: WSMsgType, payload: bytes) -> None:
        """A message of the server's own (info, pushes), after the transport drained."""
        async with self.sending, self.bounded():
            await self.writer.drain()
            await self.ws.send_frame(payload, kind)
            self.sent(kind, len(payload))

    @contextlib.asynccontextmanager
    async def bounded(self) -> AsyncIterator[None]:
        """A wait to send, within ``send_limit`` if there is one; past it the peer has
        read nothing for that long: the connection is dropped (the peer sees 1006)."""
        if self.send_limit is None:
            yield
            return
        try:
            async with asyncio.timeout(self.send_limit):
                yield
        except TimeoutError:
            transport = self.ws.echo_transport
            if transport is not None:
                transport.abort()
            raise ConnectionResetError("the peer read nothing within the silence limit") from None

    async def release_held(self) -> None:
        """Send each held echo at its time, in arrival order."""
        held = self.held
        assert held is not None
        loop = asyncio.get_running_loop()
        while True:
            due, kind, data, payload = await held.get()
            wait = due - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            await self.send(kind, data, payload)
            self.count += 1
            if not self.after(self.count):
                return
            if self.requested is not None:
                await self.close(code=self.requested[0], message=self.requested[1])
                return

    async def close_at(self, delay: float) -> None:
        await asyncio.sleep(delay)
        reason = self.controls.close_reason.encode()
        await self.close(code=self.controls.close_code, message=reason)

    async def drop_at(self, delay: float) -> None:
        await asyncio.sleep(delay)
        self.drop()

    async def ping(self, every: float) -> None:
        """Ping every ``every`` seconds (payload: the ping's number), never faster
        than the peer reads."""
        sequence = 0
        while not self.ws.closed:
            await asyncio.sleep(every)
            async with self.bounded():
                await self.writer.drain()
            sequence += 1
            await self.ws.ping(b"%d" % sequence)

    async def push(self, every: float) -> None:
        """Send a message of push_size bytes every ``every`` seconds, skipping the
        ticks missed while the transport was full."""
        controls = self.controls
        kind = WSMsgType.BINARY if controls.push_type == "binary" else WSMsgType.TEXT
        loop = asyncio.get_running_loop()
        due = loop.time() + every
        sequence = 0
        while not self.ws.closed:
            wait = due - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            sequence += 1
            await self.send_data(kind, push_payload(sequence, controls.push_size))
            due = max(due + every, loop.time())

    def spawn(self, work: Coroutine[Any, Any, None]) -> None:
        self.tasks.append(asyncio.ensure_future(self.guarded(work)))

    async def guarded(self, work: Coroutine[Any, Any, None]) -> None:
        """A task beside the loop: a connection gone is its normal end; anything else
        is our bug, which closes the connection with 1011."""
        try:
            await work
        except ConnectionError:
            pass
        except Exception as error:
            self.app.internal_error(self.conn, error)
            await self.close(code=protocol.INTERNAL_ERROR, message=b"internal error")
