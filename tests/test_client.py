"""The echo client against the real server: echoes, reconnects, refusals, heartbeat, cleanup."""

from __future__ import annotations

import asyncio
import gc
import logging
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from echo.client import EchoClient, GaveUp, OriginRefused
from echo.text import preview
from tests.client_support import (
    ClientProcess,
    Relay,
    SilentServer,
    count_fds,
    fast_client_env,
    fast_settings,
    parse_summary,
    run_client,
)
from tests.support import ServerProcess, free_port, wait_until
from tests.wsraw import OP_CLOSE, OP_PING, OP_TEXT

ServerStarter = Callable[..., ServerProcess]


# -- echo verification ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "binary", "logged"),
    [
        (None, False, r"message id=c1 text \d{1,2} bytes b'0\.\d+'"),
        (1000, False, r"message id=c1 text 1000 bytes b'[A-Za-z0-9_-]{50}"),
        (1000, True, r"message id=c1 binary 1000 bytes b['\"][^\n]*\\x[0-9a-f]{2}"),
    ],
)
async def test_messages_are_echoed_and_verified(
    server_process: ServerStarter, size: int | None, binary: bool, logged: str
) -> None:
    server = server_process(LOG_LEVEL="debug")
    client = EchoClient(fast_settings(server.url, message_count=5, size=size, binary=binary))
    stats = await asyncio.wait_for(client.run(), 15)
    assert (stats.sent, stats.echoed, stats.mismatched, stats.resent) == (5, 5, 0, 0)
    assert stats.connections == 1
    assert stats.rtt.count == 5
    # What reached the server is what --size and --binary asked for.
    assert len(re.findall(logged, server.log())) == 5, server.log()


async def test_a_wrong_echo_is_counted_as_mismatched(aiohttp_server: Any) -> None:
    async def corrupting_echo(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        turn = 0
        async for msg in ws:
            turn += 1
            if turn == 2:
                await ws.send_bytes(msg.data.encode())  # right bytes, wrong kind
            elif turn == 3:
                await ws.send_str(msg.data[::-1] + "x")  # wrong bytes
            else:
                await ws.send_str(msg.data)
        return ws

    app = web.Application()
    app.router.add_get("/", corrupting_echo)
    server = await aiohttp_server(app)
    client = EchoClient(fast_settings(str(server.make_url("/")), message_count=4))
    stats = await asyncio.wait_for(client.run(), 15)
    assert (stats.sent, stats.echoed, stats.mismatched) == (4, 2, 2)


def test_command_line_prints_one_summary_line_and_exits_0(
    server_process: ServerStarter, tmp_path: Path
) -> None:
    server = server_process()
    script = Path(sys.executable).with_name("echo-client")
    result = subprocess.run(
        [str(script), "--url", server.url, "--count", "4", "--size", "64", "--binary"],
        env=fast_client_env(),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    summary = parse_summary(result.stdout)
    assert (summary["sent"], summary["echoed"], summary["mismatched"]) == ("4", "4", "0")
    assert summary["p50"] != "nan"
    assert "binary 64B" in result.stderr


async def test_stop_waits_for_the_echoes_due_and_a_second_signal_cuts_it_short(
    tmp_path: Path,
) -> None:
    silent = await SilentServer().start()  # takes the messages, never echoes them
    env = fast_client_env(CLIENT_HEARTBEAT_INTERVAL="60000")
    client = ClientProcess(["--url", silent.url], env, tmp_path)
    try:
        await wait_until(
            lambda: bool(silent.connections) and silent.connections[0].opcodes.count(OP_TEXT) >= 3,
            timeout=15,
        )
        client.proc.send_signal(signal.SIGINT)
        await asyncio.sleep(1.0)
        assert client.proc.poll() is None, "still waiting (up to 5 s) for the echoes due"
        client.proc.send_signal(signal.SIGINT)
        started = time.monotonic()
        assert await asyncio.to_thread(client.proc.wait, 15) == 3, "messages were lost"
        hurried = time.monotonic() - started
    finally:
        client.kill()
        await silent.close()
    assert hurried < 3.5, "neither the rest of the drain (4 s) nor a 5 s close wait"
    summary = parse_summary(client.stdout())
    assert int(summary["sent"]) >= 3
    assert (summary["echoed"], summary["p50"]) == ("0", "nan")
    assert summary["lost"] == summary["sent"], "sent and never echoed"
    assert OP_CLOSE in silent.connections[0].opcodes, "a close frame was still sent"
    client.assert_no_leaks_reported()


# -- reconnects: nothing lost ---------------------------------------------------------


def test_server_killed_and_restarted_on_the_same_port_loses_nothing(
    server_process: ServerStarter, tmp_path: Path
) -> None:
    first = server_process()
    client = ClientProcess(["--url", first.url], fast_client_env(), tmp_path)
    try:
        client.wait_for_log(r"echo seq=\d+", count=5)
        first.signal(signal.SIGKILL)
        first.wait()
        client.wait_for_log(r"connection lost")
        client.wait_for_log(r"cannot connect", count=2)  # it keeps trying while the port is dead
        second = server_process(PORT=str(first.port))
        client.wait_for_log(r"connected to .* \(connection 2,")
        before = len(re.findall(r"echo seq=", client.stderr()))
        client.wait_for_log(r"echo seq=\d+", count=before + 5)
        assert client.stop(signal.SIGINT) == 0, client.stderr()
    finally:
        client.kill()
    summary = parse_summary(client.stdout())
    assert summary["echoed"] == summary["sent"], summary
    assert int(summary["sent"]) >= 10
    assert summary["mismatched"] == "0"
    assert int(summary["reconnects"]) >= 1
    assert "open id=c1" in second.log()
    client.assert_no_leaks_reported()


def test_sigterm_stops_cleanly_with_a_summary(
    server_process: ServerStarter, tmp_path: Path
) -> None:
    server = server_process()
    client = ClientProcess(["--url", server.url], fast_client_env(), tmp_path)
    try:
        client.wait_for_log(r"echo seq=\d+", count=3)
        assert client.stop(signal.SIGTERM) == 0, client.stderr()
    finally:
        client.kill()
    summary = parse_summary(client.stdout())
    assert summary["echoed"] == summary["sent"]
    assert summary["reconnects"] == "0"
    client.assert_no_leaks_reported()
    # The server saw a clean close, 1000, from the client.
    for _ in range(100):
        if "close id=c1 code=1000" in server.log():
            break
        time.sleep(0.02)
    assert "close id=c1 code=1000" in server.log(), server.log()


async def test_echoes_lost_with_the_connection_are_resent_and_counted_once(
    server_process: ServerStarter,
) -> None:
    server = server_process()
    relay = await Relay(server.port).start()
    client = EchoClient(fast_settings(relay.url))
    run = asyncio.create_task(client.run())
    try:
        await wait_until(lambda: client.stats.echoed >= 3, timeout=10)
        # The server echoes, but the echoes never reach the client...
        relay.swallow = True
        await wait_until(lambda: relay.swallowed > 0 and client.unanswered >= 2)
        swallowed_at = client.stats.echoed
        # ...and the connection dies before they do.
        relay.swallow = False
        relay.refuse = True
        accepted = relay.accepted
        relay.cut()
        await wait_until(lambda: relay.accepted >= accepted + 2 and not client.connected)
        # Nothing is produced while the client cannot connect.
        sent = client.stats.sent
        await asyncio.sleep(0.3)  # 15 message intervals
        assert client.stats.sent == sent
        relay.refuse = False
        await wait_until(lambda: client.stats.connections == 2 and client.stats.echoed > sent)
    finally:
        client.stop()
        stats = await asyncio.wait_for(run, 10)
        await relay.close()
    assert stats.resent >= 2
    assert stats.echoed > swallowed_at
    assert stats.echoed == stats.sent, stats
    assert stats.mismatched == 0
    assert stats.reconnects == 1


async def test_backoff_grows_while_failing_and_resets_once_a_connection_carried_an_echo(
    server_process: ServerStarter, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "echo.client")
    server = server_process()
    relay = await Relay(server.port).start()
    relay.refuse = True
    # The cap is far above how long the connection lives: only its echo can reset.
    client = EchoClient(fast_settings(relay.url, reconnect_interval=0.01, reconnect_max_interval=5))
    run = asyncio.create_task(client.run())
    try:
        # Failed attempts at steps of 10, 20, 40, 80, 160, 320 ms.
        await wait_until(lambda: caplog.text.count("retrying in") >= 6, timeout=10)
        relay.refuse = False
        await wait_until(lambda: client.stats.echoed >= 1)
        failing = caplog.text
        relay.cut()
        await wait_until(lambda: client.stats.connections == 2)
    finally:
        client.stop()
        await asyncio.wait_for(run, 10)
        await relay.close()
    attempts = re.findall(r"cannot connect \(attempt (\d+)\): .*; retrying in ([\d.]+) s", failing)
    assert [int(n) for n, _ in attempts[:6]] == [1, 2, 3, 4, 5, 6], "numbered, at INFO"
    delays = [float(d) for _, d in attempts]
    after = [
        float(d) for d in re.findall(r"reconnecting in ([\d.]+) s", caplog.text[len(failing) :])
    ]
    assert delays[0] <= 0.01
    assert max(delays) >= 0.16, "the delay doubled"
    assert after[0] <= 0.01, "and started again from RECONNECT_INTERVAL after one echo"
    assert re.search(r"connection lost: .*\(code=1006 abnormal\) after [\d.]+ s up", caplog.text)
    assert re.search(r"connected to .* \(connection 2, .*\) after [\d.]+ s down", caplog.text)


async def test_connections_without_an_echo_count_as_failed_attempts_until_max_attempts(
    aiohttp_server: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "echo.client")

    async def accept_then_close(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await ws.close(code=1011, message=b"broken")
        return ws

    app = web.Application()
    app.router.add_get("/", accept_then_close)
    server = await aiohttp_server(app)
    client = EchoClient(fast_settings(str(server.make_url("/")), max_attempts=3))
    with pytest.raises(GaveUp) as caught:
        await asyncio.wait_for(client.run(), 15)
    assert caught.value.attempts == 3
    assert client.stats.connections == 3, "handshakes succeeded, but no echo: not healthy"
    assert "server closed with 1011 'broken'" in str(caught.value)
    assert caplog.text.count("reconnecting in") == 2


def test_max_attempts_gives_up_with_exit_1_after_numbered_attempts(tmp_path: Path) -> None:
    port = free_port()  # nothing listens there
    result = run_client(
        [f"ws://127.0.0.1:{port}/", "--count", "3"],
        tmp_path,
        timeout=30,
        env={"RECONNECT_MAX_ATTEMPTS": "4"},
    )
    assert result.returncode == 1, result.stderr
    attempts = re.findall(
        r"INFO echo\.client: cannot connect \(attempt (\d) of 4\): ", result.stderr
    )
    assert attempts == ["1", "2", "3"], result.stderr
    assert len(re.findall(r"; retrying in [\d.]+ s$", result.stderr, re.MULTILINE)) == 3
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("echo-client: gave up after 4 failed attempt(s) to connect to ")
    assert result.stdout == "", "nothing was sent: no summary"


def test_server_killed_for_good_then_ctrl_c_gives_exit_3_with_lost(
    server_process: ServerStarter, tmp_path: Path
) -> None:
    server = server_process()
    # The server freezes with messages in flight, then dies for good.
    client = ClientProcess([server.url], fast_client_env(), tmp_path)
    try:
        client.wait_for_log(r"echo seq=\d+", count=3)
        server.signal(signal.SIGSTOP)
        time.sleep(0.2)  # ten message intervals: sent, never echoed
        server.signal(signal.SIGKILL)
        server.wait()
        client.wait_for_log(r"cannot connect \(attempt \d+\)")
        assert client.stop(signal.SIGINT) == 3, client.stderr()
    finally:
        client.kill()
    summary = parse_summary(client.stdout())
    assert int(summary["lost"]) >= 1
    assert int(summary["echoed"]) + int(summary["lost"]) == int(summary["sent"])
    client.assert_no_leaks_reported()


async def test_100_reconnect_cycles_leave_no_tasks_or_descriptors(
    server_process: ServerStarter,
) -> None:
    server = server_process(MAX_CONNECTIONS="5")
    relay = await Relay(server.port).start()
    tasks_before, fds_before = len(asyncio.all_tasks()), count_fds()
    client = EchoClient(
        fast_settings(relay.url, reconnect_interval=0.001, reconnect_max_interval=0.005)
    )
    run = asyncio.create_task(client.run())
    connected_counts: list[tuple[int, int]] = []
    try:
        for cycle in range(1, 102):
            echoed = client.stats.echoed
            await wait_until(
                lambda c=cycle, e=echoed: (
                    client.stats.connections == c  # type: ignore[misc]
                    and client.connected
                    and client.stats.echoed > e
                    and len(relay.links) == 1
                ),
                timeout=10,
            )
            if cycle in (1, 101):
                # Tasks and descriptors settle once the previous connection is fully gone.
                if connected_counts:
                    baseline = connected_counts[0]
                    await wait_until(
                        lambda b=baseline: (len(asyncio.all_tasks()), count_fds()) == b,  # type: ignore[misc]
                        timeout=5,
                    )
                connected_counts.append((len(asyncio.all_tasks()), count_fds()))
            if cycle <= 100:
                relay.cut()
    finally:
        client.stop()
        stats = await asyncio.wait_for(run, 10)
    assert connected_counts[0] == connected_counts[1]
    await wait_until(lambda: (len(asyncio.all_tasks()), count_fds()) == (tasks_before, fds_before))
    await relay.close()
    gc.collect()  # an unclosed session or connector would warn now, and warnings are errors
    assert stats.reconnects == 100
    assert stats.echoed == stats.sent
    assert stats.mismatched == 0


# -- refusals -------------------------------------------------------------------------


async def refusal_body(url: str, origin: str | None = None) -> str:
    """The body of the server's answer to a WebSocket handshake, read independently."""
    headers = {
        "Upgrade": "websocket",
        "Connection": "Upgrade",
        "Sec-WebSocket-Version": "13",
        "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
    }
    if origin is not None:
        headers["Origin"] = origin
    async with aiohttp.ClientSession() as session:
        async with session.get(url.replace("ws://", "http://"), headers=headers) as response:
            assert response.status == 403
            return await response.text()


async def test_no_origin_is_sent_by_default_so_any_port_works(
    server_process: ServerStarter, tmp_path: Path
) -> None:
    # The server's default allow-list names none of these; it admits no-Origin clients.
    server = server_process(ALLOWED_ORIGINS="http://localhost:3000", ALLOW_MISSING_ORIGIN="true")
    env = fast_client_env(PORT=str(server.port))  # no WS_URL: ws://localhost:PORT/
    client = ClientProcess(["--count", "3"], env, tmp_path)
    assert await asyncio.to_thread(client.proc.wait, 30) == 0, client.stderr()
    assert "connected to ws://localhost:" + str(server.port) + "/" in client.stderr()
    assert re.search(r"open id=c1 remote=\S+ origin=-", server.log()), server.log()
    assert parse_summary(client.stdout())["echoed"] == "3"


async def test_403_prints_the_servers_reason_and_exits_1(
    server_process: ServerStarter, tmp_path: Path
) -> None:
    server = server_process(ALLOWED_ORIGINS="http://allowed.example", ALLOW_MISSING_ORIGIN="false")
    client = ClientProcess([server.url], fast_client_env(), tmp_path)
    try:
        assert await asyncio.to_thread(client.proc.wait, 15) == 1
    finally:
        client.kill()
    assert len(re.findall(r"reason=origin", server.log())) == 1, "403 is not retried"
    said = await refusal_body(server.url)
    last = client.stderr().strip().splitlines()[-1]
    assert last.startswith(f"echo-client: the server at '{server.url}' refused the handshake")
    assert f"HTTP 403: {preview(said.strip(), 200)}; sent no Origin" in last, last
    assert client.stdout() == ""


async def test_origin_refused_names_the_origin_sent(
    server_process: ServerStarter, tmp_path: Path
) -> None:
    server = server_process(ALLOWED_ORIGINS="http://allowed.example")
    said = await refusal_body(server.url, "http://other.example")
    client = ClientProcess(
        [server.url, "--origin", "http://other.example"], fast_client_env(), tmp_path
    )
    try:
        assert await asyncio.to_thread(client.proc.wait, 15) == 1
    finally:
        client.kill()
    last = client.stderr().strip().splitlines()[-1]
    assert f"HTTP 403: {preview(said.strip(), 200)}; sent Origin 'http://other.example'" in last


async def test_a_hostile_403_body_is_escaped_and_bounded(aiohttp_server: Any) -> None:
    async def refuse(request: web.Request) -> web.Response:
        return web.Response(status=403, body=b"\x1b[31mred\nforged line\x00" + b"x" * 100_000)

    app = web.Application()
    app.router.add_get("/", refuse)
    server = await aiohttp_server(app)
    client = EchoClient(fast_settings(str(server.make_url("/"))))
    with pytest.raises(OriginRefused) as caught:
        await asyncio.wait_for(client.run(), 10)
    line = str(caught.value)
    assert not set(line) & {"\n", "\x1b", "\x00"}
    assert "\\x1b[31mred\\nforged line" in line
    assert len(line) < 600


async def test_origin_refused_raises_in_the_library(server_process: ServerStarter) -> None:
    server = server_process(ALLOWED_ORIGINS="http://allowed.example")
    client = EchoClient(fast_settings(server.url, origin="http://other.example"))
    with pytest.raises(OriginRefused) as caught:
        await asyncio.wait_for(client.run(), 10)
    assert caught.value.origin == "http://other.example"
    assert caught.value.status == 403


@pytest.mark.parametrize(
    ("variable", "status"), [("MAX_CONNECTIONS", 503), ("MAX_CONNECTIONS_PER_IP", 429)]
)
async def test_busy_server_is_retried_after_retry_after_until_a_slot_frees(
    server_process: ServerStarter, variable: str, status: int
) -> None:
    server = server_process(**{variable: "1"})
    async with aiohttp.ClientSession() as session:
        holder = await session.ws_connect(server.url)
        client = EchoClient(fast_settings(server.url, message_count=3))
        run = asyncio.create_task(client.run())
        await wait_until(lambda: client.stats.refusals >= 1, timeout=10)
        refused_seen = time.monotonic()
        await holder.close()
        await wait_until(lambda: client.stats.connections == 1, timeout=10)
        waited = time.monotonic() - refused_seen
        stats = await asyncio.wait_for(run, 10)
    assert (stats.sent, stats.echoed, stats.mismatched) == (3, 3, 0)
    # The server sends Retry-After: 1; the back-off alone would retry within 50 ms.
    assert waited >= 0.9
    assert stats.refusals <= 2
    assert f"reason={'limit' if status == 503 else 'per_ip_limit'}" in server.log()


# -- heartbeat ------------------------------------------------------------------------


async def test_heartbeat_detects_a_server_that_stops_answering() -> None:
    silent = await SilentServer().start()
    client = EchoClient(fast_settings(silent.url, heartbeat_interval=0.2))
    run = asyncio.create_task(client.run())
    try:
        await wait_until(lambda: len(silent.connections) >= 2, timeout=10)
    finally:
        client.stop(drain=False)
        stats = await asyncio.wait_for(run, 10)
        await silent.close()
    first = silent.connections[0]
    assert first.opcodes[0] == OP_TEXT, "the client sent a message"
    assert OP_PING in first.opcodes, "then pinged the silent server"
    assert first.ended, "and dropped the connection when no pong came"
    assert stats.reconnects >= 1
    assert stats.echoed == 0
    assert stats.resent >= 1, "the unanswered messages were sent again on the next connection"
    assert OP_CLOSE not in first.opcodes[: first.opcodes.index(OP_PING)]


def test_frozen_server_is_noticed_by_heartbeat_and_nothing_is_lost(
    server_process: ServerStarter, tmp_path: Path
) -> None:
    server = server_process()
    env = fast_client_env(CLIENT_HEARTBEAT_INTERVAL="300")
    client = ClientProcess(["--url", server.url], env, tmp_path)
    try:
        client.wait_for_log(r"echo seq=\d+", count=5)
        server.signal(signal.SIGSTOP)  # the process hangs: TCP stays up, nothing answers
        try:
            client.wait_for_log(r"connection lost: heartbeat: 'No PONG")
            client.wait_for_log(r"cannot connect", count=2)  # handshakes time out too
        finally:
            server.signal(signal.SIGCONT)
        client.wait_for_log(r"connected to .* \(connection 2, [1-9]\d* message")
        before = len(re.findall(r"echo seq=", client.stderr()))
        client.wait_for_log(r"echo seq=\d+", count=before + 3)
        assert client.stop(signal.SIGINT) == 0, client.stderr()
    finally:
        client.kill()
    summary = parse_summary(client.stdout())
    assert summary["echoed"] == summary["sent"], summary
    assert int(summary["resent"]) >= 1
    assert summary["mismatched"] == "0"
    client.assert_no_leaks_reported()


async def test_heartbeat_keeps_a_quiet_healthy_connection(server_process: ServerStarter) -> None:
    server = server_process()
    # Messages rarer than the heartbeat: the pings alone keep the connection alive. (A
    # pong has half the interval to come back: 150 ms, room for a loaded machine.)
    client = EchoClient(fast_settings(server.url, heartbeat_interval=0.3, message_interval=1.0))
    run = asyncio.create_task(client.run())
    await wait_until(lambda: client.stats.echoed >= 3, timeout=10)
    client.stop()
    stats = await asyncio.wait_for(run, 10)
    assert stats.reconnects == 0
    assert stats.echoed == stats.sent


# -- configuration --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "variables", "name"),
    [
        (["--url", "http://127.0.0.1:9/"], {}, "--url"),
        ([], {"WS_URL": "localhost:8080"}, "WS_URL"),
        (["--interval", "-5"], {}, "--interval"),
        (["--interval", "abc"], {}, "--interval"),
        ([], {"RECONNECT_INTERVAL": "soon"}, "RECONNECT_INTERVAL"),
        (
            [],
            {"RECONNECT_INTERVAL": "100", "RECONNECT_MAX_INTERVAL": "50"},
            "RECONNECT_MAX_INTERVAL",
        ),
        (["--count", "-1"], {}, "--count"),
        (["--size", "0"], {}, "--size"),
        (["--origin", "not an origin"], {}, "--origin"),
        ([], {"RECONNECT_MAX_ATTEMPTS": "-1"}, "RECONNECT_MAX_ATTEMPTS"),
        (["--max-attempts", "x"], {}, "--max-attempts"),
        ([], {"PORT": "0"}, "PORT"),
        (["-H", "no colon"], {}, "--header"),
        (["-H", "Bad Name: x"], {}, "--header"),
        (["-H", "X-Ok: line\nbreak"], {}, "--header"),
        (["-H", "Sec-WebSocket-Protocol: chat"], {}, "--header"),
        (["--subprotocol", "a b"], {}, "--subprotocol"),
        (["--proxy", "ftp://127.0.0.1:21"], {}, "--proxy"),
        (["--proxy", "http://127.0.0.1"], {}, "--proxy"),
        (["--proxy", "socks5://u:secret@127.0.0.1:1080/path"], {}, "--proxy"),
        (["--cert", "/nonexistent.pem"], {}, "--cert"),
        (["--key", "/nonexistent.pem"], {}, "--cert"),
        (["--connections", "0"], {}, "--connections"),
        (["--connections", "10", "--rate", "0"], {}, "--rate"),
        (["--connections", "10", "--rate", "5", "--in-flight", "2"], {}, "--in-flight"),
        (["--connections", "10", "--in-flight", "101"], {}, "--in-flight"),
        (["--rate", "5"], {}, "--rate"),
        (["--pipe", "--count", "3"], {}, "--count"),
        (["--pipe", "--base64", "--hex"], {}, "--hex"),
        (["--hex"], {}, "--hex"),
        (["--pipe", "--wait", "-1"], {}, "--wait"),
        (["--probe-idle", "0"], {}, "--probe-idle"),
        (["--probe-idle", "1000", "--pipe"], {}, "--probe-idle"),
        (["-i", "--json"], {}, "--json"),
        (["--duration", "soon"], {}, "--duration"),
    ],
)
def test_bad_configuration_exits_2_with_one_line(
    tmp_path: Path, args: list[str], variables: dict[str, str], name: str
) -> None:
    result = run_client(args, tmp_path, timeout=30, env=variables)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"echo-client: invalid {name}=")
    assert "expected" in lines[0]
    assert "secret" not in lines[0], "no credentials in error lines"
    assert result.stdout == ""


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--nonsense"], "echo-client: unrecognized arguments: --nonsense"),
        (
            ["ws://a/", "--url", "ws://b/"],
            "echo-client: give the URL once: as an argument or with --url",
        ),
        (["--connections"], "echo-client: argument --connections: expected one argument"),
    ],
)
def test_command_line_mistakes_are_one_line_and_exit_2(
    tmp_path: Path, args: list[str], message: str
) -> None:
    result = run_client(args, tmp_path, timeout=30)
    assert (result.returncode, result.stderr, result.stdout) == (2, message + "\n", "")


async def test_stop_while_disconnected_ends_promptly() -> None:
    # Nothing listens on this port: the client is between attempts when stopped.
    relay = await Relay(target_port=9).start()
    relay.refuse = True
    client = EchoClient(
        fast_settings(relay.url, reconnect_interval=20.0, reconnect_max_interval=20.0)
    )
    run = asyncio.create_task(client.run())
    await wait_until(lambda: relay.accepted >= 1)
    started = time.monotonic()
    client.stop()
    stats = await asyncio.wait_for(run, 10)
    await relay.close()
    assert time.monotonic() - started < 5, "a stop does not sit out the 10-20 s back-off"
    assert (stats.sent, stats.connections) == (0, 0)
