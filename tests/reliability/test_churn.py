"""Churn: many short connect / echo / disconnect cycles must not leak memory or descriptors.

Cycles use raw sockets (upgrade request and first frame in one write) so the test
client stays cheap and the server does nearly all the work.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest

from tests.reliability.conftest import record, rss_kib, scale
from tests.reliability.probes import alarming_lines, stable_fds, wait_settled
from tests.support import ServerProcess
from tests.wsraw import OP_CLOSE, OP_TEXT, RawWebSocket, close_payload, encode_frame

pytestmark = pytest.mark.soak

CONCURRENCY = 50
PAYLOAD = b"churn"


class Cycles:
    """Runs connect / echo / close cycles against one port and counts what came back."""

    def __init__(self, port: int) -> None:
        self.port = port
        opening = RawWebSocket.upgrade_request("127.0.0.1", port)
        self.opening = opening + encode_frame(OP_TEXT, PAYLOAD)
        self.closing = encode_frame(OP_CLOSE, close_payload(1000))
        self.echoed = 0
        self.lost = 0

    async def one(self) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        try:
            writer.write(self.opening)
            head = await reader.readuntil(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 101 "), head[:40]
            frame = await reader.readexactly(2 + len(PAYLOAD))
            if frame[0] & 0x0F == OP_TEXT and frame[2:] == PAYLOAD:
                self.echoed += 1
            else:
                self.lost += 1
            writer.write(self.closing)
            reply = await reader.readexactly(4)
            assert reply[0] & 0x0F == OP_CLOSE, reply
            await reader.read()  # the server drops the TCP connection after the closing handshake
        finally:
            writer.close()
            await writer.wait_closed()

    async def run(self, count: int) -> None:
        todo = iter(range(count))

        async def worker() -> None:
            for _ in todo:
                await asyncio.wait_for(self.one(), 30)

        await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))


async def test_churn_leaks_no_memory_or_descriptors(
    server_process: Callable[..., ServerProcess],
) -> None:
    cycles = scale(20_000, 200_000)
    warmup = 1_000
    proc = server_process(MAX_CONNECTIONS=str(CONCURRENCY))
    pid = proc.proc.pid
    fds_before = await stable_fds(pid)
    churn = Cycles(proc.port)

    await churn.run(warmup)  # allocator arenas and caches reach their working size
    await wait_settled(proc, fds_before)
    rss_warm = rss_kib(pid)
    peak = rss_warm
    started = time.monotonic()
    done = 0
    while done < cycles:
        batch = min(5_000, cycles - done)
        await churn.run(batch)
        done += batch
        peak = max(peak, rss_kib(pid))
    elapsed = time.monotonic() - started
    fds_end = await wait_settled(proc, fds_before)
    rss_end = rss_kib(pid)

    growth_mib = (rss_end - rss_warm) / 1024
    record(
        "churn",
        cycles=cycles,
        concurrency=CONCURRENCY,
        echoed=churn.echoed - warmup,
        lost=churn.lost,
        cycles_per_s=round(cycles / elapsed),
        rss_after_warmup_mib=round(rss_warm / 1024, 1),
        rss_peak_mib=round(peak / 1024, 1),
        rss_end_mib=round(rss_end / 1024, 1),
        rss_growth_mib=round(growth_mib, 2),
        fds_start=fds_before,
        fds_end=fds_end,
    )
    assert churn.lost == 0
    assert churn.echoed == warmup + cycles
    assert growth_mib < 8, f"RSS grew by {growth_mib:.1f} MiB over {cycles} cycles"
    assert fds_end == fds_before
    assert not alarming_lines(proc.log())
