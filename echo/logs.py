"""Logging set-up shared by the entry points: LOG_FORMAT=text (the default) or json.

Log calls stay ordinary ``logging`` calls whose message is the text line. Calls that
report an event also pass ``extra=event("open", conn=..., remote=..., ...)``; the JSON
formatter turns those into one object per line with fixed field names:

    {"time": "2026-01-02T03:04:05.678Z", "level": "info", "event": "open",
     "conn": "c1", "remote": "127.0.0.1", "origin": "http://localhost:3000"}

Records without an event (aiohttp's own, and lines that are only prose) come out as
``{"time", "level", "event": "log", "logger", "message"}``. ``json.dumps`` escapes every
control and non-ASCII character, so no value can break or forge a line; peer-controlled
strings are still cut with :func:`clip` to keep lines short.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

from aiohttp.http_exceptions import HttpProcessingError

from echo.text import preview

FIRST_FIELDS = ("conn", "remote")  # after time, level and event; then the event's own


class BadRequestFilter(logging.Filter):
    """Turn aiohttp's error-level traceback for a malformed request into one debug line.

    aiohttp logs most unparsable requests (an over-long request line or header, a bad
    header byte) as "Error handling request" at ERROR with a traceback whose message
    quotes the peer's bytes. A malformed request is the peer's fault, answered with 400,
    so it is worth a single escaped debug line, not an error.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if not isinstance(error, HttpProcessingError):
            return True
        if not logging.getLogger(record.name).isEnabledFor(logging.DEBUG):
            return False
        remote = record.args[0] if isinstance(record.args, tuple) and record.args else "-"
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        record.msg = "bad request remote=%s status=%s error=%s"
        record.args = (remote, error.code, preview(error.message or type(error).__name__))
        record.exc_info = record.exc_text = None
        return True


def event(name: str, **fields: Any) -> dict[str, Any]:
    """The ``extra=`` of a log call that reports event ``name`` with ``fields``."""
    return {"event": name, "event_fields": fields}


def clip(value: str | None, limit: int = 120) -> str | None:
    """A peer-controlled string cut to ``limit`` characters (marked with ``...``)."""
    if value is None or len(value) <= limit:
        return value
    return value[:limit] + "..."


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line."""

    def format(self, record: logging.LogRecord) -> str:
        seconds = time.gmtime(record.created)
        millis = int(record.msecs)
        line: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", seconds) + f".{millis:03d}Z",
            "level": record.levelname.lower(),
            "event": getattr(record, "event", "log"),
        }
        fields: dict[str, Any] | None = getattr(record, "event_fields", None)
        if fields is None:
            line["logger"] = record.name
            line["message"] = record.getMessage()
        else:
            for name in FIRST_FIELDS:
                if name in fields:
                    line[name] = fields[name]
            line.update((k, v) for k, v in fields.items() if k not in line)
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=True, default=str)


def configure_logging(level: str, log_format: str = "text") -> None:
    """One line per record on stderr, at ``level`` (debug, info, warning, error).

    ``log_format`` is ``text`` (``time LEVEL logger: message``) or ``json``.
    """
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
    # aiohttp's access log would copy raw request lines into the log; we log our own.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    server_log = logging.getLogger("aiohttp.server")
    if not any(isinstance(f, BadRequestFilter) for f in server_log.filters):
        server_log.addFilter(BadRequestFilter())
