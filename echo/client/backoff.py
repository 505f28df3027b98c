"""Reconnection delays: exponential back-off with jitter, and HTTP Retry-After.

Sans-I/O so the arithmetic can be tested without waiting for it.
"""

from __future__ import annotations

import random
import re
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

RETRY_AFTER_CAP = 3600.0  # a server asking for more than an hour is obeyed for an hour


class Backoff:
    """Delays that start at ``first`` and double up to ``cap``, each drawn with jitter.

    Every delay is a random 50-100 % of the current step ("equal jitter"), so clients
    that lost the same server at the same moment spread their reconnections out and
    never wait longer than ``cap``.
    """

    def __init__(self, first: float, cap: float, rng: random.Random | None = None) -> None:
        if not 0 < first <= cap:
            raise ValueError(f"need 0 < first <= cap, got {first} and {cap}")
        self.first = first
        self.cap = cap
        self._rng = rng or random.Random()
        self._step = first

    @property
    def step(self) -> float:
        """The step the next delay is drawn from."""
        return self._step

    def next_delay(self) -> float:
        """The delay before the next attempt; doubles the step for the one after."""
        delay = self._step * self._rng.uniform(0.5, 1.0)
        self._step = min(self._step * 2, self.cap)
        return delay

    def reset(self) -> None:
        """Back to the first step, after a connection proved healthy."""
        self._step = self.first

    def spread(self, seconds: float) -> float:
        """``seconds`` plus up to 10 % more, so a Retry-After does not synchronise clients."""
        return seconds * self._rng.uniform(1.0, 1.1)


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or HTTP-date), capped.

    None when the header is absent or unreadable: then only the back-off applies.
    """
    if value is None:
        return None
    text = value.strip()
    if re.fullmatch(r"[0-9]{1,12}", text):
        return min(float(text), RETRY_AFTER_CAP)
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    seconds = (when - (now or datetime.now(UTC))).total_seconds()
    return min(max(seconds, 0.0), RETRY_AFTER_CAP)


class Attempts:
    """Consecutive connection attempts since the last healthy connection.

    Every handshake is an attempt, numbered from 1; an attempt whose connection then
    proves healthy (it carried an echo, or stayed up ``Backoff.cap`` seconds) starts the
    count and the back-off again. With a ``limit`` (RECONNECT_MAX_ATTEMPTS), the client
    gives up once that many attempts in a row have failed; 0 means never.
    """

    def __init__(self, backoff: Backoff, limit: int = 0) -> None:
        self.backoff = backoff
        self.limit = limit
        self.number = 0

    def start(self) -> int:
        """Count a new attempt; returns its number."""
        self.number += 1
        return self.number

    @property
    def exhausted(self) -> bool:
        """The limit is reached: no further attempt may be made."""
        return self.limit > 0 and self.number >= self.limit

    def label(self) -> str:
        """``3`` or ``3 of 5``, for log lines."""
        return f"{self.number} of {self.limit}" if self.limit else str(self.number)

    def next_delay(self, retry_after: float | None = None) -> float:
        """The wait before the next attempt: the back-off, and never less than a
        server's Retry-After (spread by up to 10 %)."""
        delay = self.backoff.next_delay()
        if retry_after is not None:
            delay = max(delay, self.backoff.spread(retry_after))
        return delay

    def healthy(self) -> None:
        """The last connection proved healthy: count and back-off start again."""
        self.number = 0
        self.backoff.reset()
