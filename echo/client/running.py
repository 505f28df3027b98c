"""Running one mode to its end: signals, fatal errors and the exit status.

Exit status: 0 when the run ended with nothing lost and nothing mismatched; 1 when the
client could not do its job (a refusal such as HTTP 403, an untrusted certificate, a
redirect it will not follow, RECONNECT_MAX_ATTEMPTS used up); 2 for a bad setting or
flag (one line on stderr); 3 when messages were lost (sent, never answered) or answers
did not match.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import Awaitable, Callable
from typing import TypeVar

from echo.client.errors import FatalError
from echo.client.events import emit

T = TypeVar("T")

EXIT_OK, EXIT_FATAL, EXIT_CONFIG, EXIT_LOST = 0, 1, 2, 3


async def run_until_signal(
    work: Awaitable[T], stop: Callable[[bool], None], stopping: Callable[[], bool]
) -> T:
    """Await ``work``; the first SIGINT/SIGTERM calls ``stop(True)`` (finish gently),
    a second ``stop(False)`` (at once)."""
    loop = asyncio.get_running_loop()

    def on_signal() -> None:
        again = stopping()
        emit("signal", "second signal: closing now" if again else "signal received: stopping")
        stop(not again)

    signals = (signal.SIGINT, signal.SIGTERM)
    for signum in signals:
        loop.add_signal_handler(signum, on_signal)
    try:
        return await work
    finally:
        for signum in signals:
            loop.remove_signal_handler(signum)


def report_fatal(error: FatalError) -> int:
    """Print the one line of a fatal error; the exit status for it."""
    print(f"echo-client: {error}", file=sys.stderr, flush=True)
    return EXIT_FATAL
