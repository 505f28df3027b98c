"""The commands as a newcomer types them: make start, make client, make dev, make help.

Each runs the real Makefile in a directory of its own (the checkout's Makefile,
pyproject.toml and .venv linked in, and a ``.env`` written by the test), so a
developer's own ``.env`` plays no part. ``make -o STAMP`` keeps make from reinstalling
into the shared .venv while the tests run; the install recipes are exercised by a fresh
clone, not here.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from echo.dev import port_in_use
from echo.listeners import log_listening
from echo.server import SERVER_SOFTWARE
from tests.support import (
    TEST_SETTINGS,
    ServerFactory,
    answers,
    children,
    clean_env,
    free_port,
    raw_handshake,
)

ROOT = Path(__file__).resolve().parent.parent
NO_INSTALL = ["-o", ".venv/.runtime", "-o", ".venv/.installed"]


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    """A directory that make treats as the checkout, with no .env of the developer's."""
    work = tmp_path / "checkout"
    work.mkdir()
    for name in ("Makefile", "pyproject.toml", ".venv", "echo"):
        (work / name).symlink_to(ROOT / name)
    return work


def start_make(
    target: str, cwd: Path, log_path: Path, env: dict[str, str]
) -> subprocess.Popen[bytes]:
    """``make TARGET`` in a session of its own, as in a terminal of its own."""
    with log_path.open("wb") as log_file:
        return subprocess.Popen(
            ["make", *NO_INSTALL, target],
            cwd=cwd,
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def wait_for(url: str, proc: subprocess.Popen[bytes], log_path: Path, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not answers(url):
        assert proc.poll() is None, log_path.read_text()
        assert time.monotonic() < deadline, log_path.read_text()
        time.sleep(0.1)


def ctrl_c(proc: subprocess.Popen[bytes], timeout: float = 30) -> int:
    """SIGINT to the process group, as a terminal's Ctrl-C; the group's status."""
    os.killpg(proc.pid, signal.SIGINT)
    try:
        return proc.wait(timeout)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)


def test_another_port_works_end_to_end_with_make_start_and_make_client(checkout: Path) -> None:
    """Issue 18, item 1: PORT in a shared .env moves the server and the client's default."""
    port = free_port()
    (checkout / ".env").write_text(f"PORT={port}\nHOST=127.0.0.1\n")
    server_log = checkout / "server.log"
    server = start_make("start", checkout, server_log, clean_env())
    try:
        wait_for(f"http://127.0.0.1:{port}/healthz", server, server_log)
        client = subprocess.run(
            ["make", "-s", *NO_INSTALL, "client", "ARGS=--count 3 --interval 50"],
            cwd=checkout,
            env=clean_env(CLIENT_HEARTBEAT_INTERVAL="2000", RECONNECT_INTERVAL="200"),
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        status = ctrl_c(server)
    assert client.returncode == 0, client.stdout + client.stderr
    assert client.stdout.startswith("summary sent=3 echoed=3 "), client.stdout
    log = server_log.read_text()
    assert f"listening on http://127.0.0.1:{port}/" in log
    assert "open id=c1 remote=127.0.0.1 " in log
    assert "refused" not in log
    assert status in (0, 2, -signal.SIGINT), log  # make's status after Ctrl-C
    assert "Traceback" not in log


def test_make_help_lists_the_targets_from_their_comments() -> None:
    result = subprocess.run(
        ["make", "-s", "help"], cwd=ROOT, capture_output=True, text=True, timeout=30, check=True
    )
    makefile = (ROOT / "Makefile").read_text()
    documented = [
        line.split(":", 1)[0] for line in makefile.splitlines() if ": " in line and " ## " in line
    ]
    assert {"start", "client", "dev", "test", "lint", "help"} <= set(documented)
    listed = [line.split()[1] for line in result.stdout.splitlines()]
    assert listed == documented
    assert "  make start " in result.stdout


def dev_port() -> int:
    """A free port whose next one, adev's live reload (PORT+1), is free too: on a shared
    machine the port after a free one may be taken."""
    for _ in range(50):
        port = free_port()
        if port_in_use(port + 1) is None:
            return port
    raise AssertionError("no free port with a free port after it in 50 tries")


def test_make_dev_with_a_busy_port_fails_with_one_line(checkout: Path) -> None:
    port = dev_port()
    with socket_on(port + 1):
        result = subprocess.run(
            ["make", "-s", *NO_INSTALL, "dev"],
            cwd=checkout,
            env=clean_env(PORT=str(port)),
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode != 0
    ours = [line for line in result.stderr.splitlines() if not line.startswith("make")]
    assert ours == [
        f"echo-dev: cannot listen on port {port + 1} (adev's live reload, PORT+1): "
        "address already in use"
    ]


@contextlib.contextmanager
def socket_on(port: int) -> Iterator[None]:
    """Another program listening on ``port`` (of the loopback interface)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))
        sock.listen()
        yield


def test_make_dev_serves_and_ctrl_c_exits_quietly(checkout: Path) -> None:
    port = dev_port()
    log_path = checkout / "dev.log"
    dev = start_make("dev", checkout, log_path, clean_env(PORT=str(port)))
    try:
        wait_for(f"http://127.0.0.1:{port}/healthz", dev, log_path, timeout=60)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as page:
            assert "livereload.js" in page.read().decode()
        family = children(dev.pid)
    finally:
        ctrl_c(dev)
    log = log_path.read_text()
    assert "Traceback" not in log, log
    assert "KeyboardInterrupt" not in log, log
    assert "Error" not in log, log
    # Nothing left behind: adev, and the app process it started, are gone.
    deadline = time.monotonic() + 20
    while (port_in_use(port) or port_in_use(port + 1)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert port_in_use(port) is None
    assert port_in_use(port + 1) is None
    assert family, "make dev started no process"


def catches_ctrl_c(make_pid: int) -> bool:
    """Whether make's child (echo.dev) has taken Ctrl-C over (SIGINT caught, from
    /proc: SigCgt), which it does first thing; until then make dev's recipe ignores it."""
    for pid in children(make_pid):
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        caught = next(line for line in status.splitlines() if line.startswith("SigCgt:"))
        if int(caught.split()[1], 16) & (1 << (signal.SIGINT - 1)):
            return True
    return False


@pytest.mark.parametrize("target", ["dev", "dev-client"])
def test_ctrl_c_at_any_moment_of_the_start_up_exits_quietly(checkout: Path, target: str) -> None:
    """Ctrl-C while adev (or the client), then its app process, are still starting:
    a SIGINT to either then was a KeyboardInterrupt traceback. A few moments, from the
    first one echo.dev takes Ctrl-C in to after the start-up."""
    for delay in (0.0, 0.2, 0.5, 1.0, 2.0):
        port = dev_port()
        log_path = checkout / f"{target}-{delay}.log"
        env = clean_env(PORT=str(port), WS_URL=f"ws://127.0.0.1:{port}/")
        proc = start_make(target, checkout, log_path, env)
        try:
            deadline = time.monotonic() + 30
            while not catches_ctrl_c(proc.pid):
                assert proc.poll() is None, log_path.read_text()
                assert time.monotonic() < deadline, log_path.read_text()
                time.sleep(0.01)
            time.sleep(delay)
        finally:
            status = ctrl_c(proc)
        log = log_path.read_text()
        for sign in ("Traceback", "KeyboardInterrupt", "Error"):
            assert sign not in log, f"Ctrl-C {delay} s in: {log}"
        assert status in (0, 2, -signal.SIGINT), log  # make's status after Ctrl-C
        if target == "dev":
            deadline = time.monotonic() + 20
            while port_in_use(port) and time.monotonic() < deadline:
                time.sleep(0.1)
            assert port_in_use(port) is None, "adev's app outlived make dev"


@pytest.mark.parametrize(
    ("host", "url"),
    [
        ("0.0.0.0", "http://localhost:8080/"),
        ("::", "http://localhost:8080/"),
        ("127.0.0.1", "http://127.0.0.1:8080/"),
        ("::1", "http://[::1]:8080/"),
    ],
)
def test_listening_line_prints_a_url_a_person_can_open(
    caplog: pytest.LogCaptureFixture, host: str, url: str
) -> None:
    with caplog.at_level(logging.INFO, "echo.server"):
        log_listening(TEST_SETTINGS, host, 8080)
    (line,) = [r.getMessage() for r in caplog.records]
    assert line.startswith(f"listening on {url} (WebSocket ws{url[4:]}, auto engine)"), line
    assert caplog.records[0].event_fields["url"] == url  # type: ignore[attr-defined]


async def test_no_response_names_the_software_versions(start_app: ServerFactory) -> None:
    server = await start_app(any_origin=False, max_connections=1)
    async with aiohttp.ClientSession() as session:
        replies = []
        for method, path, headers in [
            ("GET", "/", {}),
            ("GET", "/page.js", {}),
            ("GET", "/healthz", {}),
            ("GET", "/metrics", {}),
            ("POST", "/anything", {}),
            ("POST", "/healthz", {}),  # 405
            ("GET", "/", {"Upgrade": "websocket", "Origin": "https://evil.example"}),  # 403
        ]:
            async with session.request(method, server.make_url(path), headers=headers) as reply:
                replies.append((reply.status, reply.headers.get("Server")))
        ws = await session.ws_connect(server.make_url("/"))
        try:
            async with session.get(
                server.make_url("/"), headers={"Upgrade": "websocket", "Connection": "Upgrade"}
            ) as full:
                replies.append((full.status, full.headers.get("Server")))  # 400 or 503
        finally:
            await ws.close()
    statuses = [status for status, _ in replies]
    assert statuses[:7] == [200, 200, 200, 200, 200, 405, 403]
    assert all(software == SERVER_SOFTWARE for _, software in replies), replies


async def test_the_101_names_no_versions_either(start_app: ServerFactory) -> None:
    for plain_runner in (False, True):  # the server's own runner, and adev's (aiohttp's)
        server = await start_app(plain_runner=plain_runner)
        status, head, _ = await raw_handshake(server.port, [("Host", f"127.0.0.1:{server.port}")])
        assert status == 101
        assert b"aiohttp" not in head, head
        assert b"Python" not in head, head
