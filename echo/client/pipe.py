"""Pipe mode (``--pipe``): each line of stdin is one message, each answer one line of stdout.

For shell scripts and CI: ``printf 'a\\nb\\n' | echo-client --pipe ws://host/``. Lines
are sent as text messages (UTF-8, the newline dropped); with ``--binary`` as binary
messages of the line's bytes, with ``--base64`` or ``--hex`` as binary messages of the
decoded line. Every data message received is written to stdout followed by a newline:
text as it came, binary as raw bytes, or base64/hex with those flags (with ``--json``,
as ``received`` events instead). When the input ends the client waits until it has
received at least as many messages as it sent, at most ``--wait`` ms (5000 by
default), closes with 1000 and exits: 0 when every message was answered, 3 when not,
or when the connection was lost first, 1 when an input line could not be encoded or
the handshake was refused.

Lines are read by a thread (stdin may be a terminal, a pipe or a file), at most
:data:`QUEUED_LINES` ahead of the sending; a line is at most :data:`MAX_LINE` bytes.
Memory is bounded by that and by the socket's back-pressure: sending waits for it.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import logging
import sys
import threading
from typing import Any, BinaryIO, Literal

import aiohttp
from aiohttp import WSMsgType

from echo.client.backoff import Attempts, Backoff
from echo.client.dialer import Dialer, Link, close_description, connect_retrying
from echo.client.errors import FatalError
from echo.client.events import emit
from echo.client.running import EXIT_FATAL, EXIT_LOST, EXIT_OK, report_fatal, run_until_signal
from echo.config import ClientSettings
from echo.eventloop import loop_factory
from echo.logs import event

log = logging.getLogger("echo.client")

MAX_LINE = 16 << 20  # bytes in one input line (and the largest message accepted back)
QUEUED_LINES = 64  # lines read ahead of the sending


class BadLine(Exception):
    """An input line that cannot become a message: ``str()`` says which and why."""


def encode_line(line: bytes, encoding: str, number: int) -> tuple[WSMsgType, bytes]:
    """The message for one input line (its newline already removed)."""
    if encoding == "text":
        try:
            line.decode("utf-8")
        except UnicodeDecodeError:
            raise BadLine(f"input line {number} is not UTF-8 (use --binary)") from None
        return WSMsgType.TEXT, line
    if encoding == "raw":
        return WSMsgType.BINARY, line
    try:
        if encoding == "base64":
            return WSMsgType.BINARY, base64.b64decode(line.strip(), validate=True)
        return WSMsgType.BINARY, bytes.fromhex(line.decode("ascii"))
    except (binascii.Error, ValueError):
        raise BadLine(f"input line {number} is not valid {encoding}") from None


def decode_message(kind: WSMsgType, data: bytes, encoding: str) -> bytes:
    """The output line (without its newline) for a message received."""
    if kind is WSMsgType.TEXT:
        return data
    if encoding == "base64":
        return base64.b64encode(data)
    if encoding == "hex":
        return data.hex().encode("ascii")
    return data


class _LineReader:
    """Lines of a binary stream, read by a daemon thread, at most QUEUED_LINES ahead.

    A daemon thread, not the loop's executor: a read blocked on a terminal must not
    keep the program from exiting.
    """

    def __init__(self, stream: BinaryIO, loop: asyncio.AbstractEventLoop) -> None:
        self._queue: asyncio.Queue[bytes | None] = asyncio.Queue()
        self._room = threading.Semaphore(QUEUED_LINES)
        self._loop = loop
        self._stream = stream
        threading.Thread(target=self._read, name="echo-client-stdin", daemon=True).start()

    def _read(self) -> None:
        try:
            while True:
                self._room.acquire()
                line = self._stream.readline(MAX_LINE + 1)
                self._loop.call_soon_threadsafe(self._queue.put_nowait, line or None)
                if not line:
                    return
        except (OSError, ValueError, RuntimeError):  # closed stream or loop
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._queue.put_nowait, None)

    async def next(self) -> bytes | None:
        """The next line with its newline, or None at the end of the input."""
        line = await self._queue.get()
        self._room.release()
        return line


class Pipe:
    """One pipe-mode run: lines out, answers back, then the verdict."""

    def __init__(self, settings: ClientSettings, stdin: BinaryIO, stdout: BinaryIO) -> None:
        assert settings.pipe is not None
        self.settings = settings
        self.options = settings.pipe
        self.stdin = stdin
        self.stdout = stdout
        self.dialer = Dialer(settings, heartbeat=settings.heartbeat_interval, max_message=MAX_LINE)
        backoff = Backoff(settings.reconnect_interval, settings.reconnect_max_interval)
        self.attempts = Attempts(backoff, settings.max_attempts)
        self.sent = 0
        self.received = 0
        self.input_ended = False
        self.bad_input = False
        self.stop = asyncio.Event()
        self._answered = asyncio.Event()
        self.failure: str | None = None

    async def run(self) -> int:
        self.dialer.warn_insecure()
        async with self.dialer.session() as session:
            link = await connect_retrying(self.dialer, session, self.attempts, self.stop)
            if link is None:
                return EXIT_LOST
            log.info(
                "connected to %s",
                link.where(),
                extra=event("connected", **link.fields()),
            )
            receiver = asyncio.create_task(self._receive(link), name="echo-client-pipe-in")
            try:
                status = await self._send_all(link, receiver)
            finally:
                await link.close()
                receiver.cancel()
                await asyncio.gather(receiver, return_exceptions=True)
        unanswered = max(0, self.sent - self.received)
        log.info(
            "pipe: sent=%d received=%d unanswered=%d",
            self.sent,
            self.received,
            unanswered,
            extra=event("summary", sent=self.sent, received=self.received, lost=unanswered),
        )
        if status != EXIT_OK:
            return status
        return EXIT_OK if unanswered == 0 and self.failure is None else EXIT_LOST

    async def _send_all(self, link: Link, receiver: asyncio.Task[None]) -> int:
        reader = _LineReader(self.stdin, asyncio.get_running_loop())
        stopper = asyncio.ensure_future(self.stop.wait())
        try:
            return await self._send_lines(link, receiver, reader, stopper)
        finally:
            stopper.cancel()

    async def _send_lines(
        self,
        link: Link,
        receiver: asyncio.Task[None],
        reader: _LineReader,
        stopper: asyncio.Task[Literal[True]],
    ) -> int:
        number = 0
        while not self.stop.is_set() and not receiver.done():
            getting = asyncio.ensure_future(reader.next())
            waiting: set[asyncio.Future[Any]] = {getting, receiver, stopper}
            await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
            if not getting.done():
                getting.cancel()
                break  # the connection ended first, or a signal came
            line = getting.result()
            if line is None:
                self.input_ended = True
                break
            number += 1
            try:
                if len(line) > MAX_LINE:
                    raise BadLine(f"input line {number} is longer than {MAX_LINE} bytes")
                kind, payload = encode_line(line.removesuffix(b"\n"), self.options.encoding, number)
            except BadLine as error:
                # What was sent still gets its answers; nothing more is sent.
                log.error("%s; nothing more is sent", error, extra=event("bad_input", line=number))
                self.bad_input = True
                self.input_ended = True
                break
            try:
                await link.ws.send_frame(payload, kind)
            except (ConnectionError, aiohttp.ClientError):
                break  # the receiver says why
            self.sent += 1
            emit(
                "sent",
                f"sent {kind.name.lower()} {len(payload)}B",
                logging.DEBUG,
                seq=self.sent,
                kind=kind.name.lower(),
                size=len(payload),
            )
        if self.input_ended and not receiver.done():
            self._answered.clear()
            if self.received < self.sent:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wait_answers(receiver), self.options.wait)
        if not self.input_ended:
            log.warning(
                "stopped after %d line(s) of input: %s",
                self.sent,
                self.failure or "interrupted",
                extra=event("incomplete", sent=self.sent),
            )
            return EXIT_LOST
        return EXIT_FATAL if self.bad_input else EXIT_OK

    async def _wait_answers(self, receiver: asyncio.Task[None]) -> None:
        while self.received < self.sent and not receiver.done():
            waiter = asyncio.ensure_future(self._answered.wait())
            await asyncio.wait({waiter, receiver}, return_when=asyncio.FIRST_COMPLETED)
            waiter.cancel()
            self._answered.clear()

    async def _receive(self, link: Link) -> None:
        encoding = self.options.encoding
        while True:
            msg = await link.receive()
            if msg.type in (WSMsgType.TEXT, WSMsgType.BINARY):
                data: bytes = msg.data
                self.received += 1
                self._answered.set()
                if self.settings.json:
                    self._emit_received(msg.type, data)
                else:
                    self.stdout.write(decode_message(msg.type, data, encoding) + b"\n")
                    self.stdout.flush()
                continue
            if msg.type is WSMsgType.CLOSING:
                return  # our own close
            if msg.type is WSMsgType.CLOSE:
                code, reason = close_description(msg.data, msg.extra)
            else:
                code, reason = close_description(link.ws.close_code, None)
            self.failure = f"connection closed: code={code} {reason}"
            level = logging.INFO if self.input_ended else logging.WARNING
            log.log(
                level, "%s", self.failure, extra=event("disconnected", code=code, reason=reason)
            )
            return

    def _emit_received(self, kind: WSMsgType, data: bytes) -> None:
        fields: dict[str, object] = {"seq": self.received, "kind": kind.name.lower()}
        fields["size"] = len(data)
        if kind is WSMsgType.TEXT:
            fields["text"] = data.decode("utf-8", "replace")
        else:
            fields["base64"] = base64.b64encode(data).decode("ascii")
        emit("received", f"received {kind.name.lower()} {len(data)}B", logging.DEBUG, **fields)


def run_pipe(settings: ClientSettings) -> int:
    """``echo-client --pipe``: the exit status."""
    pipe = Pipe(settings, sys.stdin.buffer, sys.stdout.buffer)
    try:
        with asyncio.Runner(loop_factory=loop_factory()) as runner:
            return runner.run(_until_signal(pipe))
    except FatalError as error:
        return report_fatal(error)


async def _until_signal(pipe: Pipe) -> int:
    def stop(drain: bool) -> None:
        pipe.stop.set()

    return await run_until_signal(pipe.run(), stop, pipe.stop.is_set)
