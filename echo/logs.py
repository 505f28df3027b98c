"""Logging set-up shared by the entry points: LOG_FORMAT=text (the default) or json.

Log calls stay ordinary ``logging`` calls whose message is the text line. Calls that
report an event also pass ``extra=event("open", conn=..., remote=..., ...)``; the JSON
formatter turns those into one object per line with fixed field names:

    {"time": "2026-01-02T03:04:05.678Z", "level": "info", "event": "open",
     "conn": "c1", "remote": "127.0.0.1", "origin": "http://localhost:3000"}

Records without an event (aiohttp's own, and lines that are only prose) come out as
``{"time", "level", "event": "log", "logger", "message"}``.

Whatever a record holds, and whichever logger wrote it (aiohttp's, asyncio's and
gunicorn's included), the formatters write lines of printable ASCII of bounded length:
a text line is at most :data:`TEXT_LINE_LIMIT` characters (each line of a traceback
too), a JSON line at most :data:`JSON_LINE_LIMIT`, except the events of
:data:`WHOLE_EVENTS` (the start-up settings line, whose length is the configuration's).
Control and non-ASCII characters are escaped (``\\x1b``, ``\\u202e``) and longer lines
or values are cut, marked ``...(N total)``. Peer-controlled strings are also cut
earlier, where they are logged (:func:`clip`, ``echo.text.preview``), to keep ordinary
lines short.

Nothing a peer does is logged above info: the filters here turn aiohttp's records
about a peer's malformed request (:class:`BadRequestFilter`) or its unknown
subprotocols (:class:`SubprotocolFilter`) into single debug lines.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

from aiohttp.http_exceptions import HttpProcessingError

from echo.text import cut, escape, preview

FIRST_FIELDS = ("conn", "remote")  # after time, level and event; then the event's own
TEXT_LINE_LIMIT = 500  # characters per line of the text format (traceback lines too)
JSON_LINE_LIMIT = 4096  # characters per line of the JSON format
JSON_VALUE_LIMIT = 500  # characters per string value, before JSON's own escaping
# Events that carry nothing but the operator's own configuration: escaped, never cut.
WHOLE_EVENTS = frozenset({"settings"})


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


class SubprotocolFilter(logging.Filter):
    """Turn aiohttp's warning about subprotocols it does not know into one debug line.

    aiohttp logs a WARNING quoting the whole ``Sec-WebSocket-Protocol`` list (any
    length, raw non-ASCII) whenever a handshake offers subprotocols, as browser pages
    may; the server speaks none, and the handshake goes on without one (RFC 6455
    4.2.2). That is the peer's choice, not a fault.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING or "protocols" not in str(record.msg):
            return True
        if not logging.getLogger(record.name).isEnabledFor(logging.DEBUG):
            return False
        args = record.args if isinstance(record.args, tuple) else ()
        remote = args[0] if args else "-"
        offered = args[1] if len(args) > 1 else "?"
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        record.msg = "subprotocols not served remote=%s offered=%s"
        record.args = (remote, preview(str(offered)))
        return True


def event(name: str, **fields: Any) -> dict[str, Any]:
    """The ``extra=`` of a log call that reports event ``name`` with ``fields``."""
    return {"event": name, "event_fields": fields}


def clip(value: str | None, limit: int = 120) -> str | None:
    """A peer-controlled string cut to ``limit`` characters (marked with ``...``)."""
    if value is None or len(value) <= limit:
        return value
    return value[:limit] + "..."


class TextFormatter(logging.Formatter):
    """``time LEVEL logger: message``, each line printable ASCII of bounded length."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        record.message = escape(record.getMessage())
        record.asctime = self.formatTime(record, self.datefmt)
        line = self.formatMessage(record)
        if getattr(record, "event", None) not in WHOLE_EVENTS:
            line = cut(line, TEXT_LINE_LIMIT)
        more = []
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            more.extend(record.exc_text.splitlines())
        if record.stack_info:
            more.extend(self.formatStack(record.stack_info).splitlines())
        if not more:
            return line
        return "\n".join([line, *(cut(escape(text), TEXT_LINE_LIMIT) for text in more)])


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line of at most :data:`JSON_LINE_LIMIT`."""

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
        whole = line["event"] in WHOLE_EVENTS
        for name, value in line.items():
            if isinstance(value, str):
                line[name] = escape(value) if whole else cut(escape(value), JSON_VALUE_LIMIT)
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        text = json.dumps(line, ensure_ascii=True, default=str)
        while len(text) > JSON_LINE_LIMIT and not whole:  # each round cuts the longest value enough
            name = max(line, key=lambda k: len(line[k]) if isinstance(line[k], str) else 0)
            value = line[name]
            if not isinstance(value, str) or len(value) <= 64:
                break  # not reached: no record has that many fields
            keep = max(len(value) - (len(text) - JSON_LINE_LIMIT) - 32, 32)
            # A traceback (our own fault, never a peer's) keeps its end: the error itself.
            line[name] = cut(value, keep, keep_end=name == "exception")
            text = json.dumps(line, ensure_ascii=True, default=str)
        return text


def configure_logging(level: str, log_format: str = "text") -> None:
    """One line per record on stderr, at ``level`` (debug, info, warning, error).

    ``log_format`` is ``text`` (``time LEVEL logger: message``) or ``json``.
    """
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
    # aiohttp's access log would copy raw request lines into the log; we log our own.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    install_filters()


def install_filters() -> None:
    """Put the filters for aiohttp's records about peers on its loggers (once; the
    app does it too, so they hold whoever configured logging)."""
    for name, kind in (
        ("aiohttp.server", BadRequestFilter),
        ("aiohttp.websocket", SubprotocolFilter),
    ):
        logger = logging.getLogger(name)
        if not any(isinstance(f, kind) for f in logger.filters):
            logger.addFilter(kind())
