"""Messages come back exactly as sent: type, bytes and order, up to MAX_MESSAGE_SIZE."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest
from aiohttp import WSMsgType

from echo.server import SERVER_KEY
from tests.support import FAULT, ServerFactory, inject_fault, wait_until
from tests.wsraw import (
    OP_BINARY,
    OP_CLOSE,
    OP_CONT,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    RawWebSocket,
    close_payload,
    encode_frame,
)


def record_served(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The ids of the connections whose queue the fast engine serves in a task."""
    from echo.engine.fast.engine import FastLink

    served: list[str] = []
    original = FastLink.serve_queue

    async def recording(link: FastLink) -> None:
        served.append(link.conn.id)
        await original(link)

    monkeypatch.setattr(FastLink, "serve_queue", recording)
    return served


def serving_tasks() -> list[asyncio.Task[Any]]:
    """The fast engine's tasks serving a queue now."""
    return [
        t for t in asyncio.all_tasks() if "FastLink" in getattr(t.get_coro(), "__qualname__", "")
    ]


async def echo_once(ws: aiohttp.ClientWebSocketResponse, data: str | bytes) -> aiohttp.WSMessage:
    if isinstance(data, str):
        await ws.send_str(data)
    else:
        await ws.send_bytes(data)
    return await ws.receive(timeout=5)


@pytest.mark.parametrize(
    "payload",
    [
        "hello",
        "",
        "héllo wörld ✓ 𝄞 中文 🎉",
        b"\x00\x01\x02\xff" * 100,
        b"",
    ],
    ids=["text", "empty-text", "unicode", "binary", "empty-binary"],
)
@pytest.mark.parametrize("compress", [0, 15], ids=["plain", "deflate"])
async def test_message_is_echoed_with_its_type_and_bytes(
    start_app: ServerFactory, aiohttp_client: Any, payload: str | bytes, compress: int
) -> None:
    server = await start_app()
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(server.make_url("/"), compress=compress) as ws:
            assert bool(ws.compress) == bool(compress)
            reply = await echo_once(ws, payload)
    expected_type = WSMsgType.TEXT if isinstance(payload, str) else WSMsgType.BINARY
    assert reply.type is expected_type
    assert reply.data == payload


async def test_many_messages_come_back_in_order(start_app: ServerFactory) -> None:
    server = await start_app()
    sent = [f"m{i}" if i % 2 else f"b{i}".encode() for i in range(500)]
    async with aiohttp.ClientSession() as session, session.ws_connect(server.make_url("/")) as ws:
        for item in sent:
            if isinstance(item, str):
                await ws.send_str(item)
            else:
                await ws.send_bytes(item)
        received = [(await ws.receive(timeout=5)).data for _ in sent]
    assert received == sent


async def test_fragmented_message_is_reassembled(start_app: ServerFactory) -> None:
    server = await start_app()
    raw = await RawWebSocket.connect("127.0.0.1", server.port)
    await raw.send(OP_TEXT, b"frag", fin=False)
    await raw.send(OP_CONT, b"men", fin=False)
    await raw.send(OP_CONT, "ted ✓".encode(), fin=True)
    await raw.send(OP_BINARY, b"\x01", fin=False)
    await raw.send(OP_CONT, b"\x02", fin=True)
    text = await raw.recv_data()
    binary = await raw.recv_data()
    assert (text.fin, text.opcode, text.payload) == (True, OP_TEXT, "fragmented ✓".encode())
    assert (binary.fin, binary.opcode, binary.payload) == (True, OP_BINARY, b"\x01\x02")
    await raw.aclose()


@pytest.mark.parametrize("compress", [0, 15], ids=["plain", "deflate"])
async def test_message_at_the_limit_is_echoed_and_one_over_closes_1009(
    start_app: ServerFactory, compress: int
) -> None:
    limit = 64 * 1024
    server = await start_app(max_message_size=limit)
    async with aiohttp.ClientSession() as session:
        bystander = await session.ws_connect(server.make_url("/"))
        async with session.ws_connect(
            server.make_url("/"), max_msg_size=0, compress=compress
        ) as ws:
            reply = await echo_once(ws, b"x" * limit)
            assert reply.data == b"x" * limit
            await ws.send_bytes(b"x" * (limit + 1))
            closing = await ws.receive(timeout=5)
            assert closing.type is WSMsgType.CLOSE
            assert closing.data == 1009
        # The limit applies after reassembly: fragments that add up past it close too.
        raw = await RawWebSocket.connect("127.0.0.1", server.port)
        await raw.send(OP_BINARY, b"y" * (limit // 2), fin=False)
        await raw.send(OP_CONT, b"y" * (limit // 2 + 1), fin=True)
        frame = await raw.recv_data()
        assert (frame.opcode, frame.close_code) == (OP_CLOSE, 1009)
        await raw.aclose()
        # Nobody else noticed.
        assert (await echo_once(bystander, "still here")).data == "still here"
        await bystander.close()


async def test_invalid_utf8_text_closes_1007(start_app: ServerFactory) -> None:
    server = await start_app()
    raw = await RawWebSocket.connect("127.0.0.1", server.port)
    await raw.send(OP_TEXT, b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xed\xa0\x80")
    frame = await raw.recv_data()
    assert (frame.opcode, frame.close_code) == (OP_CLOSE, 1007)
    await raw.send(OP_CLOSE, close_payload(1007))
    assert await raw.eof(timeout=2)


@pytest.mark.parametrize(
    ("sent", "answered"),
    [
        (1000, 1000),
        (1001, 1001),
        (3000, 3000),
        (4999, 4999),
        (1006, 1002),
        (1005, 1002),
        (999, 1002),
        (1016, 1002),
        (5000, 1002),
    ],
)
async def test_close_code_is_echoed_if_valid_else_answered_1002(
    start_app: ServerFactory, sent: int, answered: int
) -> None:
    server = await start_app()
    raw = await RawWebSocket.connect("127.0.0.1", server.port)
    await raw.send(OP_CLOSE, close_payload(sent, b"bye"))
    frame = await raw.recv_data()
    assert (frame.opcode, frame.close_code) == (OP_CLOSE, answered)
    assert await raw.eof(timeout=2), "the server must drop TCP after the closing handshake"


async def test_error_in_one_connection_closes_it_1011_and_spares_the_others(
    start_app: ServerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    inject_fault(monkeypatch)
    server = await start_app()
    echo = server.app[SERVER_KEY]
    async with aiohttp.ClientSession() as session:
        healthy = await session.ws_connect(server.make_url("/"))
        victim = await session.ws_connect(server.make_url("/"))
        await victim.send_frame(FAULT, WSMsgType.TEXT)
        closing = await victim.receive(timeout=5)
        assert (closing.type, closing.data) == (WSMsgType.CLOSE, 1011)
        await victim.close()
        assert (await echo_once(healthy, "ok")).data == "ok"
        await wait_until(lambda: echo.limiter.open == 1)
        await healthy.close()
    await wait_until(lambda: echo.limiter.open == 0)


async def test_concurrent_connections_do_not_mix_messages(start_app: ServerFactory) -> None:
    server = await start_app()

    async def talk(session: aiohttp.ClientSession, n: int) -> list[str]:
        async with session.ws_connect(server.make_url("/")) as ws:
            out = []
            for i in range(50):
                out.append((await echo_once(ws, f"{n}:{i}")).data)
            return out

    async with aiohttp.ClientSession() as session:
        results = await asyncio.gather(*(talk(session, n) for n in range(20)))
    for n, got in enumerate(results):
        assert got == [f"{n}:{i}" for i in range(50)]


@pytest.mark.only_engine("fast", "the parser's callback echoes")
@pytest.mark.parametrize("metrics", [True, False], ids=["metrics", "no-metrics"])
async def test_plain_messages_and_pings_are_answered_without_a_task(
    start_app: ServerFactory, metrics: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The fast path: the parser's callback echoes and pongs; the queue is never served."""
    server = await start_app(metrics=metrics)
    echo = server.app[SERVER_KEY]
    served = record_served(monkeypatch)
    raw = await RawWebSocket.connect("127.0.0.1", server.port)
    sent = [
        (OP_TEXT, b"a"),
        (OP_BINARY, b"\x00\xff"),
        (OP_TEXT, "héllo ✓".encode()),
        (OP_BINARY, b""),
    ]
    sent += [(OP_PING, b"are you there"), (OP_TEXT, b"z" * 70_000)]
    for opcode, payload in sent:
        await raw.send(opcode, payload)
        frame = await raw.recv(timeout=5)
        expected = OP_PONG if opcode == OP_PING else opcode
        assert (frame.opcode, frame.payload) == (expected, payload)
    conn = next(iter(echo.connections.values()))
    assert (conn.messages_in, conn.messages_out) == (len(sent) - 1, len(sent) - 1)
    assert served == []
    await raw.aclose()


@pytest.mark.parametrize("metrics", [True, False], ids=["metrics", "no-metrics"])
async def test_messages_held_back_by_a_slow_reader_keep_their_order(
    start_app: ServerFactory, metrics: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While the peer does not read, the server's writes pause and messages wait in the
    queue (on the fast engine, for its serving task); those arriving later must not
    overtake them."""
    server = await start_app(metrics=metrics)
    served = record_served(monkeypatch)
    sent = [i.to_bytes(4, "big") * 16_384 for i in range(200)]  # 64 KiB each, 12.5 MiB
    async with aiohttp.ClientSession() as session, session.ws_connect(server.make_url("/")) as ws:

        async def send_all() -> None:
            for item in sent:
                await ws.send_bytes(item)

        sender = asyncio.create_task(send_all())
        await asyncio.sleep(0.5)  # read nothing yet: the server's writes pause
        received = [(await ws.receive(timeout=10)).data for _ in sent]
        await asyncio.wait_for(sender, 10)
    assert received == sent
    if server.engine == "fast":
        assert served, "nothing was held back: the test did not exercise the queue"


@pytest.mark.only_engine("fast", "pings are answered from the parser's callback")
async def test_a_ping_behind_held_back_messages_is_answered_and_leaves_no_task(
    start_app: ServerFactory,
) -> None:
    """A ping does not wait in the queue behind messages held back while the server's
    writes are paused, so no serve() task is left waiting inside receive() (where
    aiohttp answers pings and waits on) once the queue is empty."""
    server = await start_app()
    echo = server.app[SERVER_KEY]
    raw = await RawWebSocket.connect("127.0.0.1", server.port)
    await wait_until(lambda: len(echo.connections) == 1, timeout=3)
    ws = next(iter(echo.connections))
    protocol = ws._req.protocol
    protocol.pause_writing()  # as when the peer stops reading: messages are held back
    await raw.send(OP_TEXT, b"held back")
    await raw.send(OP_PING, b"still there?")
    await asyncio.sleep(0.2)
    protocol.resume_writing()
    frames = [await raw.recv(timeout=3), await raw.recv(timeout=3)]
    assert sorted((f.opcode, f.payload) for f in frames) == [
        (OP_TEXT, b"held back"),
        (OP_PONG, b"still there?"),
    ]
    await wait_until(lambda: not serving_tasks(), timeout=3)
    await raw.aclose()


async def test_under_aiohttps_own_runner_the_handler_serves_to_the_end(
    start_app: ServerFactory,
) -> None:
    """adev's development server uses aiohttp's runner: no detaching, same behaviour."""
    server = await start_app(plain_runner=True)
    echo = server.app[SERVER_KEY]
    async with aiohttp.ClientSession() as session, session.ws_connect(server.make_url("/")) as ws:
        for item in ("one", b"two", "x" * 70_000):
            assert (await echo_once(ws, item)).data == item
        await ws.send_frame(b"\xff", WSMsgType.TEXT)
        closing = await ws.receive(timeout=5)
        assert (closing.type, closing.data) == (WSMsgType.CLOSE, 1007)
    await wait_until(lambda: echo.limiter.open == 0 and not echo.connections)


async def test_the_upgrade_response_carries_the_handshake_and_no_software_versions(
    start_app: ServerFactory,
) -> None:
    server = await start_app()
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(RawWebSocket.upgrade_request("127.0.0.1", server.port))
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    writer.close()
    await writer.wait_closed()
    status, *lines = head.decode("latin-1").split("\r\n")[:-2]
    names = {line.split(":", 1)[0].lower() for line in lines}
    assert status == "HTTP/1.1 101 Switching Protocols"
    assert names == {"upgrade", "connection", "sec-websocket-accept"}


async def test_a_frame_sent_with_the_upgrade_request_is_echoed(start_app: ServerFactory) -> None:
    """Frames pipelined behind the upgrade request reach the parser before the
    connection is handed to the fast path; they must not be left in the queue."""
    server = await start_app()
    for _ in range(20):
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        upgrade = RawWebSocket.upgrade_request("127.0.0.1", server.port)
        writer.write(upgrade + encode_frame(OP_TEXT, b"early") + encode_frame(OP_BINARY, b"too"))
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 101 ")
        assert await asyncio.wait_for(reader.readexactly(7), 5) == b"\x81\x05early"
        assert await asyncio.wait_for(reader.readexactly(5), 5) == b"\x82\x03too"
        writer.close()
        await writer.wait_closed()
