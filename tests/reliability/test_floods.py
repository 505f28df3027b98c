"""Connection-level attacks: handshake floods, slowloris and half-open peers.

Each must leave the server answering, hold no connection slot it should not, and
give back every descriptor once the attackers are gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

import aiohttp
import pytest

from tests.reliability.conftest import open_fds, record, rss_kib, scale
from tests.reliability.probes import (
    alarming_lines,
    echo_rtt,
    healthz_connections,
    stable_fds,
    wait_settled,
)
from tests.support import ServerProcess, wait_until
from tests.wsraw import OP_TEXT, RawWebSocket

pytestmark = pytest.mark.soak


async def handshake(
    port: int, go: asyncio.Event
) -> tuple[int, asyncio.StreamReader, asyncio.StreamWriter]:
    """Connect, wait for the starting gun, send an upgrade; (status, reader, writer)."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 30)
    await go.wait()
    writer.write(RawWebSocket.upgrade_request("127.0.0.1", port))
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
    return int(head.split(b" ", 2)[1]), reader, writer


async def test_handshake_flood_admits_exactly_max_connections(
    server_process: Callable[..., ServerProcess],
) -> None:
    limit = scale(50, 300)
    clients = 10 * limit
    proc = server_process(MAX_CONNECTIONS=str(limit))
    pid = proc.proc.pid
    fds_before = await stable_fds(pid)
    rss_before = rss_kib(pid)

    go = asyncio.Event()
    tasks = [asyncio.create_task(handshake(proc.port, go)) for _ in range(clients)]
    # Fire only once the server has accepted every TCP connection, so they truly race.
    await wait_until(lambda: open_fds(pid) >= fds_before + clients, timeout=30)
    go.set()
    started = time.monotonic()
    results = await asyncio.gather(*tasks)
    elapsed = time.monotonic() - started
    peak_fds = open_fds(pid)
    statuses = [status for status, _, _ in results]
    healthz_during = await healthz_connections(proc)
    rss_peak = rss_kib(pid)
    for _, _, writer in results:
        writer.close()
    await asyncio.gather(*(w.wait_closed() for _, _, w in results), return_exceptions=True)
    fds_end = await wait_settled(proc, fds_before)

    admitted = statuses.count(101)
    refused = statuses.count(503)
    record(
        "handshake_flood",
        max_connections=limit,
        clients=clients,
        admitted=admitted,
        refused_503=refused,
        other_statuses=sorted({s for s in statuses if s not in (101, 503)}),
        healthz_during=healthz_during,
        handshakes_s=round(elapsed, 2),
        fds_start=fds_before,
        fds_peak=peak_fds,
        fds_end=fds_end,
        rss_start_mib=round(rss_before / 1024, 1),
        rss_peak_mib=round(rss_peak / 1024, 1),
    )
    assert admitted == limit
    assert refused == clients - limit
    assert healthz_during == limit
    assert not alarming_lines(proc.log())


async def drip(port: int, interval: float, budget: float) -> float | None:
    """Send an upgrade request a byte every ``interval`` s; seconds until cut off, or None."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    request = RawWebSocket.upgrade_request("127.0.0.1", port)
    started = time.monotonic()
    try:
        for byte in request:
            if time.monotonic() - started > budget:
                return None
            writer.write(bytes([byte]))
            await writer.drain()
            try:
                if await asyncio.wait_for(reader.read(1), interval) == b"":
                    return time.monotonic() - started
            except TimeoutError:
                continue
        return None  # the whole request went through: not cut off
    except ConnectionError:
        return time.monotonic() - started
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def test_slowloris_is_cut_off_and_holds_no_slot(
    server_process: Callable[..., ServerProcess],
) -> None:
    attackers = scale(50, 500)
    timeout_ms = 2000
    proc = server_process(MAX_CONNECTIONS="5", HANDSHAKE_TIMEOUT=str(timeout_ms))
    pid = proc.proc.pid
    fds_before = await stable_fds(pid)

    drips = [asyncio.create_task(drip(proc.port, 1.0, budget=20)) for _ in range(attackers)]
    await asyncio.sleep(0.5)
    during = await healthz_connections(proc)
    # While they drip, real clients still get every one of the 5 slots.
    async with aiohttp.ClientSession() as session:
        sockets = [await session.ws_connect(proc.url) for _ in range(5)]
        rtt = await echo_rtt(sockets[0])
        for ws in sockets:
            await ws.close()
    cut_after = await asyncio.gather(*drips)
    fds_end = await wait_settled(proc, fds_before)

    never_cut = sum(1 for t in cut_after if t is None)
    times = sorted(t for t in cut_after if t is not None)
    record(
        "slowloris",
        attackers=attackers,
        handshake_timeout_ms=timeout_ms,
        never_cut_off=never_cut,
        cut_off_min_s=round(times[0], 2) if times else None,
        cut_off_max_s=round(times[-1], 2) if times else None,
        healthz_during=during,
        real_client_rtt_ms=round(rtt * 1000, 2),
        fds_start=fds_before,
        fds_end=fds_end,
    )
    assert never_cut == 0
    assert during == 0
    assert times[0] >= timeout_ms / 1000 - 0.5
    assert times[-1] < timeout_ms / 1000 + 5
    assert not alarming_lines(proc.log())


async def test_half_open_peers_are_dropped_after_the_heartbeat(
    server_process: Callable[..., ServerProcess],
) -> None:
    peers = scale(20, 200)
    heartbeat_ms = 1000
    proc = server_process(MAX_CONNECTIONS=str(peers), HEARTBEAT_INTERVAL=str(heartbeat_ms))
    pid = proc.proc.pid
    fds_before = await stable_fds(pid)

    raws = [await RawWebSocket.connect("127.0.0.1", proc.port) for _ in range(peers)]
    for raw in raws:  # prove each works, then go silent: no reads, no pongs
        await raw.send(OP_TEXT, b"hello")
    full = await healthz_connections(proc)
    started = time.monotonic()
    dropped = await asyncio.gather(*(raw.eof(timeout=heartbeat_ms / 1000 * 3 + 5) for raw in raws))
    elapsed = time.monotonic() - started
    fds_end = await wait_settled(proc, fds_before)
    # Every slot is free again: a new client gets in even with MAX_CONNECTIONS taken before.
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(proc.url) as ws:
            await echo_rtt(ws)

    record(
        "half_open",
        peers=peers,
        heartbeat_ms=heartbeat_ms,
        healthz_before=full,
        dropped=sum(dropped),
        all_dropped_within_s=round(elapsed, 2),
        fds_start=fds_before,
        fds_end=fds_end,
    )
    assert full == peers
    assert all(dropped)
    for raw in raws:
        if not raw.writer.is_closing():
            await raw.aclose()
    assert not alarming_lines(proc.log())
