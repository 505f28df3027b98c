"""WORKERS > 1: several processes on one port under gunicorn (echo/workers.py).

The kernel hands each new connection to whichever worker accepts first, which is not
round robin. To send a connection to one chosen worker, :func:`pinned` stops the others
with SIGSTOP (a stopped process cannot accept) and lets them go again afterwards, so
every test knows which process it talks to.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import WSMsgType

from echo.config import ConfigError, ServerSettings
from echo.workers import graceful_timeout, gunicorn_config
from tests.support import (
    ServerProcess,
    children,
    clean_env,
    free_port,
    run_server_briefly,
    seconds_until_cut_off,
)
from tests.tls_support import Pki, make_pki, start_tls_server

ServerStarter = Callable[..., ServerProcess]


def state(pid: int) -> str:
    return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0]


def wait_for(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout}s")
        time.sleep(0.02)
    return value


def workers_of(server: ServerProcess, count: int = 2) -> list[int]:
    """The ``count`` worker pids of ``server``'s master, once they are all forked."""
    pids = wait_for(
        lambda: (found := children(server.proc.pid)) and len(found) == count and found,
        15,
        f"{count} workers",
    )
    return sorted(pids)


@contextlib.contextmanager
def pinned(server: ServerProcess, pid: int) -> Iterator[None]:
    """New connections to ``server`` go to worker ``pid``: the other workers are stopped."""
    others = children(server.proc.pid) - {pid}
    for other in others:
        os.kill(other, signal.SIGSTOP)
    try:
        wait_for(lambda: all(state(other) == "T" for other in others), 5, "workers stopped")
        yield
    finally:
        for other in others:
            with contextlib.suppress(ProcessLookupError):
                os.kill(other, signal.SIGCONT)


def new_session() -> aiohttp.ClientSession:
    """A session that never reuses a connection: a pooled one would reach its old worker."""
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True))


async def healthz(session: aiohttp.ClientSession, base: str, **kwargs: Any) -> dict[str, Any]:
    async with session.get(f"{base}/healthz", timeout=aiohttp.ClientTimeout(10), **kwargs) as r:
        assert r.status == 200
        body: dict[str, Any] = await r.json()
        return body


async def assert_echoes(ws: aiohttp.ClientWebSocketResponse, text: str) -> None:
    await ws.send_str(text)
    assert await ws.receive_str(timeout=5) == text


def start_workers(start: ServerStarter, **variables: str) -> tuple[ServerProcess, list[int]]:
    server = start(WORKERS="2", **variables)
    return server, workers_of(server)


async def test_every_worker_serves_echo_and_healthz(server_process: ServerStarter) -> None:
    server, pids = start_workers(server_process)
    async with new_session() as session:
        for pid in pids:
            with pinned(server, pid):
                health = await healthz(session, server.http)
                assert (health["pid"], health["workers"]) == (pid, 2)
                async with session.ws_connect(server.url) as ws:
                    await assert_echoes(ws, f"hello from {pid}")
    log = server.log()
    assert log.count("listening on http://") == 1, log
    assert len(re.findall(r"worker ready pid=\d+", log)) == 2, log


async def test_one_process_has_no_master(server_process: ServerStarter) -> None:
    server = server_process()  # WORKERS unset: today's single process, no gunicorn
    async with new_session() as session:
        health = await healthz(session, server.http)
    assert (health["pid"], health["workers"]) == (server.proc.pid, 1)
    assert children(server.proc.pid) == set()


async def test_a_killed_worker_is_replaced_and_the_other_keeps_its_connections(
    server_process: ServerStarter,
) -> None:
    server, (victim, survivor) = start_workers(server_process)
    async with new_session() as session:
        with pinned(server, survivor):
            kept = await session.ws_connect(server.url)
            await assert_echoes(kept, "before")
        with pinned(server, victim):
            lost = await session.ws_connect(server.url)
            await assert_echoes(lost, "doomed")
        os.kill(victim, signal.SIGKILL)
        assert (await lost.receive(timeout=5)).type in (WSMsgType.CLOSED, WSMsgType.ERROR)
        await lost.close()
        replacement = wait_for(
            lambda: (new := children(server.proc.pid) - {survivor, victim}) and new.pop(),
            15,
            "a replacement worker",
        )
        await assert_echoes(kept, "after")  # the survivor's connection did not notice
        with pinned(server, replacement):
            health = await healthz(session, server.http)
            assert (health["pid"], health["connections"]) == (replacement, 0)
            async with session.ws_connect(server.url) as ws:
                await assert_echoes(ws, "from the new worker")
        with pinned(server, survivor):
            assert (await healthz(session, server.http))["connections"] == 1
        await kept.close()
    assert children(server.proc.pid) == {survivor, replacement}
    server.signal(signal.SIGINT)  # gunicorn's quick stop: still a graceful one here
    assert await asyncio.to_thread(server.wait, 15) == 0


async def test_sigterm_closes_websockets_on_every_worker_with_1001(
    server_process: ServerStarter,
) -> None:
    server, pids = start_workers(
        server_process, SHUTDOWN_TIMEOUT="2000", LOG_FORMAT="json", LOG_LEVEL="debug"
    )
    async with new_session() as session:
        sockets = []
        for pid in pids:
            with pinned(server, pid):
                for _ in range(2):
                    ws = await session.ws_connect(server.url)
                    await assert_echoes(ws, f"on {pid}")
                    sockets.append(ws)
        started = time.monotonic()
        server.signal(signal.SIGTERM)
        for ws in sockets:
            msg = await ws.receive(timeout=10)
            assert (msg.type, msg.data, msg.extra) == (
                WSMsgType.CLOSE,
                1001,
                "server shutting down",
            )
            await ws.close()
        assert await asyncio.to_thread(server.wait, 2 + 5) == 0
        assert time.monotonic() - started < 2 + 5
    # Every line, gunicorn's included, is JSON (stdout and stderr both go to this log).
    records = [json.loads(line) for line in server.log().splitlines()]
    gunicorn = [r["message"] for r in records if r.get("logger") == "gunicorn.error"]
    assert any(m.startswith("Booting worker with pid") for m in gunicorn), gunicorn
    events = [record["event"] for record in records]
    assert events.count("listening") == 1
    shutdowns = [r for r in records if r["event"] == "shutdown"]
    assert sorted(r["open"] for r in shutdowns) == [2, 2]
    assert sorted(r["pid"] for r in records if r["event"] == "worker_exit") == pids
    # One log for all workers: connection ids name the process.
    opened = sorted(r["conn"] for r in records if r["event"] == "open")
    assert opened == sorted(f"w{pid}-c{n}" for pid in pids for n in (1, 2))


def test_sigterm_while_workers_boot_is_not_lost(tmp_path: Path) -> None:
    # A worker still booting when the master forwards SIGTERM must stop too, not run on
    # until the master kills it after 2 x SHUTDOWN_TIMEOUT + 2 s. Each worker is frozen
    # as soon as it logs that it boots (tens of milliseconds before it serves), so the
    # SIGTERM reaches it while booting.
    env = clean_env(
        HOST="127.0.0.1",
        PORT=str(free_port()),
        WORKERS="2",
        SHUTDOWN_TIMEOUT="5000",
        LOG_LEVEL="debug",  # for gunicorn's "Booting worker" line
    )
    server = ServerProcess(env, tmp_path, tmp_path / "server.log")
    frozen: set[int] = set()
    try:
        deadline = time.monotonic() + 15
        while len(frozen) < 2 and time.monotonic() < deadline:
            booting = re.findall(r"Booting worker with pid: (\d+)", server.log())
            for pid in {int(p) for p in booting} - frozen:
                os.kill(pid, signal.SIGSTOP)
                frozen.add(pid)
            time.sleep(0.001)
        assert len(frozen) == 2, server.log()
        server.signal(signal.SIGTERM)
        time.sleep(0.3)  # the master forwards it to the frozen workers
        started = time.monotonic()
        for pid in frozen:
            os.kill(pid, signal.SIGCONT)
        assert server.wait(20) == 0
        assert time.monotonic() - started < 5, server.log()
        assert "SIGKILL" not in server.log()
    finally:
        for pid in frozen:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        server.stop()


async def test_limits_count_per_process(server_process: ServerStarter) -> None:
    server, pids = start_workers(server_process, MAX_CONNECTIONS="1")
    async with new_session() as session:
        held = []
        for pid in pids:
            with pinned(server, pid):
                # The other worker's connection does not count here: this one admits one.
                held.append(await session.ws_connect(server.url))
                with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                    await session.ws_connect(server.url)
                assert refused.value.status == 503
                health = await healthz(session, server.http)
                assert (health["pid"], health["connections"], health["max_connections"]) == (
                    pid,
                    1,
                    1,
                )
        # Both full: whichever worker takes the next handshake refuses it.
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await session.ws_connect(server.url)
        assert refused.value.status == 503
        for ws in held:  # WORKERS x MAX_CONNECTIONS open at once, all still echoing
            await assert_echoes(ws, "held")
            await ws.close()


async def test_handshake_timeout_holds_in_every_worker(server_process: ServerStarter) -> None:
    # The workers' runner gets HANDSHAKE_TIMEOUT as its keep-alive timeout, not
    # gunicorn's (2 s): a connection that sends nothing is cut off after 0.3 s.
    server, pids = start_workers(server_process, HANDSHAKE_TIMEOUT="300")
    for pid in pids:
        with pinned(server, pid):
            assert await seconds_until_cut_off(server.port) < 1.5


async def test_tls_on_every_worker(server_process: ServerStarter, tmp_path: Path) -> None:
    pki: Pki = make_pki(tmp_path)
    server = start_tls_server(server_process, pki, WORKERS="2", HANDSHAKE_TIMEOUT="500")
    assert f"listening on https://127.0.0.1:{server.port}/" in server.log()
    context = ssl.create_default_context(cafile=str(pki.ca))
    base = f"https://127.0.0.1:{server.port}"
    async with new_session() as session:
        for pid in workers_of(server):
            with pinned(server, pid):
                assert (await healthz(session, base, ssl=context))["pid"] == pid
                async with session.ws_connect(f"wss://127.0.0.1:{server.port}/", ssl=context) as ws:
                    await assert_echoes(ws, f"secret {pid}")
    # A TCP connection that never starts TLS is cut after HANDSHAKE_TIMEOUT, as with one
    # process (asyncio's own limit would be 60 s).
    await seconds_until_cut_off(server.port)


async def test_port_0_logs_the_port_the_workers_serve(tmp_path: Path) -> None:
    env = clean_env(HOST="127.0.0.1", PORT="0", WORKERS="2", ALLOW_MISSING_ORIGIN="true")
    server = ServerProcess(env, tmp_path, tmp_path / "server.log")
    try:
        found = wait_for(
            lambda: re.search(r"listening on http://127\.0\.0\.1:(\d+)/", server.log()),
            15,
            "the listening line",
        )
        server.port = int(found.group(1))
        assert server.port != 0
        server.wait_ready()
        async with new_session() as session:
            assert (await healthz(session, server.http))["workers"] == 2
    finally:
        server.stop()


def run_server(tmp_path: Path, **variables: str) -> subprocess.CompletedProcess[str]:
    return run_server_briefly(clean_env(HOST="127.0.0.1", **variables), tmp_path)


def test_port_in_use_is_one_line_and_exit_1(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_server(tmp_path, PORT=str(port), WORKERS="2")
    assert result.returncode == 1, result.stderr
    assert result.stderr.splitlines() == [
        f"echo-server: cannot listen on 127.0.0.1:{port}: Address already in use"
    ]


@pytest.mark.parametrize("value", ["0", "65", "two"])
def test_bad_workers_exits_2_with_one_line(tmp_path: Path, value: str) -> None:
    result = run_server(tmp_path, PORT=str(free_port()), WORKERS=value)
    assert result.returncode == 2, result.stderr
    assert result.stderr.splitlines() == [
        f"echo-server: invalid WORKERS='{value}': expected an integer from 1 to 64"
    ]


def test_workers_setting_and_what_gunicorn_is_given() -> None:
    assert ServerSettings.from_env({}).workers == 1
    assert ServerSettings.from_env({"WORKERS": " 8 "}).workers == 8
    for bad in ("1.5", "-1", "", "2 workers"):
        with pytest.raises(ConfigError, match=r"^invalid WORKERS=.*from 1 to 64$"):
            ServerSettings.from_env({"WORKERS": bad})
    settings = ServerSettings(workers=3, shutdown_timeout=0.25, log_level="info")
    config = gunicorn_config(settings, ["fd://7"])
    assert (config["bind"], config["workers"]) == (["fd://7"], 3)
    assert config["graceful_timeout"] == graceful_timeout(settings) == 3  # ceil(0.5 + 2)
    assert config["timeout"] == 30
    assert config["control_socket_disable"] is True
    assert config["accesslog"] is None


def test_make_dev_serves_one_process_whatever_workers_says(tmp_path: Path) -> None:
    code = "from echo.server import SERVER_KEY, dev_app; print(dev_app()[SERVER_KEY].settings)"
    result = subprocess.run(
        [sys.executable, "-c", code],
        env=clean_env(WORKERS="3", PYTHONPATH=str(Path(__file__).parents[1])),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    assert " workers=1," in result.stdout
    assert "engine='plain'" in result.stdout
