"""Connection health and the server's life: heartbeat, handshake timeout, /healthz, shutdown."""

from __future__ import annotations

import asyncio
import gc
import signal
import time
from collections.abc import Callable

import aiohttp
import pytest
from aiohttp import WSMsgType, web
from aiohttp.web_protocol import RequestHandler

from echo.engine import ENGINE_KEY
from echo.server import SERVER_KEY
from tests.support import ServerFactory, ServerProcess, wait_until
from tests.wsraw import OP_CLOSE, OP_PING, OP_PONG, OP_TEXT, RawWebSocket, close_payload


async def test_heartbeat_drops_a_peer_that_stops_answering_pings(start_app: ServerFactory) -> None:
    server = await start_app(heartbeat_interval=0.2)
    limiter = server.app[SERVER_KEY].limiter
    silent = await RawWebSocket.connect("127.0.0.1", server.port)
    frame = await silent.recv(timeout=2)
    assert frame.opcode == OP_PING, "the server pings every HEARTBEAT_INTERVAL"
    # Never answer: the server gives up on us and frees the slot.
    assert await silent.eof(timeout=3)
    await wait_until(lambda: limiter.open == 0, timeout=3)


async def test_heartbeat_keeps_a_responsive_peer(start_app: ServerFactory) -> None:
    server = await start_app(heartbeat_interval=0.1)
    async with aiohttp.ClientSession() as session, session.ws_connect(server.make_url("/")) as ws:
        # aiohttp's client answers pings while it is receiving: wait several intervals.
        reply = asyncio.create_task(ws.receive())
        await asyncio.sleep(0.6)
        assert not reply.done(), f"connection ended: {reply.result()}"
        await ws.send_str("alive")
        assert (await asyncio.wait_for(reply, 2)).data == "alive"


async def test_a_ping_comes_only_after_an_interval_of_silence(start_app: ServerFactory) -> None:
    interval = 0.3
    server = await start_app(heartbeat_interval=interval)
    raw = await RawWebSocket.connect("127.0.0.1", server.port)
    opened = time.monotonic()
    frame = await raw.recv(timeout=5)
    silence = time.monotonic() - opened
    assert frame.opcode == OP_PING
    # One shared timer visits each connection once per interval: between one and two
    # intervals of silence (plus scheduling slack) before the ping.
    assert interval * 0.9 <= silence <= interval * 2 + 1.0
    await raw.aclose()


async def test_a_peer_that_keeps_sending_is_not_pinged(start_app: ServerFactory) -> None:
    interval = 0.2
    server = await start_app(heartbeat_interval=interval)
    raw = await RawWebSocket.connect("127.0.0.1", server.port)
    for i in range(16):  # 0.8 s, four intervals, a message every quarter interval
        await raw.send(OP_TEXT, f"{i}".encode())
        frame = await raw.recv(timeout=2)
        assert (frame.opcode, frame.payload) == (OP_TEXT, f"{i}".encode()), "pinged"
        await asyncio.sleep(interval / 4)
    await raw.aclose()


async def test_data_instead_of_a_pong_keeps_the_connection(start_app: ServerFactory) -> None:
    interval = 0.2
    server = await start_app(heartbeat_interval=interval)
    raw = await RawWebSocket.connect("127.0.0.1", server.port)
    assert (await raw.recv(timeout=2)).opcode == OP_PING
    # Never answer the ping, but keep talking past the pong timeout (half an interval).
    for i in range(10):
        await raw.send(OP_TEXT, f"{i}".encode())
        frame = await raw.recv(timeout=2)
        assert (frame.opcode, frame.payload) == (OP_TEXT, f"{i}".encode())
        await asyncio.sleep(interval / 4)
    await raw.aclose()


@pytest.mark.only_engine("fast", "the plain engine's handler serves to the end, as aiohttp's")
async def test_an_idle_websocket_keeps_no_task_and_no_request(start_app: ServerFactory) -> None:
    """Once upgraded, a connection is served without aiohttp's request machinery: no
    connection or handler task waits, and the upgrade request is freed (about half of
    what an idle connection would otherwise cost)."""
    server = await start_app()
    echo = server.app[SERVER_KEY]
    raws = [await RawWebSocket.connect("127.0.0.1", server.port) for _ in range(3)]
    await wait_until(lambda: len(echo.connections) == 3, timeout=3)
    await asyncio.sleep(0.1)  # let aiohttp's connection tasks finish
    gc.collect()
    waiting = [getattr(t.get_coro(), "__qualname__", "") for t in asyncio.all_tasks()]
    assert not [name for name in waiting if name.startswith(("RequestHandler", "EchoServer"))]
    assert not [o for o in gc.get_objects() if isinstance(o, web.BaseRequest)]
    for i, raw in enumerate(raws):  # and they still echo
        await raw.send(OP_TEXT, f"{i}".encode())
        assert (await raw.recv(timeout=2)).payload == f"{i}".encode()
        await raw.aclose()
    await wait_until(lambda: not echo.connections and echo.limiter.open == 0, timeout=3)


@pytest.mark.only_engine("fast", "the plain engine has aiohttp's timer per connection")
async def test_closed_connections_leave_the_shared_heartbeat(start_app: ServerFactory) -> None:
    server = await start_app(heartbeat_interval=0.2)
    heartbeat = server.app[ENGINE_KEY].heartbeat
    limiter = server.app[SERVER_KEY].limiter
    raws = [await RawWebSocket.connect("127.0.0.1", server.port) for _ in range(5)]
    await wait_until(lambda: len(heartbeat) == 5, timeout=3)
    for raw in raws[:3]:
        await raw.aclose()
    raws[3].abort()
    await wait_until(lambda: len(heartbeat) == 1, timeout=3)
    await raws[4].aclose()
    await wait_until(lambda: len(heartbeat) == 0 and limiter.open == 0, timeout=3)


async def test_server_answers_pings(start_app: ServerFactory) -> None:
    server = await start_app()
    raw = await RawWebSocket.connect("127.0.0.1", server.port)
    await raw.send(OP_PING, b"are you there")
    frame = await raw.recv()
    assert (frame.opcode, frame.payload) == (OP_PONG, b"are you there")
    await raw.aclose()


async def test_handshake_timeout_cuts_off_a_slow_upgrade(start_app: ServerFactory) -> None:
    server = await start_app(handshake_timeout=0.5)
    request = RawWebSocket.upgrade_request("127.0.0.1", server.port)
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    started = time.monotonic()
    dropped_after = None
    for byte in request[:40]:  # a byte every 50 ms: 2 s if never cut off
        writer.write(bytes([byte]))
        try:
            await writer.drain()
            if await asyncio.wait_for(reader.read(1), 0.05) == b"":
                dropped_after = time.monotonic() - started
                break
        except TimeoutError:
            continue
        except ConnectionError:
            dropped_after = time.monotonic() - started
            break
    writer.close()
    await writer.wait_closed()
    assert dropped_after is not None, "the server never cut off the slow handshake"
    assert dropped_after < 1.5
    assert server.app[SERVER_KEY].limiter.open == 0


async def test_healthz_reports_open_connections(start_app: ServerFactory) -> None:
    server = await start_app(max_connections=7)
    async with aiohttp.ClientSession() as session:
        first = await (await session.get(server.make_url("/healthz"))).json()
        ws = await session.ws_connect(server.make_url("/"))
        during = await (await session.get(server.make_url("/healthz"))).json()
        await ws.close()
    assert first["status"] == "ok"
    assert first["max_connections"] == 7
    assert (first["connections"], during["connections"]) == (0, 1)
    assert during["uptime_seconds"] >= first["uptime_seconds"] >= 0


async def test_plain_get_of_root_is_a_page_not_an_upgrade(start_app: ServerFactory) -> None:
    server = await start_app()
    async with aiohttp.ClientSession() as session, session.get(server.make_url("/")) as resp:
        assert resp.status == 200
        assert "WebSocket" in await resp.text()


async def test_sigterm_closes_connections_with_1001_and_exits_0(
    server_process: Callable[..., ServerProcess],
) -> None:
    proc = server_process(SHUTDOWN_TIMEOUT="5000")
    async with aiohttp.ClientSession() as session:
        sockets = [await session.ws_connect(proc.url) for _ in range(3)]
        proc.signal(signal.SIGTERM)
        for ws in sockets:
            msg = await ws.receive(timeout=5)
            assert (msg.type, msg.data, msg.extra) == (
                WSMsgType.CLOSE,
                1001,
                "server shutting down",
            )
            await ws.close()
    assert await asyncio.to_thread(proc.wait, 10) == 0


async def test_sigterm_reads_the_peers_answer_to_its_1001(
    server_process: Callable[..., ServerProcess],
) -> None:
    """The WebSockets are closed before aiohttp's cleanup, whose first step has the
    connection handlers drop what arrives: the plain engine never saw the answer
    (received=-) and waited CLOSE_TIMEOUT for it."""
    proc = server_process(SHUTDOWN_TIMEOUT="30000")
    peer = await RawWebSocket.connect("127.0.0.1", proc.port)
    proc.signal(signal.SIGTERM)
    frame = await peer.recv(timeout=10)
    assert (frame.opcode, frame.close_code) == (OP_CLOSE, 1001)
    await peer.send(OP_CLOSE, close_payload(1001))
    assert await asyncio.to_thread(proc.wait, 20) == 0
    await peer.aclose()
    assert "close id=c1 code=1001 sent=1001 received=1001" in proc.log(), proc.log()


async def test_shutdown_does_not_wait_past_its_timeout_for_a_silent_peer(
    server_process: Callable[..., ServerProcess],
) -> None:
    proc = server_process(SHUTDOWN_TIMEOUT="500")
    silent = await RawWebSocket.connect("127.0.0.1", proc.port)  # never answers the close
    started = time.monotonic()
    proc.signal(signal.SIGINT)
    assert await asyncio.to_thread(proc.wait, 10) == 0
    assert time.monotonic() - started < 4
    await silent.aclose()


@pytest.mark.only_engine(
    "fast", "aiohttp's own heartbeat leaves each connection in a cycle (docs/notes.md)"
)
async def test_a_closed_connection_is_freed_without_the_cycle_collector(
    start_app: ServerFactory,
) -> None:
    """Under churn, what a connection leaves behind must go by reference counting alone.

    Otherwise each closed connection (request, protocol, response, buffers) waits for
    the cyclic garbage collector, which costs memory and time.
    """
    server = await start_app(heartbeat_interval=30.0)
    limiter = server.app[SERVER_KEY].limiter
    server_side = (RequestHandler, web.BaseRequest, web.WebSocketResponse)
    gc.collect()
    gc.disable()
    try:
        for ending in ("close", "abort"):
            for _ in range(5):
                raw = await RawWebSocket.connect("127.0.0.1", server.port)
                await raw.send(OP_TEXT, b"hello")
                assert (await raw.recv(timeout=2)).payload == b"hello"
                if ending == "close":
                    await raw.send(OP_CLOSE, close_payload(1000))
                    assert (await raw.recv(timeout=2)).opcode == OP_CLOSE
                    await raw.aclose()
                else:
                    raw.abort()
        await wait_until(lambda: limiter.open == 0, timeout=5)
        await asyncio.sleep(0.1)  # let the handlers' tasks finish
        gc.set_debug(gc.DEBUG_SAVEALL)
        gc.collect()
        leaked = [type(o).__name__ for o in gc.garbage if isinstance(o, server_side)]
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()
    assert leaked == []
