"""Helpers for the client tests: a client subprocess, a cuttable relay, a silent server.

All of them listen on or connect to 127.0.0.1 only.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import os
import re
import signal
import struct
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from echo.config import ClientSettings
from tests.support import clean_env

SUMMARY = re.compile(
    r"^summary sent=(?P<sent>\d+) echoed=(?P<echoed>\d+) lost=(?P<lost>\d+) resent=(?P<resent>\d+) "
    r"mismatched=(?P<mismatched>\d+) reconnects=(?P<reconnects>\d+) "
    r"rtt_p50_ms=(?P<p50>\d+\.\d{3}|nan) rtt_p99_ms=(?P<p99>\d+\.\d{3}|nan)$"
)
WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def fast_settings(url: str, **changes: object) -> ClientSettings:
    """Client settings for tests: 20 ms between messages, 20-50 ms back-off."""
    values: dict[str, object] = {
        "url": url,
        "reconnect_interval": 0.02,
        "reconnect_max_interval": 0.05,
        "message_interval": 0.02,
        "heartbeat_interval": 5.0,
    }
    values.update(changes)
    return ClientSettings(**values)  # type: ignore[arg-type]


def parse_summary(stdout: str) -> dict[str, str]:
    lines = stdout.strip().splitlines()
    assert len(lines) == 1, f"expected one summary line on stdout, got {stdout!r}"
    match = SUMMARY.match(lines[0])
    assert match is not None, f"malformed summary: {lines[0]!r}"
    return match.groupdict()


def fast_client_env(**variables: str) -> dict[str, str]:
    env = clean_env(
        MESSAGE_INTERVAL="20",
        RECONNECT_INTERVAL="20",
        RECONNECT_MAX_INTERVAL="50",
        PYTHONWARNINGS="always::ResourceWarning",  # shown on stderr, where tests look
    )
    env.update(variables)
    return env


class ClientProcess:
    """``python -m echo.client`` as a subprocess, stdout and stderr in files."""

    def __init__(self, args: list[str], env: dict[str, str], cwd: Path) -> None:
        self.stdout_path = cwd / "client.out"
        self.stderr_path = cwd / "client.err"
        with self.stdout_path.open("wb") as out, self.stderr_path.open("wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "echo.client", *args],
                env=env,
                cwd=cwd,
                stdout=out,
                stderr=err,
            )

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def assert_no_leaks_reported(self) -> None:
        text = self.stderr()
        for sign in ("ResourceWarning", "Unclosed", "Task was destroyed", "Traceback"):
            assert sign not in text, text

    def stdout(self) -> str:
        return self.stdout_path.read_text(errors="replace")

    def wait_for_log(self, pattern: str, count: int = 1, timeout: float = 15.0) -> None:
        """Poll stderr until ``pattern`` (a regex) has matched ``count`` times."""
        deadline = time.monotonic() + timeout
        while len(re.findall(pattern, self.stderr())) < count:
            if self.proc.poll() is not None:
                raise AssertionError(f"client exited {self.proc.returncode}: {self.stderr()}")
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{pattern!r} x{count} not logged in {timeout}s:\n{self.stderr()}"
                )
            time.sleep(0.02)

    def stop(self, signum: int = signal.SIGINT, timeout: float = 15.0) -> int:
        self.proc.send_signal(signum)
        return self.proc.wait(timeout)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def count_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@dataclass(eq=False)  # compared and hashed by identity, kept in a set
class Link:
    client: asyncio.StreamWriter
    upstream: asyncio.StreamWriter


@dataclass
class Relay:
    """A TCP relay on 127.0.0.1 in front of a server, which the test can disrupt.

    ``cut()`` aborts every relayed connection (both sides see a reset), ``swallow``
    drops the server's bytes instead of forwarding them, ``refuse`` aborts new
    connections as soon as they are accepted.
    """

    target_port: int
    server: asyncio.Server | None = None
    port: int = 0
    links: set[Link] = field(default_factory=set)
    swallow: bool = False
    swallowed: int = 0
    refuse: bool = False
    accepted: int = 0

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/"

    async def start(self) -> Relay:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def close(self) -> None:
        self.cut()
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()

    def cut(self) -> None:
        for link in list(self.links):
            link.client.transport.abort()
            link.upstream.transport.abort()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        if self.refuse:
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.transport.abort()
            return
        link = Link(writer, up_writer)
        self.links.add(link)
        try:
            await asyncio.gather(
                self._pipe(reader, up_writer, downstream=False),
                self._pipe(up_reader, writer, downstream=True),
            )
        finally:
            self.links.discard(link)
            for side in (writer, up_writer):
                side.transport.abort()

    async def _pipe(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, downstream: bool
    ) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(65536):
                if downstream and self.swallow:
                    self.swallowed += len(data)
                    continue
                writer.write(data)
                await writer.drain()
        writer.transport.abort()


@dataclass
class SilentConnection:
    opcodes: list[int] = field(default_factory=list)
    ended: bool = False


class SilentServer:
    """Completes the WebSocket handshake, then never answers anything (a hung server).

    It records the opcodes of the frames each client sends and whether the client
    dropped the connection.
    """

    def __init__(self) -> None:
        self.connections: list[SilentConnection] = []
        self.server: asyncio.Server | None = None
        self.port = 0
        self._writers: list[asyncio.StreamWriter] = []

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/"

    async def start(self) -> SilentServer:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def close(self) -> None:
        for writer in self._writers:
            writer.transport.abort()
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.append(writer)
        conn = SilentConnection()
        self.connections.append(conn)
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            key = re.search(rb"(?im)^sec-websocket-key:\s*(\S+)", head)
            assert key is not None
            accept = base64.b64encode(hashlib.sha1(key.group(1) + WS_GUID).digest())
            writer.write(
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n"
            )
            while True:
                b0, b1 = await reader.readexactly(2)
                length = b1 & 0x7F
                if length == 126:
                    (length,) = struct.unpack("!H", await reader.readexactly(2))
                elif length == 127:
                    (length,) = struct.unpack("!Q", await reader.readexactly(8))
                await reader.readexactly(4 + length)  # mask and payload, ignored
                conn.opcodes.append(b0 & 0x0F)
        except (asyncio.IncompleteReadError, ConnectionError):
            conn.ended = True
        finally:
            writer.transport.abort()


def run_client(
    args: list[str], cwd: Path, timeout: float = 60, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``python -m echo.client ARGS`` to its end, stdin closed; stdout and stderr as text;
    ``env`` adds variables to :func:`fast_client_env`."""
    return subprocess.run(
        [sys.executable, "-m", "echo.client", *args],
        env=fast_client_env(**(env or {})),
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def json_events(stdout: str) -> list[dict[str, Any]]:
    """The JSON lines of ``--json`` output, each parsed (all of stdout must be JSON)."""
    return [json.loads(line) for line in stdout.splitlines()]
