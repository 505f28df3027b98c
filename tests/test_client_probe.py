"""The idle probe against peers that do not stay quiet or that cut connections themselves
(the nginx case is in tests/test_client_nginx.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from echo.client.probe import Outcome, Verdict, first_round, next_round, time_bound
from tests.client_support import json_events, run_client
from tests.support import ServerProcess

ServerStarter = Callable[..., ServerProcess]


def test_a_pinging_server_is_reported_and_the_probe_stays_bounded(
    server_process: ServerStarter, tmp_path: Path
) -> None:
    server = server_process(HEARTBEAT_INTERVAL="100")
    result = run_client([server.url, "--probe-idle", "800", "--json"], tmp_path, timeout=120)
    assert result.returncode == 0, result.stderr
    verdict = json_events(result.stdout)[-1]
    assert verdict["event"] == "probe"
    assert verdict["server_pings"] > 0
    assert "so the path was not idle that long" in result.stderr
    assert "which keeps the path awake; add heartbeat=off to the URL" in result.stderr


async def test_a_server_closing_idle_connections_with_a_code_is_measured(
    aiohttp_server: Any, tmp_path: Path
) -> None:
    async def close_when_quiet(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        while True:
            try:
                msg = await ws.receive(timeout=0.6)
            except TimeoutError:
                await ws.close(code=4008, message=b"idle")
                return ws
            if msg.type.name != "TEXT":
                return ws
            await ws.send_str(msg.data)

    app = web.Application()
    app.router.add_get("/", close_when_quiet)
    server = await aiohttp_server(app)
    url = str(server.make_url("/").with_scheme("ws"))
    result = await asyncio.to_thread(
        run_client, [url, "--probe-idle", "2000", "--json"], tmp_path, 120
    )
    assert result.returncode == 0, result.stderr
    verdict = json_events(result.stdout)[-1]
    assert verdict["how"].startswith("close frame 4008 'idle'"), verdict
    assert verdict["estimate_s"] == pytest.approx(0.6, rel=0.10), verdict
    assert verdict["longest_survived_s"] < 0.6 <= verdict["first_cut_s"] * 1.1


def test_rounds_bisect_between_what_survived_and_what_did_not() -> None:
    assert first_round(128.0) == [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0]
    assert next_round(2.0, 4.0) == pytest.approx([2 + 2 * i / 9 for i in range(1, 9)])
    assert time_bound(60.0, 10.0) == 4 * (60 + 5 + 10)
    verdict = Verdict()
    for outcome in (
        Outcome(2.0, True, ""),
        Outcome(4.0, False, "TCP closed without a close frame (1006)", cut_after=3.0),
        Outcome(8.0, False, "TCP closed without a close frame (1006)", cut_after=3.01),
        Outcome(1.0, False, "", error="refused"),
    ):
        verdict.add(outcome)
    assert (verdict.survived, verdict.first_cut, verdict.estimate()) == (2.0, 3.0, 3.0)
    assert not verdict.done()
    verdict.add(Outcome(2.9, True, ""))
    assert verdict.done(), "within 5 %"
    silent = Verdict()
    silent.add(Outcome(1.0, True, ""))
    silent.add(Outcome(2.0, False, "no answer within 5 s (dropped silently)"))
    assert silent.estimate() == 1.5, "no observed cut: the middle"
    odd = Verdict()
    odd.add(Outcome(1.0, False, "x", cut_after=1.0))
    odd.add(Outcome(4.0, True, ""))
    assert odd.done()
    assert "does not cut at one fixed time" in odd.inconsistent
