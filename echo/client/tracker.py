"""Bookkeeping of the echo client: what is in flight, what came back, the summary.

Sans-I/O: the client tells the tracker what it sent and received; the tracker decides
whether an echo matches, what must be sent again after a reconnect, and keeps the
counters of the summary line. Echoes on one connection come back in the order the
messages were sent on it, and after a reconnect the unanswered messages are sent again
first, in their order, so an echo always answers the oldest unanswered message: the
head of ``pending``. A message echoed on a lost connection was removed from ``pending``
when its echo arrived, so it is never sent again and never counted twice.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from enum import Enum

from echo.client.histogram import Histogram


class Kind(Enum):
    TEXT = "text"
    BINARY = "binary"


@dataclass(slots=True)
class Message:
    """One produced message; ``sent_at`` is the time of its latest (re-)send."""

    seq: int
    kind: Kind
    payload: bytes
    sent_at: float


class Match(Enum):
    ECHOED = "echoed"  # equal to the oldest unanswered message
    MISMATCHED = "mismatched"  # different kind or bytes; that message counts as answered
    UNEXPECTED = "unexpected"  # nothing was waiting for an echo


@dataclass(frozen=True, slots=True)
class EchoResult:
    match: Match
    message: Message | None
    rtt: float | None


@dataclass(slots=True)
class Stats:
    """The counters of the summary line, plus a few that only the library exposes."""

    sent: int = 0  # messages produced (first sends)
    echoed: int = 0  # correct echoes, each produced message at most once
    resent: int = 0  # sends of a message again after a reconnect
    mismatched: int = 0  # echoes that differed from what was sent, or came unasked
    reconnects: int = 0  # connections opened after the first one
    connections: int = 0  # connections opened in all
    refusals: int = 0  # handshakes answered 429 or 503
    unanswered: int = 0  # sent and neither echoed nor mismatched (yet): lost at the end
    failed_attempts: int = 0  # handshakes that failed (refusals included)
    dropped: int = 0  # connections lost other than by the client's own close
    rtt: Histogram = field(default_factory=Histogram)

    @property
    def lost(self) -> int:
        """Messages sent that were never answered; meaningful once the client stopped."""
        return self.unanswered

    @property
    def clean(self) -> bool:
        """Nothing lost and nothing mismatched: the run proved the echo path."""
        return self.unanswered == 0 and self.mismatched == 0

    def add(self, other: Stats) -> None:
        """Add ``other``'s counters (not its round-trip times) to these."""
        self.sent += other.sent
        self.echoed += other.echoed
        self.resent += other.resent
        self.mismatched += other.mismatched
        self.reconnects += other.reconnects
        self.connections += other.connections
        self.refusals += other.refusals
        self.unanswered += other.unanswered
        self.failed_attempts += other.failed_attempts
        self.dropped += other.dropped

    def summary(self) -> str:
        """The one line printed at exit (round-trip times in milliseconds)."""
        return (
            f"summary sent={self.sent} echoed={self.echoed} lost={self.lost} "
            f"resent={self.resent} mismatched={self.mismatched} reconnects={self.reconnects} "
            f"rtt_p50_ms={_ms(self.rtt.percentile(50))} rtt_p99_ms={_ms(self.rtt.percentile(99))}"
        )

    def fields(self) -> dict[str, object]:
        """The summary as JSON-ready fields (round-trip times in milliseconds, or null)."""
        return {
            "sent": self.sent,
            "echoed": self.echoed,
            "lost": self.lost,
            "resent": self.resent,
            "mismatched": self.mismatched,
            "reconnects": self.reconnects,
            "rtt_p50_ms": ms_or_none(self.rtt.percentile(50)),
            "rtt_p99_ms": ms_or_none(self.rtt.percentile(99)),
        }


def _ms(seconds: float) -> str:
    return "nan" if math.isnan(seconds) else f"{seconds * 1000:.3f}"


def ms_or_none(seconds: float) -> float | None:
    """Seconds as milliseconds rounded to the microsecond; None for NaN (no sample)."""
    return None if math.isnan(seconds) else round(seconds * 1000, 3)


class EchoTracker:
    """Messages in flight, in order, and the counters."""

    def __init__(self, stats: Stats | None = None) -> None:
        self.stats = stats or Stats()
        self.pending: deque[Message] = deque()

    def produce(self, kind: Kind, payload: bytes, now: float) -> Message:
        """Record a new message about to be sent for the first time."""
        self.stats.sent += 1
        self.stats.unanswered += 1
        message = Message(self.stats.sent, kind, payload, now)
        self.pending.append(message)
        return message

    def to_resend(self) -> list[Message]:
        """After a reconnect: every unanswered message, oldest first, to be sent again."""
        return list(self.pending)

    def resending(self, message: Message, now: float) -> None:
        """Record that ``message`` is about to be sent again (its RTT starts anew)."""
        message.sent_at = now
        self.stats.resent += 1

    def receive(self, kind: Kind, payload: bytes, now: float) -> EchoResult:
        """Match an incoming data message against the oldest unanswered one."""
        if not self.pending:
            self.stats.mismatched += 1
            return EchoResult(Match.UNEXPECTED, None, None)
        message = self.pending.popleft()
        self.stats.unanswered -= 1
        if message.kind is not kind or message.payload != payload:
            self.stats.mismatched += 1
            return EchoResult(Match.MISMATCHED, message, None)
        rtt = now - message.sent_at
        self.stats.echoed += 1
        self.stats.rtt.add(rtt)
        return EchoResult(Match.ECHOED, message, rtt)
