"""The aiohttp facts the fast engine relies on, one test each, with the reason.

The fast engine (echo/engine/fast/) reads, calls and overrides aiohttp's private names;
the start-up self-check (echo.engine.fast.checks) only sees that they exist. These tests
assert what they do, so that an aiohttp upgrade fails here first, with a message that
says which fact broke and what in the fast engine depends on it. After an upgrade that
passes them (and ``make test``), add the release to TESTED_AIOHTTP.

The last tests are facts every engine relies on (public API, but behaviour that the
gate and listeners build on): they run on any aiohttp.
"""

from __future__ import annotations

import asyncio
from collections import deque
from importlib import metadata
from typing import Any

import pytest
from aiohttp import WebSocketError, WSCloseCode, WSMsgType, web

from echo.engine import fast
from echo.listeners import FAIL_FRAME
from tests.wsraw import OP_CLOSE, OP_PING, OP_TEXT, RawWebSocket, encode_frame

FAST = fast.unavailable() is None
fast_only = pytest.mark.skipif(
    not FAST, reason=f"the fast engine does not run here: {fast.unavailable()}"
)


async def handler(request: web.BaseRequest) -> web.StreamResponse:
    return web.Response()


class FakeProtocol:
    """What aiohttp's WebSocket queue asks of its connection protocol."""

    def __init__(self) -> None:
        self._paused = False
        self._reading_paused = False
        self.paused_reading = 0

    def pause_reading(self) -> None:
        self._reading_paused = True
        self.paused_reading += 1

    def resume_reading(self) -> None:
        self._reading_paused = False


class FakeTransport:
    def __init__(self) -> None:
        self.written = bytearray()
        self.closed = False

    def write(self, data: bytes) -> None:
        self.written += data

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default


@fast_only
async def test_the_frame_parser_feeds_its_queue_with_type_payload_tuples() -> None:
    """EchoQueue.feed_data (fastpath) reads ``data[0]`` as the WSMsgType and ``data[1]``
    as the payload bytes (decode_text=False), with the size as second argument: that is
    how it echoes from inside the parser."""
    from aiohttp._websocket.reader import WebSocketDataQueue, WebSocketReader

    fed: list[tuple[Any, int]] = []

    class Recording(WebSocketDataQueue):
        def feed_data(self, data: Any, size: int) -> None:
            fed.append((data, size))

    queue = Recording(FakeProtocol(), 65536, loop=asyncio.get_running_loop())  # type: ignore[arg-type]
    parser = WebSocketReader(queue, 1 << 20, compress=False, decode_text=False)
    parser.feed_data(encode_frame(OP_TEXT, b"hi") + encode_frame(OP_PING, b"p"))
    assert [(d[0], d[1], size) for d, size in fed] == [
        (WSMsgType.TEXT, b"hi", 2),
        (WSMsgType.PING, b"p", 1),
    ]


@fast_only
async def test_the_queue_keeps_messages_in_a_buffer_and_pauses_reading_when_full() -> None:
    """EchoQueue checks ``_buffer`` (order: nothing may overtake a queued message) and its
    protocol's ``_paused``; WebSocketDataQueue.feed_data(data, size) appends to
    ``_buffer`` and pauses the protocol's reading past twice its limit (back-pressure)."""
    from aiohttp._websocket.reader import WebSocketDataQueue

    protocol = FakeProtocol()
    queue = WebSocketDataQueue(protocol, 10, loop=asyncio.get_running_loop())  # type: ignore[arg-type]
    queue.feed_data((WSMsgType.TEXT, b"x" * 30, ""), 30)  # type: ignore[arg-type]
    assert isinstance(queue._buffer, deque)
    assert len(queue._buffer) == 1
    assert protocol.paused_reading == 1
    assert (await queue.read())[1] == b"x" * 30
    queue.set_exception(WebSocketError(1002, "bad"))
    assert queue.exception() is not None
    queue.feed_eof()
    assert queue.is_eof()


@fast_only
def test_the_frame_writer_writes_a_frame_at_once() -> None:
    """EchoQueue writes echoes, pongs and close replies with
    WebSocketWriter._write_websocket_frame(payload, opcode, compress) from the parser's
    callback: it must write synchronously, unmasked (server side), to the transport."""
    from aiohttp._websocket.helpers import PACK_CLOSE_CODE
    from aiohttp._websocket.writer import WebSocketWriter

    transport = FakeTransport()
    writer = WebSocketWriter(FakeProtocol(), transport)  # type: ignore[arg-type]
    writer._write_websocket_frame(b"abc", WSMsgType.TEXT, 0)
    writer._write_websocket_frame(PACK_CLOSE_CODE(1001), WSMsgType.CLOSE, 0)
    assert bytes(transport.written) == b"\x81\x03abc" + b"\x88\x02\x03\xe9"
    assert writer.transport is transport  # type: ignore[comparison-overlap]
    assert writer._closing is False


@fast_only
def test_post_start_is_where_the_response_gets_its_queue_and_parser() -> None:
    """EchoResponse overrides _post_start(request, protocol, writer) to install its own
    queue and parser; aiohttp's prepare() must still call it after the 101 is prepared,
    with the writer as third argument, and set the parser through the protocol."""
    import inspect

    source = inspect.getsource(web.WebSocketResponse.prepare)
    assert "self._post_start(request, protocol, writer)" in source
    assert list(inspect.signature(web.WebSocketResponse._post_start).parameters) == [
        "self",
        "request",
        "protocol",
        "writer",
    ]
    post_start = inspect.getsource(web.WebSocketResponse._post_start)
    assert "request.protocol.set_parser(" in post_start


@fast_only
def test_prepare_headers_runs_before_the_response_hooks_and_the_head_is_written() -> None:
    """EchoResponse overrides _prepare_headers (no Date, no Server on the 101); it must
    be awaited by StreamResponse._start, before on_response_prepare and the write."""
    import inspect

    start = inspect.getsource(web.StreamResponse._start)
    assert start.index("self._prepare_headers()") < start.index("_prepare_hook")
    assert start.index("_prepare_hook") < start.index("_write_headers")


@fast_only
def test_start_is_where_the_head_is_written_and_the_hooks_run() -> None:
    """EchoResponse overrides StreamResponse._start(request) to write the 101 without
    the on_response_prepare hooks: prepare() must call it, and it must do no more than
    take the request's payload writer, prepare the headers, run the hooks and write
    the head (status line and headers through the writer, sent at once)."""
    import inspect

    from aiohttp.http_writer import StreamWriter

    assert "return await self._start(request)" in inspect.getsource(web.StreamResponse.prepare)
    start = inspect.getsource(web.StreamResponse._start)
    body = [line.strip() for line in start.splitlines()[1:] if line.strip()]
    assert body == [
        "self._req = request",
        "writer = self._payload_writer = request._payload_writer",
        "await self._prepare_headers()",
        "await request._prepare_hook(self)",
        "await self._write_headers()",
        "return writer",
    ]
    write = inspect.getsource(web.StreamResponse._write_headers)
    assert 'status_line = f"HTTP/{version[0]}.{version[1]} {self._status} {self._reason}"' in write
    assert "await writer.write_headers(status_line, self._headers)" in write
    assert "writer.send_headers()" in write
    assert web.WebSocketResponse()._send_headers_immediately
    assert "send_headers" in StreamWriter.__dict__


@fast_only
def test_the_connection_protocol_has_the_state_detaching_sets() -> None:
    """EchoRequestHandler.detach sets ``_force_close`` (so the connection task does not
    close the transport after the handler) and swaps ``_messages``; data_received feeds
    ``_payload_parser``; connection_lost feeds it EOF (EchoQueue.feed_eof ends it)."""
    import inspect

    from aiohttp.web_protocol import RequestHandler

    for name in ("_force_close", "_messages", "_task_handler", "_payload_parser", "_manager"):
        assert name in RequestHandler.__slots__, name
    lost = inspect.getsource(RequestHandler.connection_lost)
    assert "self._payload_parser.feed_eof()" in lost
    start = inspect.getsource(RequestHandler.start)
    assert "if not self._force_close:" in start, "the transport is kept when force-closed"
    received = inspect.getsource(RequestHandler.data_received)
    assert "if self._force_close or self._close:" in received


@fast_only
def test_the_low_level_server_can_be_copied_into_ours() -> None:
    """EchoHTTPServer copies a web.Server (its handler, factory, cancellation flag,
    ``_loop`` and ``_kwargs``) and builds EchoRequestHandler(self, loop=, **kwargs)."""
    server = web.Server(handler, loop=asyncio.new_event_loop(), keepalive_timeout=5)
    try:
        assert server._kwargs == {"keepalive_timeout": 5}
        for name in ("request_handler", "request_factory", "handler_cancellation", "_loop"):
            assert hasattr(server, name), name
    finally:
        server._loop.close()


@fast_only
def test_the_heartbeat_methods_the_shared_timer_calls() -> None:
    """The shared heartbeat calls WebSocketResponse._send_heartbeat (the ping, and the
    pong timeout in ``_pong_response_cb``) and overrides _pong_not_received, which
    closes with 1006 through _handle_ping_pong_exception."""
    import inspect

    send = inspect.getsource(web.WebSocketResponse._send_heartbeat)
    assert "self._pong_response_cb = loop.call_at(" in send
    assert "WSMsgType.PING" in send
    missed = inspect.getsource(web.WebSocketResponse._pong_not_received)
    assert "_handle_ping_pong_exception" in missed


@fast_only
def test_receive_closes_with_the_parsers_code_and_reports_other_errors_with_1000() -> None:
    """The fast engine's close() turns receive()'s default 1000 after a generic error
    into 1011 (``_exception`` set), and leaves aiohttp's own codes (WebSocketError) be;
    after the peer's close frame receive() sets ``_closing`` and keeps its code."""
    import inspect

    receive = inspect.getsource(web.WebSocketResponse.receive)
    assert "await self.close(code=exc.code)" in receive
    assert "self._exception = exc" in receive
    assert "self._set_closing(msg.data)" in receive


def test_the_fast_engine_is_chosen_only_on_a_tested_release() -> None:
    """The version gate itself: on an untested release unavailable() names it."""
    version = metadata.version("aiohttp")
    reason = fast.unavailable()
    if version in fast.TESTED_AIOHTTP:
        assert reason is None, reason
    else:
        assert reason is not None
        assert version in reason


# -- facts every engine relies on ----------------------------------------------------


async def bare_exchange(send: bytes) -> tuple[bytes, list[tuple[WSMsgType, Any]]]:
    """``send`` after the upgrade to a bare aiohttp WebSocket handler (public API only,
    as aiohttp documents it); return what came back and the messages it received."""
    received: list[tuple[WSMsgType, Any]] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        while not ws.closed:
            msg = await ws.receive()
            received.append((msg.type, msg.data))
        return ws

    app = web.Application()
    app.router.add_get("/", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(RawWebSocket.upgrade_request("127.0.0.1", port) + send)
        await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        answer = await asyncio.wait_for(reader.read(), 5)
        writer.close()
        await writer.wait_closed()
    finally:
        await runner.cleanup()
    return answer, received


async def test_a_fragmented_control_frame_fails_the_connection_with_1002() -> None:
    """The gate (echo.listeners) hands aiohttp FAIL_FRAME in place of an unmasked frame,
    so that aiohttp fails the connection with 1002, as it fails its own protocol errors:
    the messages before it delivered, then an ERROR, close 1002 and the transport closed."""
    answer, received = await bare_exchange(encode_frame(OP_TEXT, b"ok") + FAIL_FRAME)
    assert answer == b"\x88\x02\x03\xea"  # close 1002, then the server hung up
    assert received[0] == (WSMsgType.TEXT, "ok")
    assert received[1][0] is WSMsgType.ERROR
    assert isinstance(received[1][1], WebSocketError)
    assert received[1][1].code == WSCloseCode.PROTOCOL_ERROR


async def test_a_close_frames_code_is_the_close_messages_data() -> None:
    """Engines record the peer's code from ``msg.data`` of the CLOSE message: 0 when the
    frame carries none (reported as 1005)."""
    for payload, code in ((b"\x0f\xa1bye", 4001), (b"", 0)):
        _answer, received = await bare_exchange(encode_frame(OP_CLOSE, payload))
        assert received[0] == (WSMsgType.CLOSE, code)


async def test_a_low_level_server_is_a_protocol_factory() -> None:
    """echo.listeners passes ``runner.server()`` protocols to loop.create_server (aiohttp
    documents web.Server as a protocol factory for it)."""
    server = web.Server(handler)
    protocol = server()
    assert isinstance(protocol, asyncio.Protocol)
    for name in ("connection_made", "data_received", "eof_received", "connection_lost"):
        assert callable(getattr(protocol, name)), name
    for name in ("pause_writing", "resume_writing"):
        assert callable(getattr(protocol, name)), name
