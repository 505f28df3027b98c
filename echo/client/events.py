"""Where the client's events go: log lines on stderr, and with ``--json`` JSON on stdout.

Every event is an ordinary log record of the ``echo.client`` logger carrying
``extra=event(name, **fields)`` (see :mod:`echo.logs`): its message is the line a
person reads on stderr (LOG_FORMAT text or json, at LOG_LEVEL). ``--json`` adds a
handler that writes each event record, at any level, as one JSON object per line on
stdout: ``connected``, ``sent`` and ``echo`` with the round trip, ``mismatch``,
``disconnected`` (code, reason or "abnormal", time up), ``reconnected`` (downtime),
``summary`` and the rest; lines without an event stay on stderr only. JSON escaping
keeps any character a peer sends from breaking a line.
"""

from __future__ import annotations

import logging
import sys
from typing import IO

from echo.config import ClientSettings
from echo.logs import JsonFormatter, configure_logging

log = logging.getLogger("echo.client")


class _HasEvent(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return hasattr(record, "event")


class EventStream(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes the event records it sees as JSON lines (flushed one by one)."""

    def __init__(self, stream: IO[str]) -> None:
        super().__init__(stream)
        self.setFormatter(JsonFormatter())
        self.addFilter(_HasEvent())


def configure_output(settings: ClientSettings, stream: IO[str] | None = None) -> None:
    """Logging on stderr as LOG_LEVEL and LOG_FORMAT say; with ``settings.json`` every
    event also goes to ``stream`` (stdout) as JSON, whatever LOG_LEVEL says."""
    configure_logging(settings.log_level, settings.log_format)
    if not settings.json:
        return
    root = logging.getLogger()
    for handler in root.handlers:
        handler.setLevel(root.level)  # stderr keeps LOG_LEVEL...
    log.setLevel(logging.DEBUG)  # ...while the client's debug events reach the stream
    for handler in list(log.handlers):
        if isinstance(handler, EventStream):
            log.removeHandler(handler)
    log.addHandler(EventStream(stream or sys.stdout))


def emit(name: str, message: str, level: int = logging.INFO, /, **fields: object) -> None:
    """Log ``message`` as event ``name`` with ``fields``."""
    log.log(level, "%s", message, extra={"event": name, "event_fields": fields})
