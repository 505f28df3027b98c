"""Readiness and draining: GET /readyz, DRAIN_DELAY after SIGTERM, INSTANCE_NAME in /healthz."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import signal
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import WSMsgType

from echo.server import SERVER_KEY
from tests.support import ServerFactory, ServerProcess
from tests.test_workers import pinned, workers_of
from tests.wsraw import OP_TEXT, RawWebSocket

ServerStarter = Callable[..., ServerProcess]


def new_session() -> aiohttp.ClientSession:
    """No pooled connections: each request is a new one (with workers, any worker's)."""
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True))


async def get(session: aiohttp.ClientSession, url: str) -> tuple[int, Any]:
    async with session.get(url, timeout=aiohttp.ClientTimeout(total=10)) as response:
        if response.content_type == "application/json":
            return response.status, await response.json()
        return response.status, await response.text()


async def until_draining(session: aiohttp.ClientSession, base: str, timeout: float = 10) -> None:
    """Poll /readyz until it answers 503 (the stop signal has been acted on)."""
    deadline = time.monotonic() + timeout
    while (await get(session, f"{base}/readyz"))[0] != 503:
        assert time.monotonic() < deadline, "/readyz never turned 503"
        await asyncio.sleep(0.05)


async def raw_handshake(port: int) -> bytes:
    """A WebSocket upgrade request on a raw socket: the status line and headers answered."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(RawWebSocket.upgrade_request("127.0.0.1", port))
        return await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def assert_closed_with_1001(ws: aiohttp.ClientWebSocketResponse, timeout: float) -> None:
    msg = await ws.receive(timeout=timeout)
    assert (msg.type, msg.data, msg.extra) == (WSMsgType.CLOSE, 1001, "server shutting down")
    await ws.close()


async def test_readyz_is_200_until_the_drain_and_new_handshakes_then_get_503(
    start_app: ServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    server = await start_app(any_origin=False, allow_missing_origin=True)
    echo = server.app[SERVER_KEY]
    async with aiohttp.ClientSession() as session:
        async with session.get(server.make_url("/readyz")) as response:
            assert (response.status, await response.json()) == (200, {"status": "ready"})
            assert response.headers["Cache-Control"] == "no-store"
        ws = await session.ws_connect(server.make_url("/"))
        await echo.readiness.drain(0)
        async with session.get(server.make_url("/readyz")) as response:
            assert (response.status, await response.json()) == (503, {"status": "draining"})
            assert response.headers["Cache-Control"] == "no-store"
        async with session.get(server.make_url("/healthz")) as response:
            assert response.status == 200, "liveness does not change while draining"
        with caplog.at_level(logging.INFO, logger="echo.server"):
            with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                await session.ws_connect(server.make_url("/"))
        assert refused.value.status == 503
        assert refused.value.headers is not None
        assert refused.value.headers["Retry-After"] == "1"
        assert "reason=draining" in caplog.text
        # An origin that is never allowed still gets its 403, not a retry hint.
        with pytest.raises(aiohttp.WSServerHandshakeError) as forbidden:
            await session.ws_connect(server.make_url("/"), origin="http://evil.example")
        assert forbidden.value.status == 403
        # The connection opened before the drain is served as before.
        await ws.send_str("still here")
        assert await ws.receive_str(timeout=5) == "still here"
        await ws.close()
        async with session.post(server.make_url("/readyz")) as response:
            assert response.status == 405, "/readyz is not the HTTP echo"
    assert echo.metrics is not None
    assert echo.metrics.refused["draining"] == 1
    assert echo.limiter.open == 0


async def test_sigterm_drains_for_drain_delay_then_closes_with_1001(
    server_process: ServerStarter,
) -> None:
    delay = 3.0
    proc = server_process(DRAIN_DELAY=str(int(delay * 1000)), SHUTDOWN_TIMEOUT="5000")
    silent_reader, silent_writer = await asyncio.open_connection("127.0.0.1", proc.port)
    async with new_session() as session:
        assert (await get(session, f"{proc.http}/readyz"))[0] == 200
        sockets = [await session.ws_connect(proc.url) for _ in range(2)]
        raw = await RawWebSocket.connect("127.0.0.1", proc.port)
        started = time.monotonic()
        proc.signal(signal.SIGTERM)
        await until_draining(session, proc.http)
        # While draining: open WebSockets echo; everything but new WebSockets is served.
        for i, ws in enumerate(sockets):
            await ws.send_str(f"during the drain {i}")
            assert await ws.receive_str(timeout=5) == f"during the drain {i}"
        await raw.send(OP_TEXT, b"raw too")
        assert (await raw.recv_data()).payload == b"raw too"
        status, health = await get(session, f"{proc.http}/healthz")
        assert (status, health["status"]) == (200, "ok")
        assert (await get(session, f"{proc.http}/"))[0] == 200, "the console page"
        assert (await get(session, f"{proc.http}/anything"))[0] == 200, "the HTTP echo"
        # A burst of new handshakes: each one 503 with Retry-After, none upgraded.
        answers = await asyncio.gather(*(raw_handshake(proc.port) for _ in range(20)))
        for head in answers:
            assert head.startswith(b"HTTP/1.1 503 "), head[:40]
            assert b"\r\nRetry-After: 1\r\n" in head
        assert proc.proc.poll() is None, "still running after the checks: drain too short?"
        for ws in sockets:
            await assert_closed_with_1001(ws, timeout=delay + 10)
        assert time.monotonic() - started >= delay, "closed before DRAIN_DELAY was over"
        await raw.aclose()
    # The silent TCP connection (never a request) does not hold the exit up.
    assert await asyncio.to_thread(proc.wait, 15) == 0
    silent_writer.close()
    with contextlib.suppress(ConnectionError):
        await silent_writer.wait_closed()
    del silent_reader
    log = proc.log()
    assert "draining for 3.000 s" in log
    # Each refusal logged, or counted in a summary line (over 10 a second: echo.refusals).
    summarised = sum(map(int, re.findall(r"reason=draining not_logged=(\d+)", log)))
    assert log.count("reason=draining (") + summarised == 20


async def test_a_second_signal_cuts_the_drain_short(server_process: ServerStarter) -> None:
    proc = server_process(DRAIN_DELAY="60000", SHUTDOWN_TIMEOUT="2000")
    async with new_session() as session:
        ws = await session.ws_connect(proc.url)
        proc.signal(signal.SIGTERM)
        await until_draining(session, proc.http)
        proc.signal(signal.SIGINT)  # Ctrl-C again, say
        await assert_closed_with_1001(ws, timeout=10)
    assert await asyncio.to_thread(proc.wait, 10) == 0


async def test_without_drain_delay_sigterm_closes_at_once(server_process: ServerStarter) -> None:
    proc = server_process()  # DRAIN_DELAY unset: 0, today's behaviour
    async with new_session() as session:
        ws = await session.ws_connect(proc.url)
        proc.signal(signal.SIGTERM)
        await assert_closed_with_1001(ws, timeout=10)
    assert await asyncio.to_thread(proc.wait, 10) == 0
    assert "draining for" not in proc.log()


async def test_workers_drain_on_sigterm(server_process: ServerStarter) -> None:
    delay = 3.0
    proc = server_process(WORKERS="2", DRAIN_DELAY=str(int(delay * 1000)), SHUTDOWN_TIMEOUT="2000")
    async with new_session() as session:
        sockets = []
        for pid in workers_of(proc):  # one connection held by each worker
            with pinned(proc, pid):
                sockets.append(await session.ws_connect(proc.url))
        started = time.monotonic()
        proc.signal(signal.SIGTERM)
        await until_draining(session, proc.http)
        for i, ws in enumerate(sockets):  # both workers still serve their connections
            await ws.send_str(f"draining {i}")
            assert await ws.receive_str(timeout=5) == f"draining {i}"
        for _ in range(6):  # whichever worker accepts it, it refuses the upgrade
            head = await raw_handshake(proc.port)
            assert head.startswith(b"HTTP/1.1 503 "), head[:40]
        for ws in sockets:
            await assert_closed_with_1001(ws, timeout=delay + 10)
        assert time.monotonic() - started >= delay
    assert await asyncio.to_thread(proc.wait, 15) == 0
    assert proc.log().count("draining for 3.000 s") == 2, "one line per worker"


async def test_workers_quick_stop_does_not_drain(server_process: ServerStarter) -> None:
    proc = server_process(WORKERS="2", DRAIN_DELAY="60000", SHUTDOWN_TIMEOUT="1000")
    async with new_session() as session:
        ws = await session.ws_connect(proc.url)
        proc.signal(signal.SIGINT)  # gunicorn's quick stop: two seconds, then SIGKILL
        await assert_closed_with_1001(ws, timeout=10)
    assert await asyncio.to_thread(proc.wait, 15) == 0
    assert "draining for" not in proc.log()


async def test_healthz_names_the_instance_only_when_set(start_app: ServerFactory) -> None:
    named = await start_app(instance_name="echo-6f7d9c-x2k4p")
    anonymous = await start_app()
    async with aiohttp.ClientSession() as session:
        async with session.get(named.make_url("/healthz")) as response:
            assert (await response.json())["instance"] == "echo-6f7d9c-x2k4p"
        async with session.get(anonymous.make_url("/healthz")) as response:
            assert "instance" not in await response.json()
