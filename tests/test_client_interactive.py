"""Interactive mode (``echo-client -i``) in a real terminal (tmux), typed at and read back."""

from __future__ import annotations

import asyncio
import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
from aiohttp import web

from tests.client_support import fast_client_env
from tests.support import ServerProcess
from tests.terminal_support import Terminal

ServerStarter = Callable[..., ServerProcess]
CLIENT = [sys.executable, "-m", "echo.client", "-i"]
T = r"\d\d:\d\d:\d\d\.\d{3}"  # the time at the start of each line


@pytest.fixture
def terminals() -> Iterator[Callable[..., Terminal]]:
    started: list[Terminal] = []

    def start(args: list[str], cwd: Path, **variables: str) -> Terminal:
        terminal = Terminal([*CLIENT, *args], fast_client_env(**variables), cwd)
        started.append(terminal)
        return terminal

    yield start
    for terminal in started:
        terminal.close()


class PushServer:
    """An in-test WebSocket server that echoes and also sends what the test tells it to."""

    def __init__(self) -> None:
        self.sockets: list[web.WebSocketResponse] = []
        self.runner: web.AppRunner | None = None
        self.port = 0

    async def _handler(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        self.sockets.append(ws)
        async for msg in ws:
            await ws.send_str(msg.data)
        return ws

    async def start(self) -> PushServer:
        app = web.Application()
        app.router.add_get("/", self._handler)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port = self.runner.addresses[0][1]
        return self

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/"

    async def close(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


@pytest.fixture
async def push_server() -> AsyncIterator[PushServer]:
    server = await PushServer().start()
    yield server
    await server.close()


def test_a_session_of_lines_and_commands(
    server_process: ServerStarter, terminals: Callable[..., Terminal], tmp_path: Path
) -> None:
    server = server_process()
    (tmp_path / "blob.bin").write_bytes(bytes(range(5)))
    term = terminals([server.url], tmp_path)
    term.wait_for(rf"^{T} \* connected to {re.escape(server.url)}")

    term.type("hello wörld")
    term.wait_for(rf"^{T} < text 12 B: hello wörld rtt \d+\.\d{{3}} ms$")
    term.type("/binary 00 ff 10")
    term.wait_for(rf"^{T} < binary 3 B: 00 ff 10 rtt \d+\.\d{{3}} ms$")
    term.type("/file blob.bin")
    term.wait_for(rf"^{T} < binary 5 B: 00 01 02 03 04 rtt ")
    term.type("//not a command")
    term.wait_for(rf"^{T} < text 14 B: /not a command rtt ")
    term.type("/ping")
    term.wait_for(rf"^{T} < pong 'ping 1' rtt \d+\.\d{{3}} ms$")
    term.type("/ping are you there")
    term.wait_for(rf"^{T} < pong 'are you there' rtt ")
    term.type("/help")
    term.wait_for(r"^  /close \[CODE \[REASON\]\]")
    term.type("/nonsense")
    term.wait_for(r"unknown command /nonsense; /help lists them")

    term.type("/close 4000 see you")
    term.wait_for(
        rf"^{T} \* disconnected: closed by you with 4000 'see you' \(the server answered 4000\)"
    )
    term.type("lost words")
    term.wait_for(r"\* not connected: nothing sent")
    term.type("/reconnect")
    term.wait_for(rf"^{T} \* connected to .* after \d+\.\d{{3}} s down$")
    term.type("again")
    term.wait_for(rf"^{T} < text 5 B: again rtt ")
    term.type("/quit")
    term.wait_for(r"^\[exit 0\]$")
    log = server.log()
    assert re.search(r"close id=c1 code=4000", log), log
    assert re.search(r"close id=c2 code=1000", log), log
    screen = term.screen()
    assert "lost words" not in re.findall(r"< text \d+ B: (.*) rtt", screen)


async def test_received_lines_do_not_tear_the_line_being_typed(
    push_server: PushServer, terminals: Callable[..., Terminal], tmp_path: Path
) -> None:
    term = terminals([push_server.url], tmp_path)
    await asyncio.to_thread(term.wait_for, r"\* connected to ")
    term.type("half a li", enter=False)
    await asyncio.to_thread(term.wait_for, r"^> half a li$")
    ws = push_server.sockets[0]
    for n in range(3):
        await ws.send_str(f"pushed {n}")
    screen = await asyncio.to_thread(term.wait_for, rf"^{T} < text 8 B: pushed 2$")
    lines = [line for line in screen.splitlines() if line.strip()]
    assert lines[-1] == "> half a li", screen  # the prompt and what was typed, intact
    pushed = [line for line in lines if "pushed" in line]
    assert len(pushed) == 3
    assert all(re.fullmatch(rf"{T} < text 8 B: pushed \d", line) for line in pushed), pushed
    term.type("ne")
    screen = await asyncio.to_thread(term.wait_for, rf"^{T} < text 11 B: half a line rtt ")
    term.keys("C-d")
    await asyncio.to_thread(term.wait_for, r"^\[exit 0\]$")


async def test_a_hostile_server_cannot_drive_the_terminal(
    push_server: PushServer, terminals: Callable[..., Terminal], tmp_path: Path
) -> None:
    term = terminals([push_server.url], tmp_path)
    await asyncio.to_thread(term.wait_for, r"\* connected to ")
    ws = push_server.sockets[0]
    # Clear the screen, home the cursor, retitle the window, fake a prompt line, and
    # reverse the rest of the line.
    await ws.send_str("\x1b[2J\x1b[Hgone\x1b]0;pwned\x07\r\n> fake\u202eesrever")
    await ws.send_bytes(b"\x1b[2J" * 100)
    # The binary line, then the prompt redrawn under it (a moment later: wait for both).
    screen = await asyncio.to_thread(term.wait_for, rf"^{T} < binary 400 B: 1b 5b 32 4a.*\n>\s*\Z")
    assert "* ws://127.0.0.1" in screen, "the banner was not cleared away"
    shown = re.search(rf"^{T} < text \d+ B: (.*)$", screen, re.MULTILINE)
    assert shown is not None, screen
    assert shown.group(1) == ("\\x1b[2J\\x1b[Hgone\\x1b]0;pwned\\x07\\r\\n> fake\\u202eesrever"), (
        screen
    )
    assert screen.rstrip().splitlines()[-1] == ">", "the real prompt is still last"
    binary = re.search(rf"^{T} < binary 400 B: (.*)$", screen, re.MULTILINE)
    assert binary is not None
    assert binary.group(1) == "1b 5b 32 4a " * 7 + "1b 5b 32 4a ...", "32 bytes of 400"
    term.type("/quit")
    await asyncio.to_thread(term.wait_for, r"^\[exit 0\]$")


def test_reconnects_are_shown_as_they_happen(
    server_process: ServerStarter, terminals: Callable[..., Terminal], tmp_path: Path
) -> None:
    first = server_process()
    term = terminals([first.url], tmp_path, RECONNECT_INTERVAL="200", RECONNECT_MAX_INTERVAL="400")
    term.wait_for(rf"{T} \* connected to ")
    first.signal(signal.SIGKILL)
    first.wait()
    term.wait_for(rf"^{T} ! disconnected: connection lost, code 1006 abnormal.*after \d")
    term.wait_for(
        rf"^{T} \* cannot connect \(attempt 2\): 127\.0\.0\.1:{first.port}: connection refused; "
        r"retrying in \d+\.\d{3} s$"
    )
    server_process(PORT=str(first.port))
    term.wait_for(rf"^{T} \* connected to .* after \d+\.\d{{3}} s down$")
    term.type("back")
    term.wait_for(rf"^{T} < text 4 B: back rtt ")
    term.type("/quit")
    term.wait_for(r"^\[exit 0\]$")


def test_a_refusal_is_explained_and_the_prompt_stays(
    server_process: ServerStarter, terminals: Callable[..., Terminal], tmp_path: Path
) -> None:
    server = server_process(ALLOWED_ORIGINS="http://allowed.example", ALLOW_MISSING_ORIGIN="false")
    term = terminals([server.url], tmp_path)
    term.wait_for(
        rf"^{T} ! the server at '{re.escape(server.url)}' refused the handshake with HTTP 403: '"
    )
    term.wait_for(r"/reconnect to try again")
    term.type("hello")
    term.wait_for(r"\* not connected: nothing sent")
    term.type("/quit")
    term.wait_for(r"^\[exit 0\]$")
    assert len(re.findall(r"reason=origin", server.log())) == 1, "not retried on its own"


def test_interactive_mode_needs_a_terminal(tmp_path: Path) -> None:
    result = subprocess.run(
        [*CLIENT, "ws://127.0.0.1:9/"],
        env=fast_client_env(),
        cwd=tmp_path,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr == "echo-client: -i needs a terminal; for scripts use --pipe\n"


def test_without_a_mode_flag_a_terminal_gets_the_default_mode(
    server_process: ServerStarter, tmp_path: Path
) -> None:
    server = server_process()
    term = Terminal(
        [sys.executable, "-m", "echo.client", server.url, "--count", "3"],
        fast_client_env(),
        tmp_path,
    )
    try:
        screen = term.wait_for(r"^\[exit 0\]$")
    finally:
        term.close()
    assert re.search(r"^summary sent=3 echoed=3 lost=0 ", screen, re.MULTILINE), screen
    assert "type a message" not in screen
