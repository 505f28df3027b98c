"""Small async helpers the reliability tests share: health, echo round trips, log checks."""

from __future__ import annotations

import asyncio
import re
import time

import aiohttp

from tests.reliability.conftest import open_fds
from tests.support import ServerProcess, wait_until

# Lines a healthy server never writes at info level for anything a peer does.
ALARMING = re.compile(r"Traceback|\b(ERROR|CRITICAL|WARNING)\b")


async def healthz_connections(proc: ServerProcess) -> int:
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{proc.http}/healthz", timeout=aiohttp.ClientTimeout(5)) as r:
            body = await r.json()
            return int(body["connections"])


async def wait_settled(proc: ServerProcess, fds: int, timeout: float = 15.0) -> int:
    """Wait until /healthz reports no connection and the server holds ``fds`` descriptors.

    Returns the descriptor count reached (at most ``fds``); fails the test on timeout.
    """
    deadline = time.monotonic() + timeout
    while await healthz_connections(proc) != 0:
        if time.monotonic() > deadline:
            raise AssertionError(f"/healthz still reports connections after {timeout}s")
        await asyncio.sleep(0.05)
    await wait_until(lambda: open_fds(proc.proc.pid) <= fds, timeout=timeout)
    return open_fds(proc.proc.pid)


async def stable_fds(pid: int, timeout: float = 5.0) -> int:
    """The server's descriptor count once it stops changing (probe connections closed)."""
    deadline = time.monotonic() + timeout
    readings = [open_fds(pid)]
    while len(readings) < 3 or len(set(readings[-3:])) != 1:
        if time.monotonic() > deadline:
            break
        await asyncio.sleep(0.1)
        readings.append(open_fds(pid))
    return min(readings[-3:])


async def echo_rtt(ws: aiohttp.ClientWebSocketResponse, payload: str = "ping") -> float:
    """One echo round trip on ``ws`` in seconds; fails if the echo differs."""
    started = time.perf_counter()
    await ws.send_str(payload)
    msg = await ws.receive(timeout=10)
    elapsed = time.perf_counter() - started
    assert msg.type is aiohttp.WSMsgType.TEXT, msg
    assert msg.data == payload
    return elapsed


def alarming_lines(log: str) -> list[str]:
    """Log lines above info that a peer's behaviour must never cause."""
    return [line for line in log.splitlines() if ALARMING.search(line)]
