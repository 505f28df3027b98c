"""The echo fast path: frames are answered from inside aiohttp's frame parser, and an
upgraded connection outlives its request handler.

Profiling the echo loop (py-spy, 50 connections x 32 B, one in flight) shows the
server's time going to the send and receive system calls and, for the rest, to the
hand-off between aiohttp's parser and the handler task: a future per message, a task
wake-up, then ``receive()`` and ``send_frame()`` coroutines. None of that is needed to
echo a frame. :class:`EchoResponse` is aiohttp's ``WebSocketResponse`` whose parser
feeds an :class:`EchoQueue`, which writes a TEXT or BINARY message straight back with
aiohttp's own frame writer, in the same callback that parsed it; it also answers a
ping with a pong (as aiohttp's autoping would), drops pongs, and answers a close frame
(:meth:`EchoResponse.answer_close`).

tracemalloc of idle connections shows the other half of the story: while the handler
runs, aiohttp keeps its connection task, the handler's task and coroutines and the
parsed upgrade request, about 5 KiB of the 13 KiB an idle WebSocket costs. With the
fast path doing the work, the handler has nothing left to do once the connection is
upgraded: :meth:`EchoResponse.detach` lets it return without closing the WebSocket (see
``echo.engine.fast.runner.EchoRequestHandler.detach`` for aiohttp's side) and frees all that.

Everything else takes the ordinary road through the queue to ``EchoServer.serve``,
woken by the queue (``wake``) and run in a short-lived task until the queue is empty:
any message while earlier ones are still queued or while one that ``receive()`` took is
not sent yet (order, :meth:`EchoQueue.read`), messages over the size limit or with
invalid UTF-8 (serve closes with 1009 / 1007), protocol errors, anything while the
transport is paused for writing (serve awaits the drain, and a full queue pauses
reading: back-pressure is kept), closing connections, compressed connections (the
compressor is shared with serve's sends) and debug logging (serve logs a preview).
Under aiohttp's own runner (adev's development server) nothing is detached and the
handler serves until the end, as aiohttp intends.

Replies are bounded like echoes: a ping that comes while the transport is paused for
writing is answered once writing resumes, with reading held until then
(:meth:`EchoQueue.owe_pong`), so a peer that pings and never reads cannot make the
server buffer pongs. And since echoing from the parser's callback never fills a
queue, aiohttp's back-pressure never pauses a peer that streams small frames and
reads its echoes: the connection protocol pauses it after a read budget instead
(``echo.engine.fast.runner.READ_BUDGET``), so it cannot hold the event loop.

With metrics on (METRICS=true), :class:`EchoQueue` also counts binary messages apart
and the size of each message in the shared histogram of echo.metrics.
:meth:`EchoResponse.close` and :meth:`EchoResponse.answer_close` record the close codes
sent and received on the connection's record (echo.engine.Connection).
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable
from typing import Any

from aiohttp import WSCloseCode, WSMsgType, web
from aiohttp._websocket.helpers import PACK_CLOSE_CODE
from aiohttp._websocket.reader import WebSocketDataQueue, WebSocketReader
from aiohttp.helpers import DEFAULT_CHUNK_SIZE

from echo.engine import Connection, Sizes, Traffic
from echo.engine.fast.heartbeat import Heartbeat
from echo.engine.fast.runner import EchoRequestHandler
from echo.framing import StreamTracker
from echo.listeners import closing, gate_of
from echo.protocol import INTERNAL_ERROR, close_reply, is_utf8

_TEXT = WSMsgType.TEXT
_BINARY = WSMsgType.BINARY
_PING = WSMsgType.PING
_PONG = WSMsgType.PONG
_CLOSE = WSMsgType.CLOSE


class EchoQueue(WebSocketDataQueue):
    """A WebSocketDataQueue that echoes plain data messages instead of queueing them.

    With metrics (``sizes`` is not None) it also counts binary messages apart and each
    message's size in the shared histogram of echo.metrics.
    """

    __slots__ = (
        "bounds",
        "counters",
        "ended",
        "held",
        "limit",
        "owed_pong",
        "response",
        "sizes",
        "transport",
        "wake",
        "write_frame",
    )

    def __init__(self, protocol: Any, limit: int, loop: Any, response: EchoResponse) -> None:
        super().__init__(protocol, limit, loop=loop)
        writer = response._writer
        assert writer is not None
        self.counters: Traffic | None = None  # set by EchoResponse.start_echo
        sizes = response._sizes
        self.bounds: tuple[int, ...] = () if sizes is None else sizes.bounds
        self.sizes: list[int] | None = None if sizes is None else sizes.sizes
        self.limit = 0
        self.response: EchoResponse | None = response
        self.transport: Any = writer.transport
        self.write_frame: Any = writer._write_websocket_frame
        self.wake: Callable[[], None] | None = None  # set by EchoResponse.detach
        self.ended: Callable[[], None] | None = None  # set by EchoResponse.detach
        # A message has left the queue for receive() and is not echoed yet (see read).
        self.held = False
        self.owed_pong: bytes | None = None  # see owe_pong

    async def read(self) -> Any:
        """aiohttp's read, for ``receive()``; nothing is echoed from the parser until
        the message it returns has been sent (:meth:`EchoResponse.send_frame`).

        Taking a message out of a full queue resumes the stalled parser inside aiohttp's
        read, before the message is returned: what that parse reaches must queue up
        behind it, not overtake it. So must whatever arrives while ``receive()`` waits.
        """
        self.held = True
        return await WebSocketDataQueue.read(self)

    def _keep(self, data: Any, size: int) -> None:
        """The ordinary road: queue the message for receive(), and wake its reader."""
        WebSocketDataQueue.feed_data(self, data, size)
        wake = self.wake
        if wake is not None:
            wake()

    def feed_eof(self) -> None:
        """The connection is lost (aiohttp's connection_lost feeds the parser EOF)."""
        WebSocketDataQueue.feed_eof(self)
        ended = self.ended
        if ended is not None:
            self.ended = None
            ended()

    def set_exception(self, exc: BaseException, *args: Any) -> None:
        WebSocketDataQueue.set_exception(self, exc, *args)
        wake = self.wake
        if wake is not None:
            wake()

    def _control(self, data: Any, size: int) -> None:
        """A control frame, or whatever else the parser queues, on the fast path.

        A ping is answered at once with aiohttp's frame writer, as aiohttp's autoping
        does inside ``receive()``, or once the transport takes writes again
        (:meth:`owe_pong`); a pong only proves the peer alive, which the gate has
        already noted for the heartbeat; a close frame is answered by
        :meth:`EchoResponse.answer_close` when nothing is before it and no
        ``receive()`` is waiting for it. Errors go to ``receive()``.
        """
        kind = data[0]
        response = self.response
        if (
            response is None
            or not response._autoping
            or response.closed
            or self.transport.is_closing()
        ):
            return self._keep(data, size)
        # Pings and pongs need not wait behind messages held back in the queue: a
        # control frame may come between data frames.
        if kind is _PONG:
            return None
        paused = self._protocol._paused
        if kind is _PING:
            if not paused:
                self.write_frame(data[1], _PONG, 0)
                return None
            if self.wake is not None:  # detached: our protocol holds reading for it
                self.owe_pong(data[1])
                return None
        if kind is _CLOSE and not (
            self._buffer or paused or self.held or response._closing or response._waiting
        ):
            response.answer_close(data[1])  # nothing before it, no receive() waiting
            return None
        return self._keep(data, size)

    def owe_pong(self, payload: bytes) -> None:
        """A ping came while the transport is paused for writing (the peer is not
        reading): its pong is sent once writing resumes, and until then the connection
        is not read, as aiohttp's queue stops reading messages it cannot echo.

        Only the latest ping's pong is kept (RFC 6455 5.5.3 allows answering only the
        most recent one), so a peer that pings and never reads costs at most one
        payload of 125 bytes, not a pong per ping.
        """
        first = self.owed_pong is None
        self.owed_pong = payload
        if first:
            protocol = self._protocol
            assert isinstance(protocol, EchoRequestHandler)  # detached
            protocol.hold_until_writable(self.pay_pong)

    def pay_pong(self) -> None:
        """Writing resumed: send the pong :meth:`owe_pong` kept."""
        payload, self.owed_pong = self.owed_pong, None
        transport = self.transport
        if payload is not None and transport is not None and not transport.is_closing():
            self.write_frame(payload, _PONG, 0)

    def feed_data(self, data: Any, size: int) -> None:
        counters = self.counters
        kind = data[0]
        if counters is None:
            return self._keep(data, size)
        if kind is not _TEXT and kind is not _BINARY:
            return self._control(data, size)
        if self._buffer or self.held or self._protocol._paused or self.transport.is_closing():
            return self._keep(data, size)
        payload: bytes = data[1]
        n = len(payload)
        if n > self.limit or (kind is _TEXT and not payload.isascii() and not is_utf8(payload)):
            return self._keep(data, size)
        response = self.response
        assert response is not None
        if response.closed:
            return self._keep(data, size)
        self.write_frame(payload, kind, 0)
        counters.messages_in += 1
        counters.bytes_in += n
        counters.messages_out += 1
        counters.bytes_out += n
        sizes = self.sizes
        if sizes is None:
            return None
        if kind is _BINARY:
            counters.binary_in += 1
            counters.binary_bytes_in += n
            counters.binary_out += 1
            counters.binary_bytes_out += n
        # Small messages, the common case, skip the bisect call (a few % of throughput).
        if n <= 64:
            sizes[0 if n <= 16 else 1] += 1
        else:
            sizes[bisect_left(self.bounds, n)] += 1
        return None


class UpgradedRequest:
    """Stands in for the request of a detached :class:`EchoResponse`.

    aiohttp's WebSocketResponse still reads ``_req.transport`` (to close it) and
    ``_req._protocol`` (its timeout rounding) after the upgrade; nothing else.
    """

    __slots__ = ("_protocol",)
    method = "GET"
    path = "/"
    task = None

    def __init__(self, protocol: EchoRequestHandler) -> None:
        self._protocol = protocol

    @property
    def protocol(self) -> EchoRequestHandler:
        return self._protocol

    @property
    def transport(self) -> Any:
        return self._protocol.transport


class EchoResponse(web.WebSocketResponse):
    """aiohttp's WebSocketResponse whose parser feeds an :class:`EchoQueue`.

    ``_post_start`` mirrors aiohttp's own (aiohttp 3.14), with our queue class. Made by
    :meth:`serving`, not by calling the class.
    """

    # Slots, not instance attributes: past aiohttp's own attributes, an instance dict
    # stops sharing keys and grows by about 1.5 KiB per connection.
    __slots__ = ("_beat_slot", "_beats", "_conn", "_frames", "_sizes")
    _beats: Heartbeat | None
    _beat_slot: int
    _frames: StreamTracker | None
    _sizes: Sizes | None
    _conn: Connection

    @classmethod
    def serving(
        cls,
        *,
        conn: Connection,
        heartbeat: Heartbeat | None,
        sizes: Sizes | None,
        frames: StreamTracker | None,
        protocols: tuple[str, ...],
        max_msg_size: int,
        timeout: float,
    ) -> EchoResponse:
        """The response for ``conn``, the record where :meth:`close` notes the close
        codes. ``heartbeat`` (or None) is the shared timer of echo.engine.fast.heartbeat
        that pings it when silent; ``sizes`` (or None, without metrics) the
        message-size histogram its queue counts in; ``frames`` the gate's tracker
        (echo.listeners), found if not given. The fast path answers pings itself
        (autoping), closes as the engine says (no autoclose), never compresses (offers
        go to the plain engine) and checks text itself (no decoding).

        No ``__init__`` of its own: one between the caller and aiohttp's, passing the
        keywords on, cost about 1 us per handshake (a dict of them made twice).
        """
        ws = cls(
            protocols=protocols,
            autoping=True,
            autoclose=False,
            heartbeat=None if heartbeat is None else heartbeat.interval,
            compress=False,
            max_msg_size=max_msg_size,
            decode_text=False,
            timeout=timeout,
        )
        ws._beats = heartbeat
        ws._beat_slot = 0
        ws._frames = frames
        ws._sizes = sizes
        ws._conn = conn
        return ws

    # The heartbeat is echo.engine.fast.heartbeat's shared timer, not one aiohttp timer per
    # connection, and incoming data is noticed by the gate's ``seen`` flag, not
    # by aiohttp's data_received_cb (a Python call per chunk received; aiohttp's own
    # also reschedules its timer with a loop.call_soon per loop tick that brings data,
    # about a tenth of the server's time when echoing small messages). The pong
    # timeout, when it fires, spares a connection that sent anything since the ping.

    # Identity, as aiohttp's StreamResponse defines it, without its Python-level
    # __hash__ call per dict operation (the server keys its connections by response).
    __hash__ = object.__hash__
    __eq__ = object.__eq__

    def beat(self) -> None:
        """The shared heartbeat's visit: ping if nothing came since the last visit."""
        frames = self._frames
        if frames is None or self._closed or self._closing:
            return
        if frames.seen:
            frames.seen = False
        elif self._pong_response_cb is None:
            self._send_heartbeat()  # aiohttp's: the ping, and the pong timeout

    def _pong_not_received(self) -> None:
        frames = self._frames
        if frames is not None and frames.seen:  # the peer is alive: a pong or data came
            self._pong_response_cb = None
            return
        super()._pong_not_received()
        request = self._req
        if self._closed and request is not None and request.transport is not None:
            # The peer is gone: over TLS a graceful close would wait for its close_notify.
            request.transport.abort()

    async def _prepare_headers(self) -> None:
        """The 101's headers are the handshake's (set by ``_pre_start``), nothing more.

        aiohttp's own adds Date, optional on a 1xx response (RFC 9110 6.6.1), and
        Server, which tells every client the Python and aiohttp versions; skipping
        both also spares a clock read and two header insertions per handshake.
        """
        self._keep_alive = False

    async def _start(self, request: Any) -> Any:
        """The 101 goes out as aiohttp's ``StreamResponse._start`` sends it, without
        the ``on_response_prepare`` hooks: the application's (echo.server's
        ``response_headers``) only takes Server and Date off a 101, which this
        response never adds (:meth:`_prepare_headers`). Spares about ten Python calls
        per handshake (the signal, the hook, its header look-ups)."""
        self._req = request
        writer = self._payload_writer = request._payload_writer
        self._keep_alive = False
        version = request.version
        status_line = f"HTTP/{version[0]}.{version[1]} {self._status} {self._reason}"
        await writer.write_headers(status_line, self._headers)
        writer.send_headers()
        return writer

    def _post_start(self, request: Any, protocol: str | None, writer: Any) -> None:
        self._ws_protocol = protocol
        self._writer = writer
        if self._beats is not None:
            self._beat_slot = self._beats.add(self)
        loop = self._loop
        assert loop is not None
        connection = request.protocol  # a property: read once
        queue = EchoQueue(connection, DEFAULT_CHUNK_SIZE, loop, self)  # no keywords: no dict
        self._reader = queue
        self._parser = WebSocketReader(
            queue, self._max_msg_size, compress=bool(self._compress), decode_text=self._decode_text
        )
        if self._frames is None:  # not given by FastEngine.accept
            gate = gate_of(request.transport)
            self._frames = None if gate is None else gate.tracker
        if self._frames is not None:  # the fast engine serves only connections with a gate
            self._frames.seen = True  # the handshake was the last sign of life
        connection.set_parser(self._parser)
        connection.keep_alive(False)
        # The HTTP parser is never used again once the frame parser is set (aiohttp
        # checks for None); dropping it frees about 1 KiB per idle connection.
        connection._parser = None

    async def close(
        self, *, code: int = WSCloseCode.OK, message: bytes = b"", drain: bool = True
    ) -> bool:
        """aiohttp's close, recording the close codes sent and received on the record.

        Every close frame the server sends goes through here, aiohttp's own for
        protocol errors (1002, 1007, 1009) included; after any other error receive()
        closes with its default 1000, which is ours to correct: 1011. The peer's code
        is known when its close came first (receive() kept its code and set
        ``_closing``), or when it answered ours inside aiohttp's close (the code is
        then set without ``_closing``; a timeout or lost transport leaves 1006, which
        no peer may send). When close() is called during receive() (shutdown), aiohttp
        closes the transport without reading the peer's answer.
        """
        conn = self._conn
        writer = self._writer
        if self._closed or writer is None:
            return await super().close(code=code, message=message, drain=drain)
        if self._exception is not None and code == WSCloseCode.OK:
            code, message = INTERNAL_ERROR, b"internal error"
        peer_first = self._closing and self._close_code != WSCloseCode.ABNORMAL_CLOSURE
        if peer_first:
            conn.received_close(self._close_code or 0)
        if not writer.transport.is_closing():
            conn.sent_close(code)
        closing(writer.transport)  # a peer that reads nothing cannot hold it past CLOSE_TIMEOUT
        result = await super().close(code=code, message=message, drain=drain)
        if not peer_first and not self._closing:
            answer = self._close_code
            if answer is not None and answer != WSCloseCode.ABNORMAL_CLOSURE:
                conn.received_close(answer)
        return result

    async def send_frame(
        self, message: bytes, opcode: WSMsgType, compress: int | None = None
    ) -> None:
        """aiohttp's send_frame; once the message that ``receive()`` returned is sent,
        the parser may echo again (see :meth:`EchoQueue.read`).

        aiohttp writes an uncompressed frame before its first await, so ``held`` is
        cleared with nothing else running between that and the write (compressed
        connections never echo from the parser).
        """
        queue = self._reader
        if isinstance(queue, EchoQueue):
            queue.held = False
        await super().send_frame(message, opcode, compress)

    def start_echo(self, counters: Traffic, max_message_size: int) -> None:
        """Begin echoing from the parser; until now messages waited in the queue."""
        # Compressed connections take the ordinary road: the compressor is shared
        # with serve()'s sends.
        if isinstance(self._reader, EchoQueue) and not self._compress:
            self._reader.limit = max_message_size
            self._reader.counters = counters

    @property
    def detachable(self) -> bool:
        """Whether the connection can go on after the handler returns (see detach)."""
        return self._req is not None and isinstance(self._req.protocol, EchoRequestHandler)

    def detach(self, wake: Callable[[], None], ended: Callable[[], None]) -> None:
        """Go on serving after the request handler returns; call ``wake`` whenever a
        message or error waits in the queue for ``receive()`` (no task is reading
        between such times), and ``ended`` once the connection is lost.

        While the handler runs, aiohttp keeps its connection task, the handler's task
        and coroutines and the parsed upgrade request alive: about 5 KiB per idle
        WebSocket, most of what it costs. Messages the fast path cannot echo are rare;
        ``wake`` starts a short-lived task for them.
        """
        request = self._req
        assert request is not None
        assert isinstance(self._reader, EchoQueue)
        protocol = request.protocol
        assert isinstance(protocol, EchoRequestHandler)
        self._reader.wake = wake
        self._reader.ended = ended
        # What this response still asks of its request (transport, protocol), without
        # the request itself: the parsed upgrade request can go.
        self._req = UpgradedRequest(protocol)  # type: ignore[assignment]
        protocol.detach()
        if self._reader.is_eof() and self._reader.exception() is None:
            self._reader.ended = None  # lost before it was detached: end it now
            ended()
        elif self._reader._buffer or self._reader.exception() is not None:
            wake()  # frames (or an error) that came with the upgrade request (pending)

    def answer_close(self, code: int) -> None:
        """Answer the peer's close frame at once, from the parser's callback.

        What ``receive()`` and then ``close(drain=False)`` do in aiohttp 3.14 when the
        peer closes first (as serve() would, with the reply of ``protocol.close_reply``),
        without a task: note the peer's code, send the reply, close the transport.
        Only when nothing is queued before it (the fast path's conditions).
        """
        writer = self._writer
        assert writer is not None
        self._set_closing(code)  # type: ignore[arg-type]  # aiohttp passes ints here too
        reply = close_reply(code)
        self._conn.received_close(code)
        self._conn.sent_close(reply)
        self._set_closed()
        writer._write_websocket_frame(PACK_CLOSE_CODE(reply), _CLOSE, 0)
        writer._closing = True
        self._close_transport()
        self._parser = None
        transport = writer.transport
        if transport is not None and transport.get_write_buffer_size():
            closing(transport)  # it ends once that has gone out, if the peer reads

    @property
    def pending(self) -> bool:
        """Whether receive() has something to return without waiting."""
        queue = self._reader
        assert queue is not None
        return bool(queue._buffer) or queue.exception() is not None or queue.is_eof()

    async def write_eof(self) -> None:  # type: ignore[override]
        """aiohttp's closes the WebSocket as the handler returns: not once detached."""
        if not isinstance(self._req, UpgradedRequest):
            await super().write_eof()

    def release(self) -> None:
        """Once the connection is over: stop echoing and break our reference cycles.

        The queue points back at this response and its writer. Left in place, that
        cycle keeps the whole connection (request, protocol, transport, buffers) alive
        until the cyclic garbage collector finds it, which under connection churn
        costs about a tenth of the server's time and the memory of every closed
        connection since the last collection. (aiohttp's own heartbeat makes another
        through the protocol's data_received_cb, which this response does not use.)
        """
        queue = self._reader
        if isinstance(queue, EchoQueue):
            queue.counters = None
            queue.response = None
            queue.transport = None
            queue.write_frame = None
            queue.wake = None
            queue.ended = None
            if queue.owed_pong is not None:
                queue.owed_pong = None
                if isinstance(queue._protocol, EchoRequestHandler):
                    queue._protocol.release_hold()
        if self._beats is not None:
            self._beats.discard(self, self._beat_slot)
