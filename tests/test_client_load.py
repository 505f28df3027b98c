"""Load mode (``--connections N``): many checked connections, counts and percentiles."""

from __future__ import annotations

import asyncio
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiohttp import web

from echo.client.load import LoadTest
from echo.config import ClientSettings
from tests.client_support import Relay, fast_client_env, json_events, run_client
from tests.support import ServerProcess, wait_until
from tests.terminal_support import Terminal

ServerStarter = Callable[..., ServerProcess]
PERCENTILES = ["rtt_p50_ms", "rtt_p90_ms", "rtt_p99_ms", "rtt_p99.9_ms", "rtt_max_ms"]


def test_200_connections_echo_everything_with_sane_percentiles(
    server_process: ServerStarter, tmp_path: Path
) -> None:
    server = server_process(MAX_CONNECTIONS="1000")
    result = run_client(
        [server.url, "--connections", "200", "--in-flight", "2", "--count", "4000", "--json"],
        tmp_path,
        timeout=180,
    )
    assert result.returncode == 0, result.stderr
    events = json_events(result.stdout)
    summary = events[-1]
    assert summary["event"] == "summary"
    assert summary["connections"] == 200
    assert summary["sent"] == summary["echoed"] == 4000
    assert (summary["lost"], summary["mismatched"], summary["resent"]) == (0, 0, 0)
    assert (summary["failed_attempts"], summary["dropped"], summary["reconnects"]) == (0, 0, 0)
    values = [summary[name] for name in PERCENTILES]
    assert all(value > 0 for value in values), values
    assert values == sorted(values), f"p50 <= p90 <= p99 <= p99.9 <= max: {values}"
    assert summary["msgs_per_s"] > 0
    # The server saw 200 WebSockets, each closed cleanly by the client.
    log = server.log()
    assert len(re.findall(r"close id=c\d+ code=1000", log)) == 200, log[-2000:]


def test_rate_is_a_ceiling_and_the_text_summary_has_every_count(
    server_process: ServerStarter, tmp_path: Path
) -> None:
    server = server_process(MAX_CONNECTIONS="1000")
    result = run_client(
        [server.url, "--connections", "50", "--rate", "200", "--duration", "2000"],
        tmp_path,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "load: 50 connections to " in result.stderr
    assert "200 messages/s in all, for 2 s" in result.stderr
    line = result.stdout.strip()
    match = re.fullmatch(
        r"summary connections=50 seconds=[\d.]+ sent=(\d+) echoed=(\d+) lost=0 resent=0 "
        r"mismatched=0 reconnects=0 failed_attempts=0 dropped=0 msgs_per_s=[\d.]+ "
        r"rtt_p50_ms=[\d.]+ rtt_p90_ms=[\d.]+ rtt_p99_ms=[\d.]+ rtt_p99\.9_ms=[\d.]+ "
        r"rtt_max_ms=[\d.]+",
        line,
    )
    assert match is not None, line
    sent = int(match.group(1))
    assert sent == int(match.group(2))
    assert 0 < sent <= 200 * 2 + 50, "never faster than --rate (one message of slack each)"


async def test_dropped_connections_are_counted_and_nothing_is_lost(
    server_process: ServerStarter,
) -> None:
    server = server_process(MAX_CONNECTIONS="1000")
    relay = await Relay(server.port).start()
    settings = ClientSettings.from_env(
        fast_client_env(), {"--url": relay.url, "--connections": "20", "--in-flight": "1"}
    )
    test = LoadTest(settings)
    run = asyncio.create_task(test.run())
    try:
        await wait_until(lambda: len(relay.links) == 20 and test.totals().echoed >= 100, 30)
        relay.cut()
        await wait_until(lambda: test.totals().reconnects >= 20, 30)
        echoed = test.totals().echoed
        await wait_until(lambda: test.totals().echoed >= echoed + 100, 30)
    finally:
        test.stop()
        totals = await asyncio.wait_for(run, 30)
        await relay.close()
    line, fields = test.summary(totals)
    assert fields["dropped"] == 20, line
    assert fields["reconnects"] == 20
    assert fields["echoed"] == fields["sent"], "resent after the cut, nothing lost"
    assert fields["lost"] == fields["mismatched"] == 0


async def test_a_server_that_corrupts_echoes_under_load_gives_exit_3(
    aiohttp_server: Any, tmp_path: Path
) -> None:
    seen = 0

    async def corrupting(request: web.Request) -> web.WebSocketResponse:
        nonlocal seen
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for msg in ws:
            seen += 1
            await ws.send_str(msg.data + ("!" if seen % 25 == 0 else ""))
        return ws

    app = web.Application()
    app.router.add_get("/", corrupting)
    server = await aiohttp_server(app)
    url = str(server.make_url("/").with_scheme("ws"))
    result = await asyncio.to_thread(
        run_client, [url, "--connections", "5", "--in-flight", "1", "--count", "200"], tmp_path
    )
    assert result.returncode == 3, result.stderr
    mismatched = int(re.search(r"mismatched=(\d+)", result.stdout).group(1))  # type: ignore[union-attr]
    assert mismatched == 8, result.stdout
    assert result.stderr.count("WARNING echo.client: mismatch seq=") == 8


def test_progress_is_redrawn_on_a_terminal(server_process: ServerStarter, tmp_path: Path) -> None:
    server = server_process(MAX_CONNECTIONS="1000")
    terminal = Terminal(
        [
            sys.executable,
            "-m",
            "echo.client",
            server.url,
            "--connections",
            "20",
            "--interval",
            "50",
            "--duration",
            "4000",
        ],
        fast_client_env(),
        tmp_path,
    )
    try:
        screen = terminal.wait_for(
            r"^ +\d+\.\d s +\d+ msg/s +p50 +[\d.]+ms +p99 +[\d.]+ms +open 20/20 +errors 0 "
            r"+reconnects 0$"
        )
        progress = [line for line in screen.splitlines() if "msg/s" in line]
        assert len(progress) == 1, "one line, redrawn in place"
        screen = terminal.wait_for(r"^\[exit 0\]$")
    finally:
        terminal.close()
    assert re.search(r"^summary connections=20 ", screen, re.MULTILINE), screen
    assert "msg/s" not in screen, "the progress line is cleared at the end"
