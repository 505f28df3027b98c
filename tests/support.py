"""Helpers for tests: clean environments, the settings variables, polling.

The free-port helper and the server launcher live in ``harness/`` (shared with the
benchmark and the conformance runner) and are re-exported here.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from echo.config import ServerSettings
from harness.ports import free_port
from harness.process import ServerProcess

__all__ = [
    "CLIENT_VARIABLES",
    "CONFIG_VARIABLES",
    "FAULT",
    "SERVER_VARIABLES",
    "TEST_SETTINGS",
    "TLS_SERVER_VARIABLES",
    "ServerFactory",
    "ServerProcess",
    "children",
    "clean_env",
    "engine_under_test",
    "free_port",
    "inject_fault",
    "run_server_briefly",
    "seconds_until_cut_off",
    "wait_until",
]

SERVER_VARIABLES = [
    "HOST",
    "PORT",
    "ALLOWED_ORIGINS",
    "ALLOW_MISSING_ORIGIN",
    "ALLOWED_HOSTS",
    "MAX_CONNECTIONS",
    "MAX_CONNECTIONS_PER_IP",
    "MAX_MESSAGE_SIZE",
    "HEARTBEAT_INTERVAL",
    "HANDSHAKE_TIMEOUT",
    "SHUTDOWN_TIMEOUT",
    "COMPRESSION",
    "LOG_LEVEL",
    "LOG_FORMAT",
    "TRUSTED_PROXIES",
    "METRICS",
    "WORKERS",
    "CONTROLS",
    "PUSH_MAX_RATE",
    "SUBPROTOCOLS",
    "ENGINE",
    "DRAIN_DELAY",
    "INSTANCE_NAME",
]
# Only together, and naming files: their rules are tested in tests/test_tls.py.
TLS_SERVER_VARIABLES = ["TLS_CERT_FILE", "TLS_KEY_FILE", "TLS_CLIENT_CA_FILE"]
CLIENT_VARIABLES = [
    "WS_URL",
    "RECONNECT_INTERVAL",
    "RECONNECT_MAX_INTERVAL",
    "RECONNECT_MAX_ATTEMPTS",
    "MESSAGE_INTERVAL",
    "ORIGIN",
    "MESSAGE_COUNT",
    "CLIENT_HEARTBEAT_INTERVAL",
    "TLS_CA_FILE",
]
CONFIG_VARIABLES = SERVER_VARIABLES + TLS_SERVER_VARIABLES + CLIENT_VARIABLES

TEST_SETTINGS = ServerSettings(
    host="127.0.0.1",
    port=0,
    any_origin=True,
    allow_missing_origin=True,
    heartbeat_interval=30.0,
)


def engine_under_test() -> str:
    """The engine the tests' servers run: ENGINE from the test process's environment
    resolved as the server resolves it (auto: fast where proven, else plain)."""
    from echo.engine import choose

    return choose(os.environ.get("ENGINE", "auto").strip().lower() or "auto")


def children(pid: int) -> set[int]:
    """The live child processes of ``pid`` (gunicorn's or nginx's workers), from /proc."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # gone meanwhile
        fields = stat.rsplit(")", 1)[1].split()  # after "pid (command)"
        if int(fields[1]) == pid and fields[0] != "Z":
            found.add(int(entry.name))
    return found


def answers(url: str) -> bool:
    """Whether ``url`` answers an HTTP GET within a second with a success status."""
    try:
        with urllib.request.urlopen(url, timeout=1):
            return True
    except OSError:
        return False


def stop_with_children(proc: subprocess.Popen[Any], known: set[int], command: bytes = b"") -> None:
    """SIGTERM ``proc`` (SIGKILL if it has not exited within 10 s), then SIGKILL those
    of its children (``known``, and those alive now) that outlived it, whose command
    line still starts with ``command`` (their pids may have been reused)."""
    known = known | (children(proc.pid) if proc.poll() is None else set())
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    for pid in known:
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            if Path(f"/proc/{pid}/cmdline").read_bytes().startswith(command):
                os.kill(pid, signal.SIGKILL)


def run_server_briefly(
    env: dict[str, str], cwd: Path, module: str = "echo.server"
) -> subprocess.CompletedProcess[str]:
    """Run ``echo-server`` (or another entry point, ``module``) with ``env`` in ``cwd``
    until it exits (at most 30 s): for start-up failures, whose status and stderr the
    caller checks."""
    return subprocess.run(
        [sys.executable, "-m", module],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def clean_env(**overrides: str) -> dict[str, str]:
    """The test process's environment without any echo setting, plus ``overrides``."""
    env = {k: v for k, v in os.environ.items() if k not in CONFIG_VARIABLES}
    if "ENGINE" in os.environ:  # the engine under test (ENGINE=plain make test) stays
        env["ENGINE"] = os.environ["ENGINE"]
    env.update(overrides)
    return env


ServerFactory = Callable[..., Any]


async def wait_until(
    predicate: Callable[[], Any], timeout: float = 5.0, interval: float = 0.02
) -> None:
    """Poll ``predicate`` until it is true; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(interval)


async def seconds_until_cut_off(port: int, timeout: float = 10.0) -> float:
    """Open a TCP connection to 127.0.0.1:``port``, send nothing, and return how long the
    server took to close it; fail the test if it is still open after ``timeout``."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    started = time.monotonic()
    try:
        assert await asyncio.wait_for(reader.read(1024), timeout) == b"", "data from server"
        return time.monotonic() - started
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


FAULT = b"\xfe injected fault"  # invalid UTF-8: never echoed from the fast path's parser


def inject_fault(monkeypatch: Any) -> None:
    """Make both engines' echo loops raise RuntimeError("injected fault") on a text
    message of FAULT: an error of ours while serving, wherever the loop runs."""
    from echo import protocol

    real = protocol.is_utf8

    def faulty(data: bytes) -> bool:
        if data == FAULT:
            raise RuntimeError("injected fault")
        return real(data)

    monkeypatch.setattr(protocol, "is_utf8", faulty)


async def raw_handshake(port: int, headers: list[tuple[str, str]]) -> tuple[int, bytes, bytes]:
    """Status, head and body of an upgrade request with exactly ``headers`` (and the key)."""
    lines = [
        "GET / HTTP/1.1",
        *(f"{name}: {value}" for name, value in headers),
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {base64.b64encode(os.urandom(16)).decode()}",
        "Sec-WebSocket-Version: 13",
    ]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        status = int(head.split(b" ", 2)[1])
        body = b""
        if status != 101:
            length = re.search(rb"(?i)\r\ncontent-length: *(\d+)", head)
            assert length is not None, head
            body = await asyncio.wait_for(reader.readexactly(int(length[1])), 5)
        return status, head, body
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
