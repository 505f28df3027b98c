"""The server's own listeners (echo.listeners): the gate in front of every connection,
TCP_NODELAY from the listening socket, and the TLS bounds, on every engine.

What the gate's tracker does with the bytes is tested without sockets in
tests/test_framing.py; here it is the whole path, over real loopback sockets.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import ssl
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
import aiohttp.base_protocol
import aiohttp.tcp_helpers
import pytest
from aiohttp import web

from echo.engine import ENGINE_KEY
from echo.listeners import listen, runner_options
from echo.metrics import METRICS_KEY
from echo.server import SERVER_KEY, create_app
from tests.support import (
    TEST_SETTINGS,
    ServerFactory,
    ServerProcess,
    engine_under_test,
    wait_until,
)
from tests.tls_support import Pki, ServerStarter, make_pki, start_tls_server
from tests.wsraw import OP_CLOSE, OP_TEXT, RawWebSocket, close_payload, encode_frame


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return make_pki(tmp_path)


@pytest.fixture
def nodelay_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The local ports of aiohttp's per-connection TCP_NODELAY calls.

    The client in the test process makes them too: a server's calls are those whose
    local port is the server's.
    """
    calls: list[int] = []
    real = aiohttp.tcp_helpers.tcp_nodelay

    def counting(transport: asyncio.Transport, value: bool) -> None:
        calls.append(transport.get_extra_info("sockname")[1])
        real(transport, value)

    monkeypatch.setattr(aiohttp.base_protocol, "tcp_nodelay", counting)
    return calls


async def server_side_nodelay(server: Any) -> int:
    """TCP_NODELAY of the server's side of its one open WebSocket."""
    echo = server.app[SERVER_KEY]
    await wait_until(lambda: len(echo.connections) == 1, timeout=3)
    (handle,) = echo.connections
    ws = getattr(handle, "ws", handle)  # the plain engine's session holds its response
    sock = ws.get_extra_info("socket")
    return int(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))


@pytest.mark.parametrize("tls", [False, True], ids=["tcp", "tls"])
async def test_connections_get_tcp_nodelay_from_the_listening_socket(
    start_app: ServerFactory, tls: bool, nodelay_calls: list[int], pki: Pki
) -> None:
    changes = {"tls_cert_file": str(pki.cert), "tls_key_file": str(pki.key)} if tls else {}
    server = await start_app(**changes)
    context = ssl.create_default_context(cafile=str(pki.ca)) if tls else True
    scheme = "wss" if tls else "ws"
    async with (
        aiohttp.ClientSession() as session,
        session.ws_connect(f"{scheme}://127.0.0.1:{server.port}/", ssl=context) as ws,
    ):
        assert await server_side_nodelay(server) == 1
        if server.engine == "fast":
            assert server.port not in nodelay_calls, "set per connection, not inherited"
        await ws.send_str("through")
        assert (await ws.receive(timeout=5)).data == "through"


async def test_frames_pipelined_with_the_upgrade_are_served_then_checked(
    start_app: ServerFactory,
) -> None:
    """A frame sent in the same segment as the upgrade request is echoed; an unmasked
    one after it fails the connection with 1002, and nothing after it is served."""
    server = await start_app()
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(
        RawWebSocket.upgrade_request("127.0.0.1", server.port)
        + encode_frame(OP_TEXT, b"early")
        + encode_frame(OP_TEXT, b"bare", mask=False)
        + encode_frame(OP_TEXT, b"late")
    )
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert head.startswith(b"HTTP/1.1 101 ")
    raw = RawWebSocket(reader, writer)
    assert (await raw.recv()).payload == b"early"
    frame = await raw.recv()
    assert (frame.opcode, frame.close_code) == (OP_CLOSE, 1002)
    assert await raw.eof(timeout=3)
    await wait_until(lambda: server.app[SERVER_KEY].limiter.open == 0, timeout=3)


async def test_a_refused_upgrade_ends_its_connection(start_app: ServerFactory) -> None:
    """The bytes after a refused upgrade request are never read as HTTP."""
    server = await start_app(any_origin=False, allowed_origins=frozenset())
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    upgrade = RawWebSocket.upgrade_request("127.0.0.1", server.port, "http://evil.example")
    writer.write(upgrade + b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    answer = await asyncio.wait_for(reader.read(), 5)  # up to the server's close
    writer.close()
    await writer.wait_closed()
    assert answer.startswith(b"HTTP/1.1 403 ")
    assert b"\r\nConnection: close\r\n" in answer
    assert answer.count(b"HTTP/1.1 ") == 1, "the request after it was answered"


async def test_an_upgrade_request_with_a_body_is_refused(start_app: ServerFactory) -> None:
    server = await start_app()
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    upgrade = RawWebSocket.upgrade_request("127.0.0.1", server.port)
    writer.write(upgrade[:-2] + b"Content-Length: 4\r\n\r\n" + encode_frame(OP_TEXT, b"")[:4])
    answer = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    await writer.wait_closed()
    assert answer.startswith(b"HTTP/1.1 400 ")
    assert server.app[SERVER_KEY].limiter.open == 0


async def test_keep_alive_requests_before_the_upgrade_are_followed(
    start_app: ServerFactory,
) -> None:
    """aiohttp's client reuses a pooled connection for ws_connect: the HTTP requests
    before the upgrade (bodies included) must not be mistaken for frames."""
    server = await start_app()
    async with aiohttp.ClientSession() as session:
        async with session.post(server.make_url("/echo"), data=b"\x81\x05hello") as response:
            assert response.status == 200
            await response.read()
        async with session.ws_connect(server.make_url("/")) as ws:
            await ws.send_str("after keep-alive")
            assert (await ws.receive(timeout=5)).data == "after keep-alive"


@contextlib.asynccontextmanager
async def deadline_only_from_the_gate(
    handshake_timeout: float,
) -> AsyncIterator[tuple[web.Application, int]]:
    """The app behind our listeners on a free loopback port, with aiohttp's own
    keep-alive timer pushed out of the way (60 s): any handshake deadline is the
    gate's. Yields the app and the port."""
    settings = replace(
        TEST_SETTINGS, engine=engine_under_test(), handshake_timeout=handshake_timeout
    )
    app = create_app(settings)
    options = {**runner_options(settings), "keepalive_timeout": 60.0}
    engine = app[ENGINE_KEY]
    runner = engine.runner(app, **options)
    await runner.setup()
    del options["shutdown_timeout"]
    listeners = await listen(engine.protocols(runner, options), settings, app[SERVER_KEY])
    try:
        yield app, listeners.addresses[0][1]
    finally:
        listeners.close()
        await runner.cleanup()


async def test_the_handshake_deadline_is_the_gates_whatever_aiohttp_arms(
    start_app: ServerFactory,
) -> None:
    """aiohttp 3.14.4-3.14.5 arm their keep-alive timer at accept, 3.14.0-3.14.3 and 3.15
    do not: with aiohttp's timer pushed out of the way, a dripped upgrade is still cut
    off at HANDSHAKE_TIMEOUT, and counted once."""
    async with deadline_only_from_the_gate(0.4) as (app, port):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        started = time.monotonic()
        request = RawWebSocket.upgrade_request("127.0.0.1", port)
        writer.write(request[:20])  # and nothing more
        assert await asyncio.wait_for(reader.read(), 5) == b""
        took = time.monotonic() - started
        writer.close()
        await writer.wait_closed()
        assert 0.3 < took < 2.0, took
        refused = app[METRICS_KEY].refused
        assert refused["handshake_timeout"] == 1


async def test_each_connection_is_cut_at_its_own_deadline_on_the_shared_timer() -> None:
    """The deadlines of a listener's connections share one timer (Deadlines): a
    connection that comes later and sends nothing is still cut off at its own deadline,
    not at the first one's nor never, and one that completed its head in between is
    served on. aiohttp's own keep-alive timer is pushed out of the way, as above."""
    timeout = 0.6

    async def dripped(port: int) -> float:
        """Seconds from connecting to being cut off, sending part of a head only."""
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        started = time.monotonic()
        writer.write(RawWebSocket.upgrade_request("127.0.0.1", port)[:20])
        assert await asyncio.wait_for(reader.read(), 5) == b""
        writer.close()
        return time.monotonic() - started

    async with deadline_only_from_the_gate(timeout) as (app, port):
        first = asyncio.ensure_future(dripped(port))
        await asyncio.sleep(0.25)
        served = await RawWebSocket.connect("127.0.0.1", port)
        second = asyncio.ensure_future(dripped(port))
        took = await asyncio.gather(first, second)
        await asyncio.sleep(timeout)  # past the served connection's deadline too
        await served.send(OP_TEXT, b"still here")
        assert (await served.recv_data()).payload == b"still here"
        await served.aclose()
        assert all(timeout - 0.1 < t < timeout + 1.0 for t in took), took
        assert app[METRICS_KEY].refused["handshake_timeout"] == 2


# -- TLS -----------------------------------------------------------------------------


def fds(proc: ServerProcess) -> int:
    return len(os.listdir(f"/proc/{proc.proc.pid}/fd"))


async def settled_fds(proc: ServerProcess) -> int:
    """The server's descriptor count once the readiness probe's connection is gone."""
    count = fds(proc)
    for _ in range(40):
        await asyncio.sleep(0.1)
        now = fds(proc)
        if now == count:
            return count
        count = now
    return count


def healthz(proc: ServerProcess, pki: Pki) -> int:
    """The server's open connection count, over https."""
    import http.client
    import json

    context = ssl.create_default_context(cafile=str(pki.ca))
    connection = http.client.HTTPSConnection("127.0.0.1", proc.port, timeout=3, context=context)
    try:
        connection.request("GET", "/healthz")
        return int(json.loads(connection.getresponse().read())["connections"])
    finally:
        connection.close()


class BlockingTLSPeer:
    """A TLS client on a blocking socket: it sends close_notify only when told, so it
    can leave the server waiting for one (or go silent, as a half-open peer)."""

    def __init__(self, port: int, pki: Pki) -> None:
        context = ssl.create_default_context(cafile=str(pki.ca))
        raw = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.sock = context.wrap_socket(raw, server_hostname="127.0.0.1")
        self.port = port

    def upgrade(self) -> None:
        self.sock.sendall(RawWebSocket.upgrade_request("127.0.0.1", self.port))
        head = b""
        while b"\r\n\r\n" not in head:
            head += self.sock.recv(1)
        assert head.startswith(b"HTTP/1.1 101 "), head

    def close_frame_exchange(self) -> int:
        """Send a close frame, read the server's, and return its code."""
        self.sock.sendall(encode_frame(OP_CLOSE, close_payload(1000)))
        head = self.sock.recv(2)
        payload = self.sock.recv(head[1] & 0x7F)
        assert head[0] & 0x0F == OP_CLOSE
        return int.from_bytes(payload[:2], "big")

    def drop(self) -> None:
        """Close the TCP socket without a TLS close_notify."""
        self.sock.detach()  # the ssl object lets go of the descriptor...
        # ...which is closed by the raw socket object the context wrapped (garbage now).


async def seconds_until(predicate: Any, timeout: float) -> float:
    started = time.monotonic()
    await wait_until(predicate, timeout=timeout, interval=0.05)
    return time.monotonic() - started


async def test_tls_connection_ends_promptly_after_a_close_without_close_notify(
    server_process: ServerStarter, pki: Pki
) -> None:
    """After the closing handshake the server sends its close_notify and waits for the
    peer's at most HANDSHAKE_TIMEOUT (1 s here; asyncio's default is 30 s)."""
    proc = start_tls_server(server_process, pki, HANDSHAKE_TIMEOUT="1000")
    baseline = await settled_fds(proc)
    peer = await asyncio.to_thread(BlockingTLSPeer, proc.port, pki)
    await asyncio.to_thread(peer.upgrade)
    assert await asyncio.to_thread(peer.close_frame_exchange) == 1000
    # The peer keeps its socket open and never answers the server's close_notify.
    took = await seconds_until(lambda: fds(proc) <= baseline, timeout=8)
    assert took < 4, f"descriptor held {took:.1f}s"
    assert healthz(proc, pki) == 0
    await asyncio.to_thread(peer.sock.close)


async def test_a_peer_silent_after_the_tls_handshake_is_cut_at_the_deadline(
    server_process: ServerStarter, pki: Pki
) -> None:
    proc = start_tls_server(server_process, pki, HANDSHAKE_TIMEOUT="500")
    baseline = await settled_fds(proc)
    peer = await asyncio.to_thread(BlockingTLSPeer, proc.port, pki)  # handshake done
    took = await seconds_until(lambda: fds(proc) <= baseline, timeout=8)
    assert took < 3, f"descriptor held {took:.1f}s"
    await asyncio.to_thread(peer.sock.close)


async def test_a_half_open_tls_peer_is_dropped_within_the_heartbeat_bound(
    server_process: ServerStarter, pki: Pki
) -> None:
    """A WebSocket peer that stops answering (gone without a FIN, as behind a dead NAT)
    is dropped within 2.5 heartbeat intervals, as on plain TCP: no TLS close_notify
    wait (HANDSHAKE_TIMEOUT is long here) for a peer that failed the heartbeat."""
    proc = start_tls_server(
        server_process, pki, HEARTBEAT_INTERVAL="400", HANDSHAKE_TIMEOUT="10000"
    )
    baseline = await settled_fds(proc)
    peer = await asyncio.to_thread(BlockingTLSPeer, proc.port, pki)
    await asyncio.to_thread(peer.upgrade)
    took = await seconds_until(lambda: fds(proc) <= baseline, timeout=10)
    assert took < 2.5 * 0.4 + 1.5, f"descriptor held {took:.1f}s"
    assert healthz(proc, pki) == 0
    await asyncio.to_thread(peer.sock.close)
