"""Load mode (``--connections N``): N checked connections at once against one URL.

Each connection is an :class:`~echo.client.stream.EchoClient` (every echo checked,
nothing lost across reconnects) on one shared ClientSession. Pacing:

- default: each connection sends one message every MESSAGE_INTERVAL, as the default
  mode does, their starts spread over one interval;
- ``--rate R``: R messages per second in all, each connection sending every N/R s,
  spread evenly;
- ``--in-flight K``: each connection keeps K messages unanswered and sends the next as
  soon as an echo arrives (closed loop: as fast as the path allows).

It runs until SIGINT/SIGTERM, ``--duration``, or ``--count`` messages in all, then
waits (at most 5 s) for the echoes due. On a terminal one line is redrawn every second
(messages per second, p50/p99 round trip over that second, connections open, errors,
reconnects); with ``--json`` the same as ``progress`` events; otherwise an INFO line
every 10 s. At the end one summary line: throughput (echoes per second over the whole
run), round-trip percentiles p50, p90, p99, p99.9 and the maximum, from one fixed-size
histogram (:mod:`echo.client.histogram`), and every count of the default mode's summary
plus failed attempts and dropped connections: errors are counted, never averaged away.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from typing import TextIO

from echo.client.dialer import Dialer
from echo.client.errors import FatalError
from echo.client.events import emit
from echo.client.histogram import Histogram
from echo.client.payloads import Payloads
from echo.client.running import EXIT_LOST, EXIT_OK, report_fatal, run_until_signal
from echo.client.stream import Budget, EchoClient
from echo.client.tracker import Stats, ms_or_none
from echo.config import ClientSettings
from echo.eventloop import loop_factory

log = logging.getLogger("echo.client")

TICK = 1.0  # seconds between progress updates
QUIET_TICKS = 10  # without a terminal: one progress line every this many ticks


class LoadTest:
    """The connections, their shared budget and histogram, and the progress display."""

    def __init__(self, settings: ClientSettings, display: TextIO | None = None) -> None:
        assert settings.load is not None
        self.settings = settings
        self.options = settings.load
        self.display = display  # a terminal to redraw the progress line on, or None
        self.rtt = Histogram()
        self.budget = Budget(settings.message_count)
        self.clients: list[EchoClient] = []
        self.started = 0.0
        self.elapsed = 0.0
        self._stopping = False
        self._last_line = 0

    @property
    def stopping(self) -> bool:
        return self._stopping

    def stop(self, drain: bool = True) -> None:
        self._stopping = True
        for client in self.clients:
            client.stop(drain=drain)

    def pacing(self) -> tuple[float, int | None, float]:
        """Each connection's interval, its window for --in-flight, and the spread of
        the connections' starts."""
        n = self.options.connections
        if self.options.in_flight is not None:
            return 0.0, self.options.in_flight, 0.0
        if self.options.rate is not None:
            interval = n / self.options.rate
            return interval, None, interval / n
        interval = self.settings.message_interval
        return interval, None, interval / n

    async def run(self) -> Stats:
        settings = self.settings
        n = self.options.connections
        interval, in_flight, spread = self.pacing()
        largest = Payloads(settings.size, settings.binary).largest
        dialer = Dialer(settings, heartbeat=settings.heartbeat_interval, max_message=largest)
        dialer.warn_insecure()
        pace = (
            f"{in_flight} in flight each"
            if in_flight is not None
            else f"{n / interval:.6g} messages/s in all"
        )
        emit(
            "start",
            f"load: {n} connections to {settings.url}, {pace}"
            + (f", {settings.message_count} messages" if settings.message_count else "")
            + (f", for {settings.duration:g} s" if settings.duration else ""),
            url=settings.url,
            connections=n,
            interval=interval,
            in_flight=in_flight,
            count=settings.message_count,
            duration=settings.duration,
        )
        loop = asyncio.get_running_loop()
        self.started = loop.time()
        async with dialer.session(connections=n) as session:
            self.clients = [
                EchoClient(
                    settings,
                    session=session,
                    dialer=dialer,
                    budget=self.budget,
                    stats=Stats(rtt=self.rtt),
                    interval=interval,
                    in_flight=in_flight,
                    start_delay=i * spread,
                    verbose=False,
                )
                for i in range(n)
            ]
            if self._stopping:
                self.stop()
            runs = [
                asyncio.create_task(c.run(), name=f"echo-load-{i}")
                for i, c in enumerate(self.clients)
            ]
            progress = asyncio.create_task(self._progress(), name="echo-load-progress")
            try:
                await asyncio.wait(runs, return_when=asyncio.FIRST_EXCEPTION)
                failed = [r for r in runs if r.done() and r.exception() is not None]
                if failed:
                    self.stop(drain=False)
                await asyncio.gather(*runs, return_exceptions=True)
            finally:
                progress.cancel()
                await asyncio.gather(progress, return_exceptions=True)
                self._clear_line()
        self.elapsed = loop.time() - self.started
        for run in runs:
            error = run.exception()
            if error is not None:
                raise error
        return self.totals()

    def totals(self) -> Stats:
        total = Stats(rtt=self.rtt)
        for client in self.clients:
            total.add(client.stats)
        return total

    # -- progress -------------------------------------------------------------------------

    async def _progress(self) -> None:
        loop = asyncio.get_running_loop()
        before = self.rtt.copy()
        ticks = 0
        last = loop.time()
        while True:
            await asyncio.sleep(TICK)
            ticks += 1
            now = loop.time()
            window = self.rtt.since(before)
            before = self.rtt.copy()
            rate = window.count / (now - last)
            last = now
            totals = self.totals()
            open_now = sum(1 for c in self.clients if c.connected)
            errors = totals.failed_attempts + totals.dropped + totals.mismatched
            p50, p99 = ms_or_none(window.percentile(50)), ms_or_none(window.percentile(99))
            line = (
                f"{now - self.started:6.1f} s  {rate:9.0f} msg/s  p50 {_ms(p50)}  p99 {_ms(p99)}"
                f"  open {open_now}/{self.options.connections}  errors {errors}"
                f"  reconnects {totals.reconnects}"
            )
            if self.settings.json:
                emit(
                    "progress",
                    line.strip(),
                    logging.DEBUG,
                    seconds=round(now - self.started, 3),
                    msgs_per_s=round(rate, 1),
                    rtt_p50_ms=p50,
                    rtt_p99_ms=p99,
                    open=open_now,
                    errors=errors,
                    reconnects=totals.reconnects,
                )
            elif self.display is not None:
                self.display.write("\r\x1b[K" + line)
                self.display.flush()
                self._last_line = len(line)
            elif ticks % QUIET_TICKS == 0:
                log.info("progress: %s", " ".join(line.split()))

    def _clear_line(self) -> None:
        if self.display is not None and self._last_line:
            self.display.write("\r\x1b[K")
            self.display.flush()

    def summary(self, totals: Stats) -> tuple[str, dict[str, object]]:
        """The final line and the same as JSON fields."""
        rtt = self.rtt
        seconds = max(self.elapsed, 1e-9)
        fields: dict[str, object] = {
            "connections": self.options.connections,
            "seconds": round(self.elapsed, 3),
            "sent": totals.sent,
            "echoed": totals.echoed,
            "lost": totals.lost,
            "resent": totals.resent,
            "mismatched": totals.mismatched,
            "reconnects": totals.reconnects,
            "failed_attempts": totals.failed_attempts,
            "dropped": totals.dropped,
            "msgs_per_s": round(totals.echoed / seconds, 1),
            "rtt_p50_ms": ms_or_none(rtt.percentile(50)),
            "rtt_p90_ms": ms_or_none(rtt.percentile(90)),
            "rtt_p99_ms": ms_or_none(rtt.percentile(99)),
            "rtt_p99.9_ms": ms_or_none(rtt.percentile(99.9)),
            "rtt_max_ms": ms_or_none(rtt.percentile(100)),
        }
        line = "summary " + " ".join(
            f"{name}={'nan' if value is None else value}" for name, value in fields.items()
        )
        return line, fields


def _ms(value: float | None) -> str:
    return "    -   " if value is None else f"{value:7.2f}ms"


def run_load(settings: ClientSettings) -> int:
    """``echo-client --connections N``: the exit status."""
    display = sys.stderr if sys.stderr.isatty() and not settings.json else None
    test = LoadTest(settings, display)
    try:
        with asyncio.Runner(loop_factory=loop_factory()) as runner:
            totals = runner.run(run_until_signal(test.run(), test.stop, lambda: test.stopping))
    except FatalError as error:
        totals = test.totals()
        if totals.sent:
            _report(test, totals)
        return report_fatal(error)
    _report(test, totals)
    return EXIT_OK if totals.clean else EXIT_LOST


def _report(test: LoadTest, totals: Stats) -> None:
    line, fields = test.summary(totals)
    if test.settings.json:
        emit("summary", line, **fields)
    else:
        print(line, flush=True)
