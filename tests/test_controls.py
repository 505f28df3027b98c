"""Test controls on the wire: what a peer observes for each control and each bound.

Every test runs the real server (in-process on loopback, or a subprocess) and looks
at what reaches a real aiohttp client or the raw-frame peer of tests/wsraw.py: HTTP
statuses and reasons, close codes and reasons, a TCP close without a close frame,
timings, pings and pushes, fragments, the info message. The parsing rules themselves
are in tests/test_controls_rules.py.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from typing import Any

import aiohttp
import pytest

from echo.client import EchoClient
from echo.engine.controlled import HELD_MESSAGES, ControlledSession
from echo.listeners import CLOSE_TIMEOUT
from echo.server import SERVER_KEY
from tests.client_support import fast_settings
from tests.nginx_support import Nginx, ensure_nginx
from tests.support import ServerFactory, free_port, wait_until
from tests.tls_support import client_cert_context, let_tls_close, make_pki, start_mtls_server
from tests.wsraw import (
    OP_BINARY,
    OP_CLOSE,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    Frame,
    RawWebSocket,
    close_payload,
    encode_frame,
)


async def handshake(port: int, target: str, origin: str | None = None) -> tuple[int, bytes, bytes]:
    """Send a WebSocket upgrade for ``target`` (path and query); status, head, body."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(RawWebSocket.upgrade_request("127.0.0.1", port, origin, target))
        async with asyncio.timeout(5):
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head.split(b" ", 2)[1])
            body = b""
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    body = await reader.readexactly(int(value))
        return status, head, body
    finally:
        writer.close()
        await writer.wait_closed()


def header(head: bytes, name: bytes) -> bytes | None:
    for line in head.split(b"\r\n")[1:]:
        key, _, value = line.partition(b":")
        if key.strip().lower() == name.lower():
            return value.strip()
    return None


# -- refused before the upgrade -------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "reason"),
    [
        ("nope=1", b"unknown control 'nope'; known: delay, jitter, close_after"),
        ("close_after=1&close_code=1005", b"bad control close_code='1005': expected 1000, 1001"),
        ("delay=60001", b"bad control delay='60001': expected an integer from 0 to 60000 (ms)"),
        ("push_every=10&push_size=1000&x", b"unknown control 'x'"),
        (
            "push_every=10&push_size=1000",
            b"is 100000 bytes/s, over this server's PUSH_MAX_RATE of 65536 bytes/s",
        ),
        ("fragment=1025", b"bad control fragment='1025': expected an integer from 1 to 1024"),
        ("x=%0D%0AInjected:%20yes", b"unknown control 'x'"),
    ],
)
async def test_a_bad_control_gets_400_with_a_one_line_reason(
    start_app: ServerFactory, query: str, reason: bytes
) -> None:
    server = await start_app(max_message_size=1024, push_max_rate=65536)
    status, head, body = await handshake(server.port, f"/?{query}")
    assert status == 400
    assert reason in body
    assert body.count(b"\n") == 1
    assert body.endswith(b"\n")
    assert b"Injected" not in head
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(server.make_url("/")) as ws:
            await ws.send_str("still fine")
            assert await ws.receive_str(timeout=5) == "still fine"


async def test_aiohttp_client_sees_the_400(start_app: ServerFactory) -> None:
    server = await start_app()
    async with aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await session.ws_connect(server.make_url("/chat?close_after=x"))
    assert refused.value.status == 400


async def test_controls_off_refuses_any_control_saying_so(start_app: ServerFactory) -> None:
    server = await start_app(controls=False)
    status, _head, body = await handshake(server.port, "/?close_after=1")
    assert status == 400
    assert body == (
        b"bad test controls: test controls are off on this server (CONTROLS=false): "
        b"'close_after' refused\n"
    )
    # Other query parameters are none of its business then.
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(server.make_url("/?token=abc")) as ws:
            await ws.send_str("plain")
            assert await ws.receive_str(timeout=5) == "plain"


@pytest.mark.parametrize(("status", "retry_after"), [(503, "7"), (429, None), (401, None)])
async def test_status_refuses_the_handshake_as_asked(
    start_app: ServerFactory, status: int, retry_after: str | None
) -> None:
    server = await start_app()
    query = f"status={status}" + (f"&retry_after={retry_after}" if retry_after else "")
    got, head, body = await handshake(server.port, f"/any/path?{query}")
    assert got == status
    assert header(head, b"Retry-After") == (None if retry_after is None else retry_after.encode())
    assert body == b"refused as the status control asked\n"


async def test_refusals_are_counted_and_logged(
    start_app: ServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    server = await start_app()
    caplog.set_level("INFO", logger="echo.server")
    await handshake(server.port, "/?bogus")
    await handshake(server.port, "/?status=502")
    async with aiohttp.ClientSession() as session:
        async with session.get(server.make_url("/metrics")) as response:
            text = await response.text()
    assert 'echo_handshakes_refused_total{reason="controls"} 1.0' in text
    assert 'echo_handshakes_refused_total{reason="status_control"} 1.0' in text
    lines = [r.getMessage() for r in caplog.records if r.name == "echo.server"]
    assert (
        "refused remote=127.0.0.1 origin=- reason=controls "
        "(unknown control 'bogus'; known: delay, jitter, close_after, close_after_ms, "
        "close_code, close_reason, drop_after, drop_after_ms, ignore_pings, heartbeat, "
        "silent, status, retry_after, ping_every, push_every, push_size, push_type, "
        "fragment, info)"
    ) in lines
    assert "refused remote=127.0.0.1 origin=- reason=status_control (status=502)" in lines


async def test_origin_is_checked_before_controls(start_app: ServerFactory) -> None:
    server = await start_app(any_origin=False, allow_missing_origin=False)
    status, _head, _body = await handshake(server.port, "/?status=418", "http://evil.example")
    assert status == 403


# -- behaviours, as the peer sees them ------------------------------------------------


async def raw(server: Any, query: str, path: str = "/") -> RawWebSocket:
    return await RawWebSocket.connect("127.0.0.1", server.port, path=f"{path}?{query}")


async def no_frame_within(peer: RawWebSocket, seconds: float) -> bool:
    """Whether nothing at all arrives from the server for ``seconds``."""
    try:
        frame = await peer.recv(timeout=seconds)
    except TimeoutError:
        return True
    raise AssertionError(f"unexpected frame {frame}")


def controlled_sessions(server: Any) -> list[Any]:
    return [s for s in server.app[SERVER_KEY].connections if isinstance(s, ControlledSession)]


async def server_log_line(caplog: pytest.LogCaptureFixture, start: str) -> str:
    await wait_until(lambda: any(r.getMessage().startswith(start) for r in caplog.records))
    return next(r.getMessage() for r in caplog.records if r.getMessage().startswith(start))


async def test_delay_holds_each_echo_and_keeps_order(start_app: ServerFactory) -> None:
    server = await start_app()
    peer = await raw(server, "delay=400")
    sent_at = []
    for i in range(5):
        sent_at.append(time.monotonic())
        await peer.send(OP_TEXT, b"m%d" % i)
    got = []
    for _ in range(5):
        frame = await peer.recv()
        got.append((frame.payload, time.monotonic()))
    assert [payload for payload, _at in got] == [b"m0", b"m1", b"m2", b"m3", b"m4"]
    for (_payload, at), sent in zip(got, sent_at, strict=True):
        assert at - sent >= 0.4
    # Each is held from its own arrival, not after the previous echo (that would be 2 s).
    assert got[-1][1] - sent_at[0] < 1.8
    await peer.aclose()


async def test_jitter_varies_the_hold_but_never_the_order(start_app: ServerFactory) -> None:
    server = await start_app()
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(server.make_url("/?delay=50&jitter=300")) as ws:
            started = time.monotonic()
            for i in range(30):
                await ws.send_str(str(i))
            echoes = [await ws.receive_str(timeout=5) for _ in range(30)]
            assert echoes == [str(i) for i in range(30)]
            assert time.monotonic() - started >= 0.05


async def test_close_after_messages_with_code_and_reason(
    start_app: ServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO", logger="echo.server")
    server = await start_app()
    peer = await raw(server, "close_after=3&close_code=4000&close_reason=bye+now")
    for i in range(3):
        await peer.send(OP_BINARY, bytes([i]))
        assert (await peer.recv()).payload == bytes([i])
    frame = await peer.recv()
    assert frame.opcode == OP_CLOSE
    assert frame.close_code == 4000
    assert frame.payload[2:] == b"bye now"
    await peer.send(OP_CLOSE, close_payload(4000))
    assert await peer.eof()
    line = await server_log_line(caplog, "close id=")
    assert "code=4000 sent=4000 received=4000" in line
    assert line.endswith(" controls=close_after=3&close_code=4000&close_reason=bye%20now")


async def test_close_after_with_aiohttp_client(start_app: ServerFactory) -> None:
    server = await start_app()
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(server.make_url("/?close_after=1&close_code=1013")) as ws:
            await ws.send_str("only one")
            assert await ws.receive_str(timeout=5) == "only one"
            message = await ws.receive(timeout=5)
            assert message.type is aiohttp.WSMsgType.CLOSE
            assert ws.close_code == 1013


async def test_close_after_zero_closes_at_once(start_app: ServerFactory) -> None:
    server = await start_app()
    peer = await raw(server, "close_after=0")
    frame = await peer.recv()
    assert (frame.opcode, frame.close_code) == (OP_CLOSE, 1000)
    await peer.aclose()


async def test_close_after_ms(start_app: ServerFactory) -> None:
    server = await start_app()
    started = time.monotonic()
    peer = await raw(server, "close_after_ms=300&close_code=3001")
    await peer.send(OP_TEXT, b"before")
    assert (await peer.recv()).payload == b"before"
    frame = await peer.recv()
    assert (frame.opcode, frame.close_code) == (OP_CLOSE, 3001)
    assert time.monotonic() - started >= 0.3
    await peer.aclose()


async def test_close_after_counts_held_echoes(start_app: ServerFactory) -> None:
    """With a delay the close follows the last held echo, not its arrival."""
    server = await start_app()
    peer = await raw(server, "delay=200&close_after=2")
    await peer.send(OP_TEXT, b"a")
    await peer.send(OP_TEXT, b"b")
    await peer.send(OP_TEXT, b"c")
    assert [(await peer.recv()).payload for _ in range(2)] == [b"a", b"b"]
    frame = await peer.recv()
    assert (frame.opcode, frame.close_code) == (OP_CLOSE, 1000)
    await peer.aclose()


@pytest.mark.parametrize("query", ["drop_after=2", "drop_after_ms=300"])
async def test_drop_ends_tcp_without_a_close_frame(
    start_app: ServerFactory, caplog: pytest.LogCaptureFixture, query: str
) -> None:
    caplog.set_level("INFO", logger="echo.server")
    server = await start_app()
    peer = await raw(server, query)
    for i in range(2):
        await peer.send(OP_TEXT, b"x%d" % i)
        assert (await peer.recv()).payload == b"x%d" % i
    # Nothing more: no close frame, the TCP connection just ends.
    with pytest.raises(asyncio.IncompleteReadError):
        await peer.recv(timeout=5)
    await peer.aclose()
    line = await server_log_line(caplog, "close id=")
    assert "code=1006 sent=- received=-" in line
    assert line.endswith(f"controls={query}")


async def test_aiohttp_client_sees_1006_after_a_drop(start_app: ServerFactory) -> None:
    server = await start_app()
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(server.make_url("/?drop_after=1")) as ws:
            await ws.send_str("last")
            assert await ws.receive_str(timeout=5) == "last"
            message = await ws.receive(timeout=5)
            assert message.type in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR)
            assert ws.close_code == 1006


async def test_ignore_pings_sends_no_pong(start_app: ServerFactory) -> None:
    server = await start_app()
    answered = await raw(server, "info=false")  # no controls: pings are answered
    await answered.send(OP_PING, b"hello")
    frame = await answered.recv()
    assert (frame.opcode, frame.payload) == (OP_PONG, b"hello")
    await answered.aclose()
    peer = await raw(server, "ignore_pings")
    await peer.send(OP_PING, b"anyone?")
    await peer.send(OP_TEXT, b"after the ping")
    frame = await peer.recv()
    assert (frame.opcode, frame.payload) == (OP_TEXT, b"after the ping"), "no pong first"
    assert await no_frame_within(peer, 0.5)
    await peer.aclose()


async def test_ignore_pings_keeps_the_servers_heartbeat(start_app: ServerFactory) -> None:
    server = await start_app(heartbeat_interval=0.2)
    peer = await raw(server, "ignore_pings")
    frame = await peer.recv(timeout=3)
    assert frame.opcode == OP_PING
    await peer.aclose()


async def test_heartbeat_off_sends_no_pings(start_app: ServerFactory) -> None:
    server = await start_app(heartbeat_interval=0.2)
    beating = await raw(server, "info=false")
    assert (await beating.recv(timeout=3)).opcode == OP_PING
    await beating.aclose()
    quiet = await raw(server, "heartbeat=off")
    assert await no_frame_within(quiet, 1.2)  # 6 heartbeat intervals, no ping
    await quiet.send(OP_TEXT, b"still here")
    assert (await quiet.recv()).payload == b"still here"
    await quiet.aclose()


async def test_heartbeat_off_still_ends_a_silent_connection(
    start_app: ServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO", logger="echo.server")
    server = await start_app(silence_limit=0.6)
    peer = await raw(server, "heartbeat=off")
    for _ in range(3):  # a frame now and then keeps it open past the limit
        await asyncio.sleep(0.3)
        await peer.send(OP_PONG, b"")
    started = time.monotonic()
    frame = await peer.recv(timeout=5)
    assert (frame.opcode, frame.close_code) == (OP_CLOSE, 1001)
    assert frame.payload[2:] == b"no frame for too long"
    assert time.monotonic() - started >= 0.5
    await peer.aclose()
    assert "controls=heartbeat=off" in await server_log_line(caplog, "close id=")


async def test_silent_reads_and_echoes_nothing(
    start_app: ServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO", logger="echo.server")
    server = await start_app()
    peer = await raw(server, "silent")
    for i in range(3):
        await peer.send(OP_TEXT, b"into the void %d" % i)
    assert await no_frame_within(peer, 0.5)
    await peer.send(OP_CLOSE, close_payload(1000))
    frame = await peer.recv()  # the closing handshake is still answered
    assert (frame.opcode, frame.close_code) == (OP_CLOSE, 1000)
    await peer.aclose()
    line = await server_log_line(caplog, "close id=")
    assert "in=3/45B out=0/0B" in line


async def test_silent_with_close_after_counts_what_it_read(start_app: ServerFactory) -> None:
    server = await start_app()
    peer = await raw(server, "silent&close_after=2&close_code=4002")
    await peer.send(OP_TEXT, b"1")
    await peer.send(OP_TEXT, b"2")
    frame = await peer.recv()
    assert (frame.opcode, frame.close_code) == (OP_CLOSE, 4002)
    await peer.aclose()


async def test_ping_every(start_app: ServerFactory) -> None:
    server = await start_app()
    peer = await raw(server, "ping_every=100")
    started = time.monotonic()
    frames = [await peer.recv(timeout=3) for _ in range(3)]
    assert [(f.opcode, f.payload) for f in frames] == [
        (OP_PING, b"1"),
        (OP_PING, b"2"),
        (OP_PING, b"3"),
    ]
    assert time.monotonic() - started >= 0.25
    await peer.send(OP_PONG, b"1")
    await peer.aclose()


@pytest.mark.parametrize(
    ("query", "opcode", "first"),
    [
        ("push_every=50", OP_TEXT, b"1 .............."),  # 16 bytes by default
        ("push_every=50&push_size=10&push_type=binary", OP_BINARY, b"1 ........"),
        ("push_every=50&push_size=1", OP_TEXT, b"1"),
        ("push_every=50&push_size=0&push_type=binary", OP_BINARY, b""),
    ],
)
async def test_push_every_sends_messages_of_the_servers_own(
    start_app: ServerFactory, query: str, opcode: int, first: bytes
) -> None:
    server = await start_app()
    peer = await raw(server, query)
    frames = [await peer.recv(timeout=3) for _ in range(4)]
    assert frames[0].payload == first
    assert {f.opcode for f in frames} == {opcode}
    assert {len(f.payload) for f in frames} == {len(first)}
    if len(first) >= 2:
        assert [f.payload.split(b" ")[0] for f in frames] == [b"1", b"2", b"3", b"4"]
    await peer.aclose()


async def test_pushes_and_echoes_are_counted(start_app: ServerFactory) -> None:
    server = await start_app()
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(
            server.make_url("/?push_every=20&push_size=5&push_type=binary")
        ) as ws:
            await ws.send_str("mine")
            texts: list[str] = []
            pushes = 0
            while not texts or pushes < 3:
                message = await ws.receive(timeout=5)
                if message.type is aiohttp.WSMsgType.TEXT:
                    texts.append(message.data)
                else:
                    pushes += 1
            assert texts == ["mine"]
            (session_,) = controlled_sessions(server)
            conn = session_.conn
            assert conn.messages_in == 1
            assert conn.messages_out >= 4
            assert conn.binary_out == conn.messages_out - 1


@pytest.mark.parametrize("size", [1, 5, 125, 126, 70_000])
async def test_fragment_echoes_in_fragments(start_app: ServerFactory, size: int) -> None:
    server = await start_app()
    message = bytes(range(256)) * 400  # 102,400 bytes
    peer = await raw(server, f"fragment={size}")
    await peer.send(OP_BINARY, message)
    frames: list[Frame] = []
    while not frames or not frames[-1].fin:
        frames.append(await peer.recv())
    expected = -(-len(message) // size)
    assert len(frames) == expected
    assert frames[0].opcode == OP_BINARY
    assert {f.opcode for f in frames[1:]} <= {0}
    assert [len(f.payload) for f in frames[:-1]] == [size] * (expected - 1)
    assert b"".join(f.payload for f in frames) == message
    await peer.send(OP_TEXT, b"short")  # at most one fragment's worth: one frame
    if size >= 5:
        frame = await peer.recv()
        assert (frame.fin, frame.opcode, frame.payload) == (True, OP_TEXT, b"short")
    await peer.aclose()


async def test_aiohttp_client_reassembles_fragments_and_no_compression(
    start_app: ServerFactory,
) -> None:
    server = await start_app()
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(server.make_url("/?fragment=3"), compress=15) as ws:
            assert ws.compress == 0, "permessage-deflate is not negotiated with fragments"
            await ws.send_str("héllo, fragmented wörld")
            assert await ws.receive_str(timeout=5) == "héllo, fragmented wörld"
        async with session.ws_connect(server.make_url("/"), compress=15) as plain:
            assert plain.compress == 15  # it is, without


async def test_info_is_the_first_message(start_app: ServerFactory) -> None:
    server = await start_app(instance_name="pod-3")
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(
            server.make_url("/chat/room?info&delay=1"),
            protocols=("chat.v2", "chat.v1"),
            headers={"Authorization": "Bearer t0ps3cret", "X-Trace": "abc"},
            compress=15,
        ) as ws:
            info = json.loads(await ws.receive_str(timeout=5))
            await ws.send_str("then the echo")
            assert await ws.receive_str(timeout=5) == "then the echo"
    assert info["connection"] == "c1"
    assert info["instance"]["name"] == "pod-3"
    assert info["instance"]["pid"] == os.getpid()
    assert info["remote"] == "127.0.0.1"
    assert (info["path"], info["query"]) == ("/chat/room", "info&delay=1")
    headers = dict(info["headers"])
    assert headers["Authorization"] == "Bearer [masked]"
    assert headers["X-Trace"] == "abc"
    assert headers["Sec-WebSocket-Protocol"] == "chat.v2,chat.v1"
    assert info["subprotocol"] == "chat.v2"
    assert info["extensions"].startswith("permessage-deflate")
    assert info["controls"] == "delay=1&info"
    assert info["tls"] is None


async def test_info_over_tls_shows_the_client_certificate(
    server_process: Any, tmp_path: Any
) -> None:
    pki = make_pki(tmp_path)
    server = start_mtls_server(server_process, pki)
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(
            f"wss://localhost:{server.port}/?info", ssl=client_cert_context(pki, pki.client)
        ) as ws:
            info = json.loads(await ws.receive_str(timeout=5))
    await let_tls_close()
    assert info["tls"]["sni"] == "localhost"
    assert "CN=echo test client" in info["tls"]["client_certificate"]["subject"]


# -- promises kept and bounds held ----------------------------------------------------


async def test_a_controlled_connection_counts_against_the_limits(start_app: ServerFactory) -> None:
    server = await start_app(max_connections=1)
    peer = await raw(server, "delay=10")
    status, _head, _body = await handshake(server.port, "/?silent")
    assert status == 503
    await peer.aclose()


async def test_the_size_limit_holds_with_controls(start_app: ServerFactory) -> None:
    server = await start_app(max_message_size=100)
    peer = await raw(server, "delay=10&fragment=10")
    await peer.send(OP_BINARY, b"x" * 101)
    frame = await peer.recv_data()
    assert (frame.opcode, frame.close_code) == (OP_CLOSE, 1009)
    await peer.aclose()


async def test_shutdown_closes_controlled_connections_with_1001(server_process: Any) -> None:
    server = server_process(SHUTDOWN_TIMEOUT="3000")
    holding = await RawWebSocket.connect("127.0.0.1", server.port, path="/?delay=60000")
    await holding.send(OP_TEXT, b"held for a minute")
    pushing = await RawWebSocket.connect(
        "127.0.0.1", server.port, path="/?push_every=10&push_size=1000&fragment=7"
    )
    await wait_until(lambda: server.log().count("open id=") == 2)
    server.signal(signal.SIGTERM)
    frame = await holding.recv_data()
    assert (frame.opcode, frame.close_code) == (OP_CLOSE, 1001)
    while (frame := await pushing.recv_data()).opcode != OP_CLOSE:
        pass
    assert frame.close_code == 1001
    for peer in (holding, pushing):
        await peer.send(OP_CLOSE, close_payload(1001))
        await peer.aclose()
    assert server.wait(10) == 0


async def test_held_echoes_are_bounded_when_a_peer_floods(start_app: ServerFactory) -> None:
    """A minute's delay times many messages: at most HELD_MESSAGES wait, then the
    server stops reading (back-pressure) instead of queueing without end."""
    server = await start_app()
    peer = await raw(server, "delay=60000")
    frame = encode_frame(OP_TEXT, b"x" * 100)
    sent = 0
    try:
        async with asyncio.timeout(5):
            while sent < 20_000:
                peer.writer.write(frame * 100)
                await peer.writer.drain()
                sent += 100
    except TimeoutError:
        pass  # the server stopped reading: TCP pushed back
    (session,) = controlled_sessions(server)
    held = session.held
    await wait_until(lambda: len(held.items) == HELD_MESSAGES)
    await asyncio.sleep(0.3)
    assert len(held.items) == HELD_MESSAGES
    assert held.bytes == HELD_MESSAGES * 100
    peer.abort()


async def test_pushes_to_a_peer_that_never_reads_stay_bounded(start_app: ServerFactory) -> None:
    """100 pushes of 64 KiB a second would be 6.4 MB/s; a peer that reads nothing gets
    only what the transport and the kernel buffer."""
    server = await start_app(push_max_rate=100 * 65536)
    peer = await raw(server, "push_every=10&push_size=65536&push_type=binary")
    peer.writer.transport.pause_reading()  # type: ignore[attr-defined]
    (session,) = controlled_sessions(server)
    await asyncio.sleep(1.0)
    early = session.conn.bytes_out
    await asyncio.sleep(1.5)
    late = session.conn.bytes_out
    assert late - early <= 2 * 65536, "pushes go no faster than the peer reads"
    assert session.ws.echo_transport.get_write_buffer_size() <= 4 * 65536
    assert late < 64 * 65536  # not 2.5 s x 6.4 MB/s
    peer.abort()


async def test_tiny_fragments_of_big_messages_stay_bounded(start_app: ServerFactory) -> None:
    """fragment=1 on a 256 KiB message: 256 Ki frames, written as the peer reads."""
    server = await start_app()
    peer = await raw(server, "fragment=1")
    message = bytes(range(256)) * 1024
    await peer.send(OP_BINARY, message)
    received = bytearray()
    frames = 0
    async with asyncio.timeout(30):
        while len(received) < len(message):
            frame = await peer.recv()
            received += frame.payload
            frames += 1
    assert frames == len(message)
    assert bytes(received) == message
    await peer.aclose()


# -- the README's recipes, with the project's own client ------------------------------


async def test_recipe_client_reconnects_after_drops(start_app: ServerFactory) -> None:
    """drop_after: every connection ends in 1006 after two echoes; the client reconnects
    and still gets every message echoed."""
    server = await start_app()
    url = str(server.make_url("/?drop_after=2"))
    client = EchoClient(fast_settings(url, message_count=7))
    stats = await asyncio.wait_for(client.run(), 30)
    assert stats.echoed == 7
    assert stats.mismatched == 0
    assert stats.connections >= 4  # 2 echoes per connection at most


async def test_recipe_client_heartbeat_timeout(start_app: ServerFactory) -> None:
    """ignore_pings&silent: nothing comes back and the client's pings go unanswered,
    so it gives up on the connection (after 1.5 heartbeat intervals) and reconnects."""
    server = await start_app()
    url = str(server.make_url("/?ignore_pings&silent"))
    client = EchoClient(fast_settings(url, heartbeat_interval=0.2, message_interval=0.05))
    run = asyncio.ensure_future(client.run())
    try:
        await wait_until(lambda: server.app[SERVER_KEY].metrics.connections_total >= 3, 15)
    finally:
        client.stop()
        stats = await asyncio.wait_for(run, 15)
    assert stats.echoed == 0
    assert stats.connections >= 3


PROXY_SITE = """
upstream echo_backend {{ server 127.0.0.1:{backend}; }}
server {{
    listen 127.0.0.1:{port};
    location / {{
        proxy_pass http://echo_backend;
        proxy_http_version 1.1;
        proxy_set_header Upgrade $http_upgrade;
        proxy_set_header Connection "upgrade";
        proxy_set_header Host $http_host;
        proxy_read_timeout 1s;
    }}
}}
"""


async def test_recipe_proxy_idle_timeout(start_app: ServerFactory, tmp_path: Any) -> None:
    """heartbeat=off through nginx with proxy_read_timeout 1s: the proxy ends the idle
    connection; with the server's heartbeat the same connection stays up."""
    server = await start_app(heartbeat_interval=0.3)
    port = free_port()
    nginx = Nginx(ensure_nginx(), tmp_path, PROXY_SITE.format(backend=server.port, port=port))
    nginx.start(port)
    try:
        async with aiohttp.ClientSession() as session:
            quiet = await session.ws_connect(f"ws://127.0.0.1:{port}/?heartbeat=off")
            beating = await session.ws_connect(f"ws://127.0.0.1:{port}/")
            started = time.monotonic()
            # The client answers the server's pings while it waits in receive().
            listening = asyncio.ensure_future(asyncio.wait_for(beating.receive(), 2.5))
            ended = await quiet.receive(timeout=10)
            assert ended.type in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR)
            assert time.monotonic() - started >= 0.9
            with pytest.raises(TimeoutError):  # nothing but pings for 2.5 s: still up
                await listening
            await beating.send_str("still up")
            assert await beating.receive_str(timeout=5) == "still up"
            await beating.close()
            await quiet.close()
    finally:
        nginx.stop()


async def test_a_drop_to_a_peer_that_never_reads_is_bounded(start_app: ServerFactory) -> None:
    """drop_after_ms closes the transport once what was sent has gone out; a peer that
    reads nothing (its echo stuck in the buffers) cannot hold the connection, and its
    slot, beyond CLOSE_TIMEOUT after that (the heartbeat would take 45 s here)."""
    server = await start_app(max_message_size=8 << 20)
    peer = await raw(server, "drop_after_ms=500")
    peer.writer.transport.pause_reading()  # type: ignore[attr-defined]
    await peer.send(OP_BINARY, bytes(8 << 20))  # its echo cannot all fit in the buffers
    echo = server.app[SERVER_KEY]
    started = time.monotonic()
    await wait_until(lambda: echo.limiter.open == 0, timeout=20)
    assert time.monotonic() - started <= 0.5 + CLOSE_TIMEOUT + 3
    peer.abort()


async def test_heartbeat_off_still_ends_a_peer_that_stops_reading(
    start_app: ServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    # A flood whose echoes are never read: without the heartbeat's pong timeout only the
    # bound on the wait to send ends it, and it must not wait past the silence limit.
    caplog.set_level("INFO", logger="echo.server")
    big = 16 << 20  # more than the socket buffers of both ends can take
    server = await start_app(silence_limit=0.6, max_message_size=big)
    peer = await raw(server, "heartbeat=off")
    started = time.monotonic()
    await peer.send(OP_BINARY, bytes(big))  # and never reads
    line = await server_log_line(caplog, "close id=")
    assert time.monotonic() - started >= 0.5  # the silence limit, not sooner
    assert "code=1006" in line, line
    assert "controls=heartbeat=off" in line
    await wait_until(lambda: not controlled_sessions(server))
    peer.writer.transport.abort()
