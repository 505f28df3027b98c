"""Slow reader: a peer that sends 64 MiB of messages and never reads its echoes.

The server must push back (stop reading that socket once its echoes cannot be
written) or drop the peer, never buffer the echoes in its own memory, and keep
serving everyone else promptly meanwhile.
"""

from __future__ import annotations

import asyncio
import statistics
from collections.abc import Callable

import aiohttp
import pytest

from tests.reliability.conftest import record, rss_kib, scale
from tests.reliability.probes import alarming_lines, echo_rtt, stable_fds, wait_settled
from tests.support import ServerProcess
from tests.wsraw import OP_BINARY, RawWebSocket, encode_frame

pytestmark = pytest.mark.soak

MIB = 1 << 20
FRAME = 64 * 1024
STALL = 3.0  # a write that cannot drain for this long means the server stopped reading


async def flood(raw: RawWebSocket, total: int) -> tuple[int, str]:
    """Write ``total`` bytes of binary messages without ever reading; (bytes sent, outcome)."""
    frame = encode_frame(OP_BINARY, bytes(range(256)) * (FRAME // 256))
    sent = 0
    try:
        while sent < total:
            raw.writer.write(frame)
            await asyncio.wait_for(raw.writer.drain(), STALL)
            sent += FRAME
    except TimeoutError:
        return sent, "backpressure"
    except ConnectionError:
        return sent, "dropped"
    return sent, "all sent"


async def test_slow_reader_is_held_back_and_others_stay_fast(
    server_process: Callable[..., ServerProcess],
) -> None:
    readers = scale(1, 4)
    proc = server_process(MAX_MESSAGE_SIZE=str(FRAME))
    pid = proc.proc.pid
    fds_before = await stable_fds(pid)
    rss_before = peak = rss_kib(pid)
    total = 64 * MIB

    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(proc.url) as other:
            raws = [await RawWebSocket.connect("127.0.0.1", proc.port) for _ in range(readers)]
            floods = [asyncio.create_task(flood(raw, total)) for raw in raws]
            rtts: list[float] = []
            # Sample the bystander's round trip and the server's memory while it floods.
            while not all(task.done() for task in floods) and len(rtts) < 2000:
                rtts.append(await echo_rtt(other))
                peak = max(peak, rss_kib(pid))
                await asyncio.sleep(0.02)
            results = [await task for task in floods]
            for _ in range(20):  # and once the flood has stalled
                rtts.append(await echo_rtt(other))
                peak = max(peak, rss_kib(pid))
            for raw in raws:
                raw.abort()
        fds_end = await wait_settled(proc, fds_before)

    growth_mib = (peak - rss_before) / 1024
    median_ms = statistics.median(rtts) * 1000
    worst_ms = max(rtts) * 1000
    record(
        "slow_reader",
        slow_readers=readers,
        attempted_mib=64,
        sent_mib=[round(sent / MIB, 1) for sent, _ in results],
        outcome=[outcome for _, outcome in results],
        rss_start_mib=round(rss_before / 1024, 1),
        rss_peak_mib=round(peak / 1024, 1),
        rss_growth_mib=round(growth_mib, 1),
        bystander_rtts=len(rtts),
        bystander_rtt_median_ms=round(median_ms, 2),
        bystander_rtt_max_ms=round(worst_ms, 2),
        fds_start=fds_before,
        fds_end=fds_end,
    )
    for sent, outcome in results:
        assert outcome in ("backpressure", "dropped"), f"64 MiB accepted without pushback: {sent}"
    assert growth_mib < 32, f"server RSS grew by {growth_mib:.1f} MiB"
    # The bound is 50 ms; on a shared CI core allow a few scheduling hiccups.
    assert median_ms < 50, f"bystander median round trip {median_ms:.1f} ms"
    assert worst_ms < 500, f"bystander worst round trip {worst_ms:.1f} ms"
    assert not alarming_lines(proc.log())
