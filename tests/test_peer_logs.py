"""What a peer can make the server log: nothing above info, no line longer than the
documented bound, nothing raw (control or non-ASCII characters), and no flood of
refusal lines, whichever logger writes (aiohttp's included)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import signal
import socket
import struct
import sys
import time
from collections.abc import Callable

import aiohttp
import pytest

from echo.logs import JSON_LINE_LIMIT, TEXT_LINE_LIMIT, JsonFormatter, TextFormatter, event
from echo.refusals import LINES_PER_SECOND
from tests.reliability.probes import alarming_lines
from tests.support import ServerProcess, wait_until
from tests.wsraw import OP_CLOSE, RawWebSocket, close_payload, encode_frame

ServerStarter = Callable[..., ServerProcess]
KEY = "dGhlIHNhbXBsZSBub25jZQ=="
HOSTILE = "\x1b[31mRED\x1b[0m\u202egnp.exe\U0001d47b\r\nINFO echo.server: forged"
# What aiohttp's parser lets through in a header value: tabs and raw non-ASCII bytes.
IN_HEADER = "\t\u00e9vil\u202egnp.exe\U0001d47b\u0085\tINFO echo.server: forged"


def upgrade(port: int, *extra: str | bytes) -> bytes:
    lines: list[bytes] = [
        b"GET / HTTP/1.1",
        f"Host: 127.0.0.1:{port}".encode(),
        b"Upgrade: websocket",
        b"Connection: Upgrade",
        f"Sec-WebSocket-Key: {KEY}".encode(),
        b"Sec-WebSocket-Version: 13",
    ]
    lines += [line if isinstance(line, bytes) else line.encode() for line in extra]
    return b"\r\n".join(lines) + b"\r\n\r\n"


async def send(port: int, data: bytes, *, then: bytes = b"", how: str = "read") -> bytes:
    """Send ``data`` (and ``then`` a moment later); read the answer until the server
    closes or 2 s pass, or end the connection mid-way (``how``: fin or reset)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    answer = b""
    try:
        writer.write(data)
        await writer.drain()
        if then:
            await asyncio.sleep(0.05)
            writer.write(then)
        if how == "fin":
            await asyncio.sleep(0.2)
            writer.write_eof()
        elif how == "reset":
            await asyncio.sleep(0.2)
            sock = writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()
            return b""
        with contextlib.suppress(TimeoutError, ConnectionError):
            async with asyncio.timeout(2):
                while chunk := await reader.read(65536):
                    answer += chunk
        return answer
    finally:
        writer.close()


def attacks(port: int) -> list[tuple[str, bytes, dict[str, bytes | str]]]:
    """(name, bytes to send, options for ``send``) for everything known to have made
    a warning, an error, a traceback or a raw or overlong line."""
    hostile = HOSTILE.encode()
    in_header = IN_HEADER.encode()
    offered = ", ".join(["chat\u00e9\u202e"] * 700)
    post = b"POST /x HTTP/1.1\r\nHost: x\r\n"
    get = b"GET /x HTTP/1.1\r\nHost: x\r\n"
    deflate = "Sec-WebSocket-Extensions: permessage-deflate; x=" + "9" * 3000
    close_5000 = encode_frame(OP_CLOSE, close_payload(5000, b"\xff"))
    return [
        ("subprotocols", upgrade(port, f"Sec-WebSocket-Protocol: {offered}"), {}),
        ("origin", upgrade(port, b"Origin: https://evil.example" + in_header), {}),
        ("origin-raw", upgrade(port, b"Origin: https://evil.example" + hostile), {}),
        ("origin-8k", upgrade(port, "Origin: https://" + "a" * 8000 + ".example"), {}),
        ("xff-scope", upgrade(port, b"X-Forwarded-For: fe80::1%" + in_header), {}),
        ("extensions", upgrade(port, deflate), {}),
        ("close-5000", upgrade(port), {"then": close_5000}),
        ("bad-utf8", upgrade(port), {"then": encode_frame(0x1, b"\xff\xfe" + hostile)}),
        ("unmasked", upgrade(port), {"then": encode_frame(0x2, hostile, mask=False)}),
        ("header-byte", get + b"X-Evil: " + hostile[:4] + b"\x01\r\n\r\n", {}),
        ("header-9k", get + b"X-Evil: " + b"\xe2\x80\xae" * 3000 + b"\r\n\r\n", {}),
        ("method", b"\x1b[2J /x HTTP/1.1\r\nHost: x\r\n\r\n", {}),
        ("not-http", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(range(256)), {}),
        ("bad-gzip", post + b"Content-Encoding: gzip\r\nContent-Length: 5\r\n\r\nhello", {}),
        (
            "bad-chunk",
            post + b"Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n",
            {"then": hostile + b"\r\n"},
        ),
        ("cut-fin", post + b"Content-Length: 99\r\n\r\npart", {"how": "fin"}),
        ("cut-reset", post + b"Content-Length: 99\r\n\r\npart", {"how": "reset"}),
        ("expect", post + b"Expect: " + in_header + b"\r\nConnection: close\r\n\r\n", {}),
        ("head-upgrade", upgrade(port).replace(b"GET /", b"HEAD /", 1), {}),
        ("bad-key", upgrade(port).replace(KEY.encode(), in_header), {}),
        ("bad-version", upgrade(port).replace(b"Version: 13", b"Version: " + in_header), {}),
    ]


def unsafe(line: str, limit: int) -> bool:
    return not (line.isascii() and line.isprintable() and len(line) <= limit)


@pytest.mark.parametrize("log_format", ["text", "json"])
async def test_no_peer_makes_a_warning_an_error_or_an_unsafe_line(
    server_process: ServerStarter, log_format: str
) -> None:
    proc = server_process(
        LOG_LEVEL="debug",
        LOG_FORMAT=log_format,
        ALLOWED_ORIGINS="https://good.example",
        TRUSTED_PROXIES="127.0.0.1",
        MAX_MESSAGE_SIZE="1000",
        HANDSHAKE_TIMEOUT="1000",
    )
    answers = {}
    for name, data, options in attacks(proc.port):
        answers[name] = await send(proc.port, data, **options)  # type: ignore[arg-type]
    async with aiohttp.ClientSession() as session:  # still serving
        async with session.ws_connect(proc.url, origin="https://good.example") as ws:
            await ws.send_str("still here")
            assert (await ws.receive_str(timeout=5)) == "still here"
    await asyncio.sleep(0.5)
    lines = proc.log().splitlines()
    limit = JSON_LINE_LIMIT if log_format == "json" else TEXT_LINE_LIMIT
    # The start-up settings line holds the operator's whole configuration, never cut
    # (echo.logs.WHOLE_EVENTS): printable, but as long as the configuration is.
    peer_lines = [line for line in lines if " echo.server: settings " not in line]
    assert [line[:300] for line in peer_lines if unsafe(line, limit)] == []
    assert all(line.isascii() and line.isprintable() for line in lines)
    if log_format == "json":
        records = [json.loads(line) for line in lines]
        assert not [r for r in records if r["level"] in ("warning", "error", "critical")]
        assert not [r for r in records if "exception" in r]
    else:
        assert alarming_lines(proc.log()) == []
    assert not re.search(r"^\S* INFO echo.server: forged", proc.log(), re.MULTILINE)
    assert not any(b"\x1b" in answer or b"\xe2\x80\xae" in answer for answer in answers.values())
    logged = proc.log()
    origin = '"reason": "origin"' if log_format == "json" else "reason=origin"
    for seen in (origin, "subprotocols not served", "bad request", "protocol error"):
        assert seen in logged, f"{seen!r} not logged: the attacks did not arrive"


async def refuse(port: int, origin: str) -> int:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(upgrade(port, f"Origin: {origin}"))
        head = await asyncio.wait_for(reader.readuntil(b"\r\n"), 10)
        return int(head.split(b" ", 2)[1])
    finally:
        writer.close()


async def test_a_refusal_flood_is_summarised_and_still_counted(
    server_process: ServerStarter,
) -> None:
    """One client had 780-2,576 handshakes a second refused, each an INFO line."""
    proc = server_process(ALLOWED_ORIGINS="https://good.example", ALLOW_MISSING_ORIGIN="false")
    flood = 400
    pending = iter(range(flood))
    statuses: list[int] = []

    async def worker() -> None:
        for n in pending:
            statuses.append(await refuse(proc.port, f"https://evil{n}.example"))

    started = time.monotonic()
    await asyncio.gather(*(worker() for _ in range(20)))
    seconds = time.monotonic() - started
    assert statuses == [403] * flood

    def summarised() -> int:
        found = re.findall(r"refused reason=origin not_logged=(\d+) ", proc.log())
        return sum(map(int, found))

    def one_by_one() -> int:
        return len(re.findall(r"refused remote=\S+ origin=.* reason=origin\b", proc.log()))

    await wait_until(lambda: one_by_one() + summarised() == flood, timeout=5)
    windows = int(seconds) + 2  # the one-second windows the flood can have touched
    assert one_by_one() <= LINES_PER_SECOND * windows, (one_by_one(), seconds)
    assert proc.log().count("refused reason=origin not_logged=") <= windows
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{proc.http}/metrics") as response:
            metrics = await response.text()
    assert f'echo_handshakes_refused_total{{reason="origin"}} {flood}.0' in metrics


def format_both(record: logging.LogRecord) -> tuple[str, str]:
    return TextFormatter().format(record), JsonFormatter().format(record)


def test_formatters_bound_and_escape_any_record() -> None:
    """A foreign logger's record (aiohttp's, asyncio's...) with raw control characters,
    bidi overrides and 50,000 characters, with and without a traceback."""
    huge = HOSTILE * 2000
    try:
        raise ValueError(HOSTILE * 3)
    except ValueError:
        exc_info = sys.exc_info()
    plain = logging.LogRecord("aiohttp.x", logging.INFO, __file__, 1, "got %s", (huge,), None)
    failed = logging.LogRecord("asyncio", logging.ERROR, __file__, 1, huge, (), exc_info)
    evented = logging.LogRecord("echo.server", logging.INFO, __file__, 1, "x", (), None)
    evented.__dict__.update(event("refused", remote="r", origin=huge, reason=huge))
    for record in (plain, failed, evented):
        text, line = format_both(record)
        for physical in text.splitlines():
            assert not unsafe(physical, TEXT_LINE_LIMIT), physical[:100]
        assert not unsafe(line, JSON_LINE_LIMIT), line[:100]
        assert "\n" not in line
        json.loads(line)
    text, line = format_both(failed)
    assert "Traceback (most recent call last):" in text
    assert "ValueError: " in json.loads(line)["exception"], "a traceback keeps its end"
    assert "\\x1b[31mRED" in format_both(plain)[0]
    assert "total)" in format_both(plain)[0]


async def test_a_peer_that_ignores_the_shutdown_close_makes_no_warning(
    server_process: ServerStarter,
) -> None:
    """A peer that never answers the server's 1001 holds the shutdown for SHUTDOWN_TIMEOUT;
    that was logged as a WARNING, which any client could cause."""
    proc = server_process(SHUTDOWN_TIMEOUT="300")
    raw = await RawWebSocket.connect("127.0.0.1", proc.port)  # and never reads or answers
    proc.signal(signal.SIGTERM)
    assert proc.wait() == 0
    await raw.aclose()
    assert "shutdown: 1 connection(s) did not close in time" in proc.log()
    assert alarming_lines(proc.log()) == []
