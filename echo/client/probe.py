"""The idle-timeout probe (``--probe-idle MAX``): after how long does a path cut a silent
WebSocket?

Proxies and load balancers close connections that carry nothing for a while, often
without a close frame. The probe opens :data:`PER_ROUND` connections at once, each of
which stays silent for its own duration (it sends nothing and pings nothing; it answers
pings, but a ping from the server is traffic that keeps the path awake: it is counted
and reported, and the verdict says the path was not idle), then sends one message and
waits for its echo. A connection that echoes survived its idle time; one that is closed while idle
was cut, and the time of the cut is itself a measurement; one whose message gets no
answer within :data:`ANSWER_WAIT` was dropped silently.

Round 1 spreads the durations geometrically up to MAX (MAX/128 ... MAX); later rounds
spread them evenly between the longest idle that survived and the shortest that did
not, until the two are within :data:`PRECISION` of each other or :data:`MAX_ROUNDS`
rounds have run. Each round lasts at most its longest duration plus the answer wait
and a handshake, so the whole probe is bounded, and the bound is printed before it
starts. The result: the longest idle that survived, the first that did not, how that
connection ended (a close frame and its code, or the TCP connection closed without
one), and an estimate (the observed time of the cut, or the middle of the interval).

Against this echo server add ``heartbeat=off`` to the URL where the server offers
that test control; otherwise its pings (every HEARTBEAT_INTERVAL, 30 s by default) keep
the path alive and the probe reports them.
"""

from __future__ import annotations

import asyncio
import logging
import math
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import WSMsgType

from echo.client.dialer import ConnectFailed, Dialer, close_description
from echo.client.errors import FatalError
from echo.client.events import emit
from echo.client.running import EXIT_FATAL, EXIT_OK, report_fatal, run_until_signal
from echo.config import ClientSettings
from echo.eventloop import loop_factory
from echo.text import preview

log = logging.getLogger("echo.client")

PER_ROUND = 8  # connections per round
MAX_ROUNDS = 4
PRECISION = 0.05  # stop once the interval is within 5 % of its upper end
ANSWER_WAIT = 5.0  # after the idle time, how long the probe message may take to come back
FIRST_SPREAD = 2**7  # round 1 starts at MAX / 128


@dataclass(frozen=True)
class Outcome:
    """One probe connection: how long it was meant to stay idle, and what happened."""

    idle: float  # the silence asked for, in seconds
    survived: bool
    how: str  # how it ended when it did not survive ("" if it did)
    cut_after: float | None = None  # idle time when the path closed it, if seen
    pings: int = 0  # pings (or messages) from the server: the silence was broken
    error: str = ""  # the probe could not run (no connection)

    @property
    def failed_at(self) -> float:
        """The idle time known to be too long: the observed cut, else the duration."""
        return self.idle if self.cut_after is None else min(self.idle, self.cut_after)


@dataclass
class Verdict:
    """What the rounds found so far."""

    survived: float = 0.0  # the longest idle that survived
    survivor: Outcome | None = None
    pings: int = 0  # pings and messages the server sent while the probes were silent
    cut: Outcome | None = None  # the outcome with the shortest idle that did not survive
    inconsistent: str = ""

    @property
    def first_cut(self) -> float | None:
        return None if self.cut is None else self.cut.failed_at

    def add(self, outcome: Outcome) -> None:
        self.pings += outcome.pings
        if outcome.error:
            return
        if outcome.survived:
            if outcome.idle > self.survived:
                self.survived, self.survivor = outcome.idle, outcome
        elif self.cut is None or outcome.failed_at < self.cut.failed_at:
            self.cut = outcome
        first = self.first_cut
        if first is not None and self.survived > first * (1 + PRECISION):
            self.inconsistent = (
                f"an idle of {self.survived:.3f} s survived but one of {first:.3f} s did not: "
                "the path does not cut at one fixed time (several backends or proxies?)"
            )

    def done(self) -> bool:
        first = self.first_cut
        if self.inconsistent or first is None:
            return bool(self.inconsistent)
        return first - self.survived <= PRECISION * first

    def estimate(self) -> float | None:
        cut = self.cut
        if cut is None:
            return None
        if cut.cut_after is not None and cut.cut_after >= self.survived:
            return cut.cut_after
        return (self.survived + cut.failed_at) / 2


def first_round(longest: float) -> list[float]:
    """Durations spread geometrically from longest/128 up to longest."""
    return [longest / 2 ** (PER_ROUND - 1 - i) for i in range(PER_ROUND)]


def next_round(low: float, high: float) -> list[float]:
    """Durations spread evenly strictly between ``low`` and ``high``."""
    step = (high - low) / (PER_ROUND + 1)
    return [low + step * (i + 1) for i in range(PER_ROUND)]


def time_bound(longest: float, handshake: float) -> float:
    """The most the whole probe can take, in seconds."""
    return MAX_ROUNDS * (longest + ANSWER_WAIT + handshake)


def _ended(msg: aiohttp.WSMessage | object, ws: aiohttp.ClientWebSocketResponse[bool]) -> str:
    kind = getattr(msg, "type", None)
    if kind is WSMsgType.CLOSE:
        code, reason = close_description(getattr(msg, "data", None), getattr(msg, "extra", None))
        return f"close frame {code} {reason}"
    error = ws.exception()
    if error is not None:
        what = preview(str(error) or type(error).__name__)
        return f"connection error ({what}) without a close frame (1006)"
    return "TCP closed without a close frame (1006)"


class IdleProbe:
    """The rounds of probe connections and the verdict."""

    def __init__(self, settings: ClientSettings) -> None:
        assert settings.probe_idle is not None
        self.settings = settings
        self.longest = settings.probe_idle
        # Silent: no heartbeat of its own; pings answered by hand, to see them.
        self.dialer = Dialer(settings, heartbeat=None, autoping=False)
        self.verdict = Verdict()
        self.stopped = asyncio.Event()

    def stop(self, drain: bool = True) -> None:
        self.stopped.set()

    async def run(self) -> Verdict:
        settings = self.settings
        bound = time_bound(self.longest, settings.heartbeat_interval)
        emit(
            "probe_start",
            f"probing the idle timeout of {settings.url} up to {self.longest:g} s: "
            f"{PER_ROUND} connections per round, at most {MAX_ROUNDS} rounds, "
            f"at most {_duration(bound)} in all",
            url=settings.url,
            max_s=self.longest,
            per_round=PER_ROUND,
            max_rounds=MAX_ROUNDS,
            bound_s=round(bound, 3),
        )
        self.dialer.warn_insecure()
        durations = first_round(self.longest)
        async with self.dialer.session(connections=PER_ROUND) as session:
            for number in range(1, MAX_ROUNDS + 1):
                outcomes = await self._round(session, durations)
                if outcomes is None:
                    break  # stopped
                self._report_round(number, outcomes)
                errors = [o for o in outcomes if o.error]
                if len(errors) == len(outcomes):
                    raise ProbeFailed(f"no probe connection could be opened: {errors[0].error}")
                for outcome in outcomes:
                    self.verdict.add(outcome)
                verdict = self.verdict
                if verdict.done() or verdict.first_cut is None:
                    break
                durations = next_round(verdict.survived, verdict.first_cut)
        self._report_verdict()
        return self.verdict

    async def _round(
        self, session: aiohttp.ClientSession, durations: list[float]
    ) -> list[Outcome] | None:
        probes = [asyncio.create_task(self._probe(session, d)) for d in durations]
        waiting: set[asyncio.Future[Any]] = {
            asyncio.ensure_future(asyncio.gather(*probes)),
            asyncio.ensure_future(self.stopped.wait()),
        }
        _, pending = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
        for future in pending:
            future.cancel()
        if self.stopped.is_set():
            for probe in probes:
                probe.cancel()
            await asyncio.gather(*probes, return_exceptions=True)
            return None
        return [probe.result() for probe in probes]

    async def _probe(self, session: aiohttp.ClientSession, idle: float) -> Outcome:
        loop = asyncio.get_running_loop()
        try:
            link = await self.dialer.connect(session)
        except ConnectFailed as failure:
            return Outcome(idle, False, "", error=failure.reason)
        ws = link.ws
        pings = 0
        try:
            # The idle time counts from the handshake: a ping (or message) from the server
            # breaks the silence but does not extend the wait, so the probe stays bounded;
            # it is counted and reported instead.
            opened = loop.time()
            quiet_since = opened
            while (remaining := idle - (loop.time() - opened)) > 0:
                try:
                    msg = await ws.receive(timeout=remaining)
                except TimeoutError:
                    break
                if msg.type is WSMsgType.PING:
                    await ws.pong(msg.data)
                    pings += 1
                    quiet_since = loop.time()
                    continue
                if msg.type in (WSMsgType.TEXT, WSMsgType.BINARY, WSMsgType.PONG):
                    pings += 1
                    quiet_since = loop.time()
                    continue
                return Outcome(idle, False, _ended(msg, ws), loop.time() - quiet_since, pings)
            token = f"idle-probe {idle:.6f}".encode()
            try:
                await ws.send_frame(token, WSMsgType.TEXT)
                while True:
                    msg = await ws.receive(timeout=ANSWER_WAIT)
                    if msg.type is WSMsgType.PING:
                        await ws.pong(msg.data)
                        continue
                    if msg.type is WSMsgType.TEXT and msg.data == token:
                        return Outcome(idle, True, "", pings=pings)
                    if msg.type in (WSMsgType.TEXT, WSMsgType.BINARY, WSMsgType.PONG):
                        continue
                    return Outcome(
                        idle, False, _ended(msg, ws) + " when the probe was sent", None, pings
                    )
            except TimeoutError:
                return Outcome(
                    idle,
                    False,
                    f"no answer within {ANSWER_WAIT:g} s (dropped silently)",
                    None,
                    pings,
                )
            except (ConnectionError, aiohttp.ClientError) as error:
                # The path had closed the connection (no close frame came) just before.
                why = preview(str(error))
                how = f"connection closed without a close frame (1006), seen when sending ({why})"
                return Outcome(idle, False, how, None, pings)
        finally:
            await link.close(hurry=True)

    def _report_round(self, number: int, outcomes: list[Outcome]) -> None:
        parts = []
        for outcome in outcomes:
            if outcome.error:
                parts.append(f"{outcome.idle:.3f} s: could not connect ({outcome.error})")
            elif outcome.survived:
                parts.append(f"{outcome.idle:.3f} s: survived")
            elif outcome.cut_after is not None:
                parts.append(f"{outcome.idle:.3f} s: cut after {outcome.cut_after:.3f} s idle")
            else:
                parts.append(f"{outcome.idle:.3f} s: {outcome.how}")
        pinged = sum(o.pings for o in outcomes)
        emit(
            "probe_round",
            f"round {number}: " + "; ".join(parts),
            round=number,
            outcomes=[
                {
                    "idle_s": round(o.idle, 3),
                    "survived": o.survived,
                    "how": o.how or None,
                    "cut_after_s": None if o.cut_after is None else round(o.cut_after, 3),
                    "error": o.error or None,
                }
                for o in outcomes
            ],
            server_pings=pinged,
        )
        if pinged:
            log.warning(
                "the server sent %d ping(s) or message(s) during round %d: that is traffic, "
                "which keeps the path awake; add heartbeat=off to the URL (echo server with "
                "test controls) or raise its HEARTBEAT_INTERVAL",
                pinged,
                number,
            )

    def _report_verdict(self) -> None:
        verdict = self.verdict
        fields: dict[str, object] = {
            "url": self.settings.url,
            "longest_survived_s": round(verdict.survived, 3),
            "first_cut_s": None if verdict.first_cut is None else round(verdict.first_cut, 3),
            "how": None if verdict.cut is None else verdict.cut.how,
            "estimate_s": None if verdict.estimate() is None else round(verdict.estimate() or 0, 3),
            "inconsistent": verdict.inconsistent or None,
        }
        if verdict.inconsistent:
            message = f"idle probe: inconsistent: {verdict.inconsistent}"
        elif verdict.cut is None:
            message = (
                f"idle probe: no cut up to {self.longest:g} s: every connection idle that "
                f"long survived ({verdict.survived:.3f} s)"
            )
        else:
            estimate = verdict.estimate() or math.nan
            message = (
                f"idle probe: {verdict.survived:.3f} s idle survived; the first cut came at "
                f"{verdict.cut.failed_at:.3f} s ({verdict.cut.how}); the path's idle timeout "
                f"is about {estimate:.3f} s"
            )
        if verdict.pings:
            fields["server_pings"] = verdict.pings
            message += (
                f"; but the server sent {verdict.pings} ping(s) or message(s) while the "
                "probes were silent, so the path was not idle that long (see above)"
            )
        if self.settings.json:
            emit("probe", message, **fields)
        else:
            print(message, flush=True)


class ProbeFailed(FatalError):
    """The probe could not measure anything."""


def _duration(seconds: float) -> str:
    minutes, rest = divmod(math.ceil(seconds), 60)
    return f"{minutes} min {rest} s" if minutes else f"{rest} s"


def run_probe(settings: ClientSettings) -> int:
    """``echo-client --probe-idle MAX``: the exit status."""
    probe = IdleProbe(settings)
    try:
        with asyncio.Runner(loop_factory=loop_factory()) as runner:
            runner.run(run_until_signal(probe.run(), probe.stop, probe.stopped.is_set))
    except FatalError as error:
        return report_fatal(error)
    return EXIT_OK if not probe.stopped.is_set() else EXIT_FATAL
