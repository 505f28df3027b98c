"""The default mode: a stream of generated messages, every echo checked, nothing lost.

``EchoClient(settings).run()`` keeps one WebSocket open: on each connection the
unanswered messages of the previous one are sent again first, then new ones (one every
MESSAGE_INTERVAL, or as many as the window allows in load mode's ``--in-flight``);
nothing is produced while disconnected. Any loss (server gone, close frame, network
error, missed heartbeat pongs) leads to a reconnect after an exponential back-off with
jitter; HTTP 429 and 503 are retried no sooner than their Retry-After. The back-off and
the attempt count start again once a connection has carried an echo (or stayed up
RECONNECT_MAX_INTERVAL). Refusals that retrying cannot change, and running out of
RECONNECT_MAX_ATTEMPTS, raise a :class:`~echo.client.errors.FatalError`.

Load mode runs many of these at once on one ClientSession, with a shared message budget
and one round-trip histogram (``session``, ``budget`` and ``stats.rtt``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import WSMsgType

from echo.client.backoff import Attempts, Backoff
from echo.client.dialer import (
    ConnectFailed,
    Dialer,
    Link,
    close_description,
    connect_retrying,
)
from echo.client.errors import GaveUp
from echo.client.payloads import Payloads
from echo.client.tracker import EchoTracker, Kind, Match, Stats
from echo.config import MAX_IN_FLIGHT, ClientSettings
from echo.logs import event
from echo.text import preview

log = logging.getLogger("echo.client")

DRAIN_TIMEOUT = 5.0  # on stop, how long to wait for the echoes of messages in flight
MAX_IN_FLIGHT_BYTES = 64 << 20

_OPCODES = {Kind.TEXT: WSMsgType.TEXT, Kind.BINARY: WSMsgType.BINARY}
KINDS = {WSMsgType.TEXT: Kind.TEXT, WSMsgType.BINARY: Kind.BINARY}


class Budget:
    """How many messages may still be produced, shared by the clients of a load test.

    ``total`` 0 means no limit.
    """

    def __init__(self, total: int) -> None:
        self.total = total
        self.taken = 0

    @property
    def exhausted(self) -> bool:
        return self.total > 0 and self.taken >= self.total

    def take(self) -> bool:
        if self.exhausted:
            return False
        self.taken += 1
        return True


class EchoClient:
    """Keeps a WebSocket to ``settings.url`` open, sending messages and checking echoes.

    ``run()`` returns the :class:`Stats` when the client has stopped: after
    :meth:`stop`, once ``message_count`` messages have been answered, or at the end of
    ``duration``. ``stats`` can be read at any time.

    Load mode passes a shared ``session`` and ``budget``, its pacing (``interval``,
    ``in_flight``) and ``verbose=False`` (no line per message or connection).
    """

    def __init__(
        self,
        settings: ClientSettings,
        *,
        rng: random.Random | None = None,
        session: aiohttp.ClientSession | None = None,
        dialer: Dialer | None = None,
        budget: Budget | None = None,
        stats: Stats | None = None,
        interval: float | None = None,
        in_flight: int | None = None,
        start_delay: float = 0.0,
        verbose: bool = True,
    ) -> None:
        self.settings = settings
        self.stats = stats or Stats()
        self._tracker = EchoTracker(self.stats)
        self._payloads = Payloads(settings.size, settings.binary, rng)
        backoff = Backoff(settings.reconnect_interval, settings.reconnect_max_interval, rng)
        self._attempts = Attempts(backoff, settings.max_attempts)
        self._dialer = dialer or Dialer(
            settings,
            heartbeat=settings.heartbeat_interval,
            max_message=self._payloads.largest,
        )
        self._session = session
        self._budget = budget or Budget(settings.message_count)
        self._interval = settings.message_interval if interval is None else interval
        self._closed_loop = in_flight is not None
        largest = max(1, self._payloads.largest)
        self._window = max(1, min(in_flight or MAX_IN_FLIGHT, MAX_IN_FLIGHT_BYTES // largest))
        self._start_delay = start_delay
        self._verbose = verbose
        self._info = logging.INFO if verbose else logging.DEBUG
        self._stopping = False
        self._hurry = False  # a hard stop: do not wait long for the server's close frame
        self._stop_requested = asyncio.Event()  # no new messages, no new connections
        self._finished = asyncio.Event()  # close now: all answered, drain over, or hard stop
        self._room = asyncio.Event()  # an echo freed a place in the window
        self._drain_timer: asyncio.TimerHandle | None = None
        self._running = False
        self._echoes_here = 0  # echoes on the current connection
        self._down_since: float | None = None
        self.connected = False

    @property
    def stopping(self) -> bool:
        return self._stopping

    @property
    def unanswered(self) -> int:
        """Messages sent and not yet echoed (sent again after a reconnect)."""
        return len(self._tracker.pending)

    def stop(self, *, drain: bool = True) -> None:
        """Stop producing and reconnecting; close once the messages in flight are answered.

        With ``drain`` (the first SIGINT/SIGTERM) the client waits up to DRAIN_TIMEOUT
        for the echoes of messages already sent, if it is connected; without it (a
        second signal) it closes at once.
        """
        if not self._stopping:
            self._stopping = True
            self._stop_requested.set()
            if drain and self._running:
                loop = asyncio.get_running_loop()
                self._drain_timer = loop.call_later(DRAIN_TIMEOUT, self._finished.set)
        if not drain:
            self._hurry = True
            self._finished.set()
        self._check_finished()

    def _production_over(self) -> bool:
        return self._stopping or self._budget.exhausted

    def _check_finished(self) -> None:
        if self._production_over() and not self._tracker.pending:
            self._finished.set()

    # -- the connection loop ----------------------------------------------------------

    async def run(self) -> Stats:
        """Connect, echo and reconnect until stopped; a FatalError ends it early."""
        if self._running:
            raise RuntimeError("EchoClient.run() is already running")
        self._running = True
        loop = asyncio.get_running_loop()
        settings = self.settings
        if self._verbose:
            self._log_start()
            self._dialer.warn_insecure()
        duration = None
        if settings.duration is not None:
            duration = loop.call_later(settings.duration, self.stop)
        try:
            if self._start_delay:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop_requested.wait(), self._start_delay)
            async with self._use_session() as session:
                await self._connection_loop(session)
        finally:
            if duration is not None:
                duration.cancel()
            if self._drain_timer is not None:
                self._drain_timer.cancel()
                self._drain_timer = None
            self._running = False
        return self.stats

    def _log_start(self) -> None:
        settings = self.settings
        options = self._dialer.describe()
        log.info(
            "client for %s%s: a %s message every %g ms%s",
            settings.url,
            f" ({options})" if options else "",
            self._payloads.kind.value,
            settings.message_interval * 1000,
            f", {settings.message_count} in all" if settings.message_count else "",
            extra=event(
                "start",
                url=settings.url,
                origin=settings.origin,
                kind=self._payloads.kind.value,
                interval=settings.message_interval,
                count=settings.message_count,
            ),
        )

    @contextlib.asynccontextmanager
    async def _use_session(self) -> AsyncIterator[aiohttp.ClientSession]:
        if self._session is not None:
            yield self._session
            return
        async with self._dialer.session() as session:
            yield session

    async def _connection_loop(self, session: aiohttp.ClientSession) -> None:
        loop = asyncio.get_running_loop()
        attempts = self._attempts
        while not (self._stopping or self._finished.is_set()):
            link = await connect_retrying(
                self._dialer,
                session,
                attempts,
                self._stop_requested,
                self._info,
                self._count_failure,
            )
            if link is None:
                break  # stopped while connecting or waiting
            if self._stopping and not self._tracker.pending:
                await link.close(hurry=True)
                break
            opened = loop.time()
            reason = await self._converse(link)
            if self._echoes_here or loop.time() - opened >= self.settings.healthy_after:
                attempts.healthy()
            self._down_since = loop.time()
            if self._stopping or self._finished.is_set():
                break
            if attempts.exhausted:
                raise GaveUp(attempts.number, self.settings.url, reason)
            delay = attempts.next_delay()
            log.log(
                self._info,
                "reconnecting in %.3f s",
                delay,
                extra=event("backoff", delay=round(delay, 3)),
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop_requested.wait(), delay)

    def _count_failure(self, failure: ConnectFailed) -> None:
        self.stats.failed_attempts += 1
        if failure.busy:
            self.stats.refusals += 1

    async def _converse(self, link: Link) -> str:
        """Run one connection until it is lost or the client is finished; say why it ended."""
        loop = asyncio.get_running_loop()
        stats = self.stats
        stats.connections += 1
        if stats.connections > 1:
            stats.reconnects += 1
        self.connected = True
        self._echoes_here = 0
        opened = loop.time()
        self._log_connected(link, opened)
        sender = asyncio.create_task(self._send(link), name="echo-client-send")
        receiver = asyncio.create_task(self._receive(link), name="echo-client-receive")
        finished = asyncio.create_task(self._finished.wait(), name="echo-client-finished")
        try:
            waiting = {sender, receiver, finished}
            while True:
                done, waiting = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
                if receiver in done or finished in done:
                    break
                if sender.exception() is not None:
                    break  # a bug, raised below
        finally:
            self.connected = False
            sender.cancel()
            await asyncio.gather(sender, return_exceptions=True)
            await link.close(hurry=self._hurry)
            for task in (receiver, finished):
                task.cancel()
            results = await asyncio.gather(sender, receiver, finished, return_exceptions=True)
        for result in results:
            if isinstance(result, Exception):
                raise result
        up = loop.time() - opened
        ended = results[1]
        if isinstance(ended, tuple):
            code, reason, detail = ended
            stats.dropped += 1
            log.warning(
                "connection lost: %s (code=%d %s) after %.3f s up",
                detail,
                code,
                reason,
                up,
                extra=event(
                    "disconnected", code=code, reason=reason, detail=detail, up_ms=round(up * 1000)
                ),
            )
            return detail
        log.log(
            self._info,
            "disconnected: closed by the client (code=1000) after %.3f s up",
            up,
            extra=event(
                "disconnected", code=1000, reason="closed by the client", up_ms=round(up * 1000)
            ),
        )
        return "closed by the client"

    def _log_connected(self, link: Link, now: float) -> None:
        stats = self.stats
        fields = link.fields()
        fields["connection"] = stats.connections
        fields["resend"] = len(self._tracker.pending)
        down = ""
        name = "connected"
        if self._down_since is not None:
            downtime = now - self._down_since
            fields["downtime_ms"] = round(downtime * 1000)
            down = f" after {downtime:.3f} s down"
            name = "reconnected"
        extras = []
        if link.subprotocol:
            extras.append(f"subprotocol {preview(link.subprotocol, 60)}")
        if link.info is not None:
            extras.append("server info received")
        log.log(
            self._info,
            "connected to %s (connection %d, %d message(s) to send again)%s%s",
            link.where(),
            stats.connections,
            len(self._tracker.pending),
            down,
            "".join(f"; {extra}" for extra in extras),
            extra=event(name, **fields),
        )

    async def _send(self, link: Link) -> None:
        """Send the unanswered messages again, then new ones as the pacing allows."""
        ws = link.ws
        loop = asyncio.get_running_loop()
        tracker = self._tracker
        events = log.isEnabledFor(logging.DEBUG) and self._verbose
        try:
            for message in tracker.to_resend():
                tracker.resending(message, time.perf_counter())
                await ws.send_frame(message.payload, _OPCODES[message.kind])
            interval = self._interval
            next_at = loop.time()
            while not self._production_over():
                if len(tracker.pending) < self._window:
                    if not self._budget.take():
                        break
                    payload = self._payloads.make()
                    message = tracker.produce(self._payloads.kind, payload, time.perf_counter())
                    await ws.send_frame(payload, _OPCODES[message.kind])
                    if events:
                        log.debug(
                            "sent seq=%d %s %dB",
                            message.seq,
                            message.kind.value,
                            len(payload),
                            extra=event(
                                "sent", seq=message.seq, kind=message.kind.value, size=len(payload)
                            ),
                        )
                    if self._closed_loop:
                        continue
                elif self._closed_loop:
                    self._room.clear()
                    await self._room.wait()
                    continue
                else:
                    log.debug("%d messages unanswered: not sending", len(tracker.pending))
                next_at = max(next_at + interval, loop.time())
                await asyncio.sleep(next_at - loop.time())
            self._check_finished()  # the budget may have run out with nothing pending here
        except (ConnectionError, aiohttp.ClientError) as error:
            # The receiver notices the loss too; unsent messages stay pending.
            log.debug("send failed: %s", preview(str(error)))

    async def _receive(self, link: Link) -> tuple[int, str, str] | None:
        """Check every echo until the connection ends; say why it ended (None: finished)."""
        while True:
            msg = await link.receive()
            kind = KINDS.get(msg.type)
            if kind is not None:
                self._on_echo(kind, msg.data)
                continue
            ws = link.ws
            if msg.type is WSMsgType.CLOSING or self._finished.is_set():
                return None  # our own close, under way in _converse
            if msg.type is WSMsgType.CLOSE:
                code, reason = close_description(msg.data, msg.extra)
                return code, reason, f"server closed with {code} {reason}"
            if msg.type is WSMsgType.ERROR:
                error = msg.data
                if isinstance(error, aiohttp.ServerTimeoutError):
                    return 1006, "abnormal", f"heartbeat: {preview(str(error))}"
                return 1006, "abnormal", f"error: {preview(str(error) or type(error).__name__)}"
            code, reason = close_description(ws.close_code, None)
            return code, reason, "connection dropped"

    def _on_echo(self, kind: Kind, data: bytes) -> None:
        result = self._tracker.receive(kind, data, time.perf_counter())
        message = result.message
        self._room.set()
        if result.match is Match.ECHOED and message is not None and result.rtt is not None:
            self._echoes_here += 1
            if self._verbose:
                rtt_ms = round(result.rtt * 1000, 3)
                log.info(
                    "echo seq=%d %s %dB%s",
                    message.seq,
                    kind.value,
                    len(data),
                    f" rtt={rtt_ms:.3f}ms" if log.isEnabledFor(logging.DEBUG) else "",
                    extra=event(
                        "echo", seq=message.seq, kind=kind.value, size=len(data), rtt_ms=rtt_ms
                    ),
                )
        elif result.match is Match.MISMATCHED and message is not None:
            log.warning(
                "mismatch seq=%d: sent %s %s, got %s %s",
                message.seq,
                message.kind.value,
                preview(message.payload, 60),
                kind.value,
                preview(data, 60),
                extra=event(
                    "mismatch",
                    seq=message.seq,
                    sent_kind=message.kind.value,
                    sent_size=len(message.payload),
                    kind=kind.value,
                    size=len(data),
                ),
            )
        else:
            log.warning(
                "unexpected %s message %s",
                kind.value,
                preview(data, 60),
                extra=event("unexpected", kind=kind.value, size=len(data)),
            )
        self._check_finished()
