"""Pipe mode (``echo-client --pipe``): lines from a file in, answers out, exit status."""

from __future__ import annotations

import asyncio
import base64
import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiohttp import web

from tests.client_support import SilentServer, fast_client_env
from tests.support import ServerProcess

ServerStarter = Callable[..., ServerProcess]


def pipe(
    args: list[str], stdin: bytes, cwd: Path, **variables: str
) -> subprocess.CompletedProcess[bytes]:
    """``echo-client --pipe ARGS`` with ``stdin`` given as a regular file, as `< file` does."""
    source = cwd / "input.txt"
    source.write_bytes(stdin)
    with source.open("rb") as file:
        return subprocess.run(
            [sys.executable, "-m", "echo.client", "--pipe", *args],
            stdin=file,
            env=fast_client_env(**variables),
            cwd=cwd,
            capture_output=True,
            timeout=60,
            check=False,
        )


def test_lines_from_a_file_come_back_one_per_line(
    server_process: ServerStarter, tmp_path: Path
) -> None:
    server = server_process(LOG_LEVEL="debug")
    lines = ["hello", "wörld ✓", "", "a line with spaces  ", "x" * 70_000]
    result = pipe([server.url], ("\n".join(lines) + "\n").encode(), tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.decode().split("\n") == [*lines, ""]
    assert b"pipe: sent=5 received=5 unanswered=0" in result.stderr
    assert server.log().count(" text ") >= 5  # each line was a text message


def test_binary_lines_hex_base64_and_raw(server_process: ServerStarter, tmp_path: Path) -> None:
    server = server_process()
    blobs = [bytes(range(256)), b"\n\r\x00", b""]
    hexed = pipe([server.url, "--hex"], b"".join(b.hex().encode() + b"\n" for b in blobs), tmp_path)
    assert hexed.returncode == 0, hexed.stderr
    assert hexed.stdout.split(b"\n")[:-1] == [b.hex().encode() for b in blobs]
    encoded = b"".join(base64.b64encode(b) + b"\n" for b in blobs)
    based = pipe([server.url, "--base64"], encoded, tmp_path)
    assert based.returncode == 0, based.stderr
    assert based.stdout == encoded
    raw = pipe([server.url, "--binary"], b"\xff\xfe\x00\nplain\n", tmp_path)
    assert raw.returncode == 0, raw.stderr
    assert raw.stdout == b"\xff\xfe\x00\nplain\n"


def test_json_events_carry_what_was_received(server_process: ServerStarter, tmp_path: Path) -> None:
    server = server_process()
    result = pipe([server.url, "--json", "--base64"], b"AAEC\n", tmp_path)
    assert result.returncode == 0, result.stderr
    events = [json.loads(line) for line in result.stdout.decode().splitlines()]
    names = [e["event"] for e in events]
    assert names == ["connected", "sent", "received", "summary"], names
    assert (events[0]["url"], events[0]["status"]) == (server.url, 101)
    assert (events[2]["kind"], events[2]["size"], events[2]["base64"]) == ("binary", 3, "AAEC")
    assert (events[3]["sent"], events[3]["received"], events[3]["lost"]) == (1, 1, 0)


async def test_a_server_that_never_answers_costs_at_most_wait_then_exit_3(
    tmp_path: Path,
) -> None:
    silent = await SilentServer().start()
    try:
        started = time.monotonic()
        result = await asyncio.to_thread(
            pipe, [silent.url, "--wait", "300"], b"one\ntwo\n", tmp_path
        )
        took = time.monotonic() - started
    finally:
        await silent.close()
    assert result.returncode == 3, result.stderr
    assert result.stdout == b""
    assert b"pipe: sent=2 received=0 unanswered=2" in result.stderr
    assert took < 30, "bounded by --wait, not hanging"
    assert silent.connections[0].opcodes[:2] == [1, 1], "both lines were sent"


async def test_a_server_closing_mid_input_gives_exit_3_naming_the_close(
    aiohttp_server: Any, tmp_path: Path
) -> None:
    async def two_then_close(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        seen = 0
        async for msg in ws:
            await ws.send_str(msg.data)
            seen += 1
            if seen == 2:
                await ws.close(code=4001, message=b"enough")
        return ws

    app = web.Application()
    app.router.add_get("/", two_then_close)
    server = await aiohttp_server(app)
    lines = b"".join(b"line %d\n" % n for n in range(1000))
    result = await asyncio.to_thread(
        pipe, [str(server.make_url("/").with_scheme("ws"))], lines, tmp_path
    )
    assert result.returncode == 3, result.stderr
    assert result.stdout.startswith(b"line 0\nline 1\n")
    assert b"connection closed: code=4001 'enough'" in result.stderr
    assert b"stopped after " in result.stderr


def test_a_line_that_cannot_be_sent_stops_with_exit_1_after_the_answers(
    server_process: ServerStarter, tmp_path: Path
) -> None:
    server = server_process()
    result = pipe([server.url], b"fine\n\xff\xfe not utf-8\nnever sent\n", tmp_path)
    assert result.returncode == 1
    assert result.stdout == b"fine\n", "what was sent got its answer"
    assert b"input line 2 is not UTF-8 (use --binary); nothing more is sent" in result.stderr
    hexed = pipe([server.url, "--hex"], b"00ff\nzz\n", tmp_path)
    assert hexed.returncode == 1
    assert hexed.stdout == b"00ff\n"
    assert b"input line 2 is not valid hex" in hexed.stderr


async def test_a_server_that_answers_twice_gets_both_written(
    aiohttp_server: Any, tmp_path: Path
) -> None:
    async def answer_twice(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for msg in ws:
            await ws.send_str(msg.data.decode().upper())
            await ws.send_bytes(msg.data)
        return ws

    app = web.Application()
    app.router.add_get("/", answer_twice)
    server = await aiohttp_server(app)
    url = str(server.make_url("/").with_scheme("ws"))
    # Exit once as many answers as lines are in; the rest are written while they come.
    result = await asyncio.to_thread(pipe, [url, "--hex", "--wait", "2000"], b"6869\n", tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split(b"\n")[0] == b"HI", "text answers are written as text"


def test_empty_input_connects_and_exits_0(server_process: ServerStarter, tmp_path: Path) -> None:
    server = server_process()
    result = pipe([server.url, "--wait", "0"], b"", tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout == b""
    assert b"pipe: sent=0 received=0 unanswered=0" in result.stderr
