"""Interactive mode (``-i``): a prompt for a person, against any WebSocket server.

Each line typed is sent as a text message; everything received is printed above the
prompt with the time, its type and size, and the round trip when it matches something
sent (same type and bytes, the oldest such of the last :data:`REMEMBERED` sent). Lines
starting with ``/`` are commands (``/help`` lists them; ``//`` sends a line starting
with ``/``). prompt_toolkit's ``patch_stdout`` keeps printed lines from tearing the line
being typed; what a server sends is shown escaped (:mod:`echo.client.display`), so it
cannot act on the terminal.

The connection is kept as in the other modes: reconnects with back-off after a loss,
each step printed as it happens; ``/close`` ends it until ``/reconnect``. A refusal
(403, an untrusted certificate, a redirect not followed) or running out of
RECONNECT_MAX_ATTEMPTS stops the attempts, not the prompt: ``/reconnect`` tries again.
``/quit``, Ctrl-D or Ctrl-C closes with 1000 and exits 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import time
from collections import deque
from pathlib import Path

import aiohttp
from aiohttp import WSMsgType
from prompt_toolkit import PromptSession
from prompt_toolkit.patch_stdout import patch_stdout

from echo.client.backoff import Attempts, Backoff
from echo.client.dialer import (
    CLOSE_TIMEOUT,
    Dialer,
    Link,
    close_description,
    connect_retrying,
)
from echo.client.display import clock, safe_text, show_binary, show_text
from echo.client.errors import FatalError
from echo.client.running import EXIT_OK
from echo.config import ClientSettings
from echo.eventloop import loop_factory
from echo.logs import configure_logging, event
from echo.text import preview

log = logging.getLogger("echo.client")

REMEMBERED = 1000  # sent messages kept for matching echoes to their round trip
MAX_FILE = 16 << 20  # /file sends at most this many bytes
MAX_RECEIVE = 16 << 20
VALID_CLOSE_CODES = (*range(1000, 1004), *range(1007, 1015), *range(3000, 5000))

HELP = """\
commands:
  TEXT                   send TEXT as a text message (//TEXT sends /TEXT)
  /binary HEX            send bytes given in hex (spaces allowed) as a binary message
  /file PATH             send the file's bytes as a binary message
  /ping [TEXT]           ping; the pong's round trip is shown
  /close [CODE [REASON]] close (1000 by default); stays closed until /reconnect
  /reconnect             close if open, and connect again now
  /quit                  close and exit (also Ctrl-D, Ctrl-C)
  /help                  this list"""


def read_file(name: str) -> bytes | str:
    """The bytes of file ``name`` for /file, or why it cannot be sent."""
    path = Path(name).expanduser()
    try:
        with path.open("rb") as file:
            payload = file.read(MAX_FILE + 1)
    except OSError as error:
        return f"cannot read {safe_text(name, 200)}: {error.strerror or error}"
    if len(payload) > MAX_FILE:
        return f"{safe_text(name, 200)} is larger than {MAX_FILE} bytes"
    return payload


class ScreenHandler(logging.Handler):
    """Log records as ``HH:MM:SS.mmm * message`` lines above the prompt."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            mark = "!" if record.levelno >= logging.WARNING else "*"
            print(f"{clock(record.created)} {mark} {record.getMessage()}", flush=True)
        except Exception:  # pragma: no cover - logging must never raise
            self.handleError(record)


class Interactive:
    """The prompt, the connection it drives, and what is printed."""

    def __init__(self, settings: ClientSettings) -> None:
        self.settings = settings
        self.dialer = Dialer(
            settings, heartbeat=settings.heartbeat_interval, autoping=False, max_message=MAX_RECEIVE
        )
        backoff = Backoff(settings.reconnect_interval, settings.reconnect_max_interval)
        self.attempts = Attempts(backoff, settings.max_attempts)
        self.link: Link | None = None
        self.quitting = False
        self.paused = False  # after /close or a refusal: no attempts until /reconnect
        self.wake = asyncio.Event()  # /reconnect or /quit: stop waiting
        self.sent: deque[tuple[WSMsgType, bytes, float]] = deque(maxlen=REMEMBERED)
        self.pings: dict[bytes, float] = {}
        self.ping_count = 0
        self.closing: tuple[int, str] | None = None  # the code and reason of our own close
        self.closed = asyncio.Event()  # our own close is complete

    def say(self, text: str) -> None:
        print(f"{clock()} {text}", flush=True)

    # -- the connection -----------------------------------------------------------------

    async def keep_connected(self, session: aiohttp.ClientSession) -> None:
        """Connect, receive until the connection ends, wait, again; until /quit."""
        loop = asyncio.get_running_loop()
        down_since: float | None = None
        while not self.quitting:
            if self.paused:
                await self.wake.wait()
                self.wake.clear()
                continue
            try:
                link = await connect_retrying(self.dialer, session, self.attempts, self.wake)
            except FatalError as error:
                log.error("%s; /reconnect to try again", error)
                self.paused = True
                continue
            if link is None:
                self.wake.clear()  # /reconnect or /quit while waiting
                continue
            if self.quitting or self.paused:  # /quit or /close during the handshake
                await link.close()
                continue
            self.link = link
            opened = loop.time()
            self._connected(link, None if down_since is None else opened - down_since)
            answered = await self._receive(link)
            self.link = None
            down_since = loop.time()
            if answered or down_since - opened >= self.settings.healthy_after:
                self.attempts.healthy()
            if self.quitting or self.paused:
                continue
            if self.wake.is_set():  # /reconnect: at once
                self.wake.clear()
                continue
            delay = self.attempts.next_delay()
            log.info("reconnecting in %.3f s", delay, extra=event("backoff", delay=delay))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), delay)
            self.wake.clear()

    def _connected(self, link: Link, downtime: float | None) -> None:
        parts = [f"connected to {link.where()}"]
        if link.subprotocol:
            parts.append(f"subprotocol {preview(link.subprotocol, 60)}")
        if link.extensions:
            parts.append(f"extensions {preview(link.extensions, 100)}")
        if downtime is not None:
            parts.append(f"after {downtime:.3f} s down")
        log.info("; ".join(parts), extra=event("connected", **link.fields()))
        if link.info is not None:
            self.say(f"* server info: {safe_text(str(link.info), 2000)}")

    async def _receive(self, link: Link) -> bool:
        """Print what arrives until the connection ends; whether anything arrived."""
        loop = asyncio.get_running_loop()
        opened = loop.time()
        anything = False
        while True:
            msg = await link.receive()
            now = time.perf_counter()
            if msg.type in (WSMsgType.TEXT, WSMsgType.BINARY):
                anything = True
                self._show_received(msg.type, msg.data, now)
                continue
            if msg.type is WSMsgType.PING:
                await link.ws.pong(msg.data)
                self.say(f"< ping {show_text(msg.data, 125)!r} (answered)")
                continue
            if msg.type is WSMsgType.PONG:
                sent_at = self.pings.pop(msg.data, None)
                if sent_at is not None:
                    rtt = (now - sent_at) * 1000
                    self.say(f"< pong {show_text(msg.data, 125)!r} rtt {rtt:.3f} ms")
                continue  # the heartbeat's own pongs are not news
            up = loop.time() - opened
            if msg.type is WSMsgType.CLOSE:
                code, reason = close_description(msg.data, msg.extra)
                how = f"closed by the server with {code} {reason}"
                await link.close()
            elif self.closing is not None:
                # Our /close, /reconnect or /quit: the server's answer ends close().
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.closed.wait(), CLOSE_TIMEOUT + 1)
                sent_code, sent_reason = self.closing
                code, reason = close_description(link.ws.close_code, None)
                answer = "no answer" if code == 1006 else f"the server answered {code}"
                how = f"closed by you with {sent_code} {sent_reason} ({answer})"
            else:
                code, reason = close_description(link.ws.close_code, None)
                error = link.ws.exception()
                how = "connection lost, code 1006 abnormal" + (
                    f" ({preview(str(error))})" if error else ""
                )
                await link.close()
            log.log(
                logging.INFO if self.closing is not None else logging.WARNING,
                "disconnected: %s, after %.3f s up",
                how,
                up,
                extra=event("disconnected", code=code, reason=reason, up_ms=round(up * 1000)),
            )
            self.closing = None
            self.closed.clear()
            return anything

    def _show_received(self, kind: WSMsgType, data: bytes, now: float) -> None:
        rtt = ""
        for index, (sent_kind, payload, sent_at) in enumerate(self.sent):
            if sent_kind is kind and payload == data:
                del self.sent[index]
                rtt = f" rtt {(now - sent_at) * 1000:.3f} ms"
                break
        shown = show_text(data) if kind is WSMsgType.TEXT else show_binary(data)
        self.say(f"< {kind.name.lower()} {len(data)} B: {shown}{rtt}")

    # -- commands -------------------------------------------------------------------------

    async def handle(self, line: str) -> None:
        """One line typed: a message or a command."""
        if line.startswith("//"):
            await self.send(WSMsgType.TEXT, line[1:].encode("utf-8", "surrogateescape"))
            return
        if not line.startswith("/"):
            await self.send(WSMsgType.TEXT, line.encode("utf-8", "surrogateescape"))
            return
        command, _, rest = line[1:].partition(" ")
        rest = rest.strip()
        handler = {
            "binary": self._binary,
            "file": self._file,
            "ping": self._ping,
            "close": self._close,
            "reconnect": self._reconnect,
            "quit": self._quit,
            "help": self._help,
        }.get(command)
        if handler is None:
            self.say(f"* unknown command /{safe_text(command, 40)}; /help lists them")
            return
        await handler(rest)

    async def send(self, kind: WSMsgType, payload: bytes) -> None:
        link = self.link
        if link is None or link.ws.closed:
            self.say("* not connected: nothing sent (/reconnect connects now)")
            return
        try:
            await link.ws.send_frame(payload, kind)
        except (ConnectionError, aiohttp.ClientError) as error:
            self.say(f"* not sent: {preview(str(error))}")
            return
        self.sent.append((kind, payload, time.perf_counter()))
        shown = show_text(payload) if kind is WSMsgType.TEXT else show_binary(payload)
        self.say(f"> {kind.name.lower()} {len(payload)} B: {shown}")

    async def _binary(self, rest: str) -> None:
        try:
            payload = bytes.fromhex(rest)
        except ValueError:
            self.say("* /binary takes hex digits, e.g. /binary 00 ff 10")
            return
        await self.send(WSMsgType.BINARY, payload)

    async def _file(self, rest: str) -> None:
        payload = await asyncio.to_thread(read_file, rest)
        if isinstance(payload, str):
            self.say(f"* {payload}: not sent")
            return
        await self.send(WSMsgType.BINARY, payload)

    async def _ping(self, rest: str) -> None:
        link = self.link
        if link is None or link.ws.closed:
            self.say("* not connected: no ping sent")
            return
        self.ping_count += 1
        payload = (rest or f"ping {self.ping_count}").encode("utf-8", "surrogateescape")
        if len(payload) > 125:
            self.say("* a ping carries at most 125 bytes")
            return
        self.pings[payload] = time.perf_counter()
        if len(self.pings) > REMEMBERED:
            self.pings.pop(next(iter(self.pings)))
        await link.ws.ping(payload)
        self.say(f"> ping {show_text(payload, 125)!r}")

    async def _close(self, rest: str) -> None:
        code_text, _, reason = rest.partition(" ")
        code = 1000
        if code_text:
            if not code_text.isdigit() or int(code_text) not in VALID_CLOSE_CODES:
                self.say("* close codes: 1000-1003, 1007-1014, 3000-4999")
                return
            code = int(code_text)
        message = reason.encode("utf-8", "surrogateescape")
        if len(message) > 123:
            self.say("* a close reason is at most 123 bytes")
            return
        self.paused = True
        if self.link is None:
            self.say("* not connected; no more attempts until /reconnect")
            self.wake.set()
            return
        await self._close_link(code, message)

    async def _close_link(self, code: int = 1000, message: bytes = b"") -> None:
        """Close the open connection ourselves; the receiver reports it."""
        link = self.link
        if link is None or self.closing is not None:
            return
        self.closing = (code, preview(message.decode("utf-8", "replace"), 123))
        try:
            await link.close(code, message)
        finally:
            self.closed.set()

    async def _reconnect(self, rest: str) -> None:
        self.paused = False
        self.attempts.healthy()
        self.wake.set()
        await self._close_link()

    async def _quit(self, rest: str) -> None:
        self.quitting = True
        self.wake.set()
        await self._close_link()

    async def _help(self, rest: str) -> None:
        print(HELP, flush=True)

    # -- the prompt -----------------------------------------------------------------------

    async def run(self) -> int:
        with patch_stdout():
            handler = ScreenHandler()
            configure_logging(self.settings.log_level)
            root = logging.getLogger()
            root.handlers = [handler]
            self.say(f"* {self.settings.url}: type a message, /help for commands")
            self.dialer.warn_insecure()
            prompt: PromptSession[str] = PromptSession()
            async with self.dialer.session() as session:
                keeper = asyncio.create_task(self.keep_connected(session), name="echo-client-keep")
                try:
                    while not self.quitting:
                        try:
                            line = await prompt.prompt_async("> ")
                        except (EOFError, KeyboardInterrupt):
                            break
                        await self.handle(line)
                finally:
                    await self._quit("")
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(asyncio.shield(keeper), 5)
                    keeper.cancel()
                    await asyncio.gather(keeper, return_exceptions=True)
        return EXIT_OK


def run_interactive(settings: ClientSettings) -> int:
    """``echo-client -i``: the exit status (0 after /quit)."""
    if not sys.stdin.isatty():
        print("echo-client: -i needs a terminal; for scripts use --pipe", file=sys.stderr)
        return 2
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        return runner.run(Interactive(settings).run())
