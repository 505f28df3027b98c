"""Client under faults: the server is killed and restarted while clients keep echoing.

Every ``echo-client`` must end with ``echoed == sent`` and ``mismatched == 0``: what
was unanswered when the server died is sent again after the reconnect, nothing is
lost and nothing is echoed twice.
"""

from __future__ import annotations

import asyncio
import re
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.client_support import ClientProcess, fast_client_env, parse_summary
from tests.reliability.conftest import record, scale
from tests.support import ServerProcess, free_port, wait_until

pytestmark = pytest.mark.soak

CLIENTS = 20
INTERVAL_MS = 50  # 20 messages per second per client


async def all_connected(clients: list[ClientProcess], connection: int) -> None:
    """Wait until every client has logged its ``connection``-th connection."""
    pattern = re.compile(rf"connected to .* \(connection {connection},")
    deadline = time.monotonic() + 60
    while not all(pattern.search(c.stderr()) for c in clients):
        assert time.monotonic() < deadline, f"not every client reached connection {connection}"
        assert all(c.proc.poll() is None for c in clients), "a client exited early"
        await asyncio.sleep(0.1)


async def test_clients_lose_nothing_while_the_server_is_killed_and_restarted(
    server_process: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    restarts = scale(5, 20)
    up_s = 1.5
    port = str(free_port())
    server = server_process(PORT=port)
    url = f"ws://127.0.0.1:{port}/"
    clients = []
    for i in range(CLIENTS):
        cwd = tmp_path / f"client-{i}"
        cwd.mkdir()
        args = ["--url", url, "--interval", str(INTERVAL_MS), "--count", "0"]  # until stopped
        clients.append(ClientProcess(args, fast_client_env(), cwd))
    started = time.monotonic()
    try:
        for kill in range(1, restarts + 1):
            await all_connected(clients, kill)
            await asyncio.sleep(up_s)
            server.proc.send_signal(signal.SIGKILL)
            server.wait(10)
            await asyncio.sleep(0.3)
            server = server_process(PORT=port)
        await all_connected(clients, restarts + 1)
        await asyncio.sleep(up_s)
        for client in clients:  # a gentle stop: unanswered messages are awaited first
            client.proc.send_signal(signal.SIGINT)
        await wait_until(lambda: all(c.proc.poll() is not None for c in clients), timeout=60)
        codes = [c.proc.poll() for c in clients]
    finally:
        for client in clients:
            client.kill()
    elapsed = time.monotonic() - started

    assert codes == [0] * CLIENTS, [c.stderr()[-2000:] for c in clients if c.proc.returncode]
    summaries = [parse_summary(c.stdout()) for c in clients]
    sent = [int(s["sent"]) for s in summaries]
    echoed = [int(s["echoed"]) for s in summaries]
    reconnects = [int(s["reconnects"]) for s in summaries]
    record(
        "client_faults",
        clients=CLIENTS,
        rate_per_client=1000 // INTERVAL_MS,
        server_kills=restarts,
        sent=sum(sent),
        echoed=sum(echoed),
        resent=sum(int(s["resent"]) for s in summaries),
        lost=sum(sent) - sum(echoed),
        mismatched=sum(int(s["mismatched"]) for s in summaries),
        reconnects_min=min(reconnects),
        reconnects_max=max(reconnects),
        run_s=round(elapsed, 1),
    )
    for summary in summaries:
        assert summary["echoed"] == summary["sent"], summary
        assert summary["mismatched"] == "0", summary
        assert int(summary["echoed"]) >= 20, summary
    assert min(reconnects) >= restarts, "every kill must have cost each client a connection"
