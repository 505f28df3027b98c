"""Refused handshakes in the log: one line each up to a budget, then a count.

A single client can have thousands of handshakes a second refused (bad origin, over a
limit); a line for each would let it flood the log. So, per reason, the first
:data:`LINES_PER_SECOND` refusals of each one-second window are logged one by one
(``refused remote=... origin=... reason=... (detail)``) and the rest are only counted: when
the window ends, one line says how many there were
(``refused reason=origin not_logged=2566 seconds=1``, event ``refused_summary`` in
JSON). /metrics counts every refusal either way (``echo_handshakes_refused_total``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from echo.logs import clip, event
from echo.text import preview

LINES_PER_SECOND = 10  # per reason
WINDOW = 1.0  # seconds


@dataclass(slots=True)
class _Window:
    start: float
    logged: int = 0
    not_logged: int = 0
    timer: asyncio.TimerHandle | None = None


class RefusalLog:
    """Logs refusals to ``logger`` at info, at most :data:`LINES_PER_SECOND` per reason
    and second one by one, and a count of the others at the end of each second."""

    def __init__(self, logger: logging.Logger, clock: Callable[[], float] = time.monotonic) -> None:
        self._log = logger
        self._clock = clock
        self._windows: dict[str, _Window] = {}

    def refused(self, remote: str, origin: str | None, reason: str, detail: str) -> None:
        """One refusal: ``detail`` is the server's own words for it (no peer bytes)."""
        if not self._log.isEnabledFor(logging.INFO):
            return
        now = self._clock()
        window = self._windows.get(reason)
        if window is None or now - window.start >= WINDOW:
            if window is not None:
                self._close(reason, window)
            window = self._windows[reason] = _Window(now)
        if window.logged < LINES_PER_SECOND:
            window.logged += 1
            self._log.info(
                "refused remote=%s origin=%s reason=%s (%s)",
                remote,
                "-" if origin is None else preview(origin),
                reason,
                detail,
                extra=event(
                    "refused", remote=remote, origin=clip(origin), reason=reason, detail=detail
                ),
            )
            return
        window.not_logged += 1
        if window.timer is None:  # the count is logged when the window ends
            loop = asyncio.get_running_loop()
            window.timer = loop.call_later(window.start + WINDOW - now, self._expire, reason)

    def flush(self) -> None:
        """Log the counts of the windows still open (at shutdown)."""
        for reason, window in list(self._windows.items()):
            self._close(reason, window)
        self._windows.clear()

    def _expire(self, reason: str) -> None:
        window = self._windows.pop(reason, None)
        if window is not None:
            self._close(reason, window)

    def _close(self, reason: str, window: _Window) -> None:
        if window.timer is not None:
            window.timer.cancel()
            window.timer = None
        if window.not_logged:
            self._log.info(
                "refused reason=%s not_logged=%d seconds=%g",
                reason,
                window.not_logged,
                WINDOW,
                extra=event(
                    "refused_summary", reason=reason, not_logged=window.not_logged, seconds=WINDOW
                ),
            )
            window.not_logged = 0
