"""Logging set-up shared by the entry points."""

from __future__ import annotations

import logging
import sys

from aiohttp.http_exceptions import HttpProcessingError

from echo.text import preview


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


def configure_logging(level: str) -> None:
    """One line per record on stderr, at ``level`` (debug, info, warning, error)."""
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
        force=True,
    )
    # aiohttp's access log would copy raw request lines into the log; we log our own.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    server_log = logging.getLogger("aiohttp.server")
    if not any(isinstance(f, BadRequestFilter) for f in server_log.filters):
        server_log.addFilter(BadRequestFilter())
