"""Test controls: how one WebSocket connection asks the server to behave, from its URL.

A client adds controls to the query string of the WebSocket URL
(``ws://host:8080/?close_after=3&close_code=4000``) to make the server misbehave on
purpose: hold echoes, close or drop the connection, ignore pings, refuse the handshake,
push messages of its own, fragment its echoes, describe the connection. This module is
sans-I/O: :meth:`ControlRules.parse` turns a raw query string into a frozen
:class:`Controls` value or raises :class:`ControlError`, whose text is the one line the
server answers with HTTP 400. The engines act on the value.

Every control and its bounds are in :data:`TABLE` (README's "Test controls" table is
this one). The bounds exist so that controls cannot be turned against the server:
waits are capped, pushes are paced and budgeted (PUSH_MAX_RATE), sizes stay within
MAX_MESSAGE_SIZE. Rules, in order:

- No query string (or only ``&``): no controls; the connection runs as usual.
- CONTROLS=false: a control name is refused ("test controls are off"); anything else
  in the query string is ignored, as before the feature existed.
- CONTROLS=true: every parameter must be a known control, given once, with a value in
  range; a bad name or value is refused, never replaced by a default. Controls that
  would have no effect (``close_code`` without ``close_after``, ``retry_after``
  without ``status``, ...) are refused too, so a typo cannot pass as a test.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from urllib.parse import quote, unquote_plus

from echo.text import preview

MAX_PARAMETERS = 64  # query parameters looked at; more is refused
MAX_WAIT_MS = 60_000  # delay + jitter: a held echo waits at most a minute
MAX_TIMER_MS = 3_600_000  # close_after_ms, drop_after_ms, ping_every, push_every: an hour
MIN_EVERY_MS = 10  # ping_every, push_every: at most a hundred a second
MAX_COUNT = 1_000_000  # close_after, drop_after (messages)
MAX_RETRY_AFTER = 3_600  # seconds; the echo client caps Retry-After at an hour too
MAX_CLOSE_REASON = 123  # bytes of UTF-8: a close frame's payload is at most 125
DEFAULT_PUSH_SIZE = 16
# heartbeat=off: a connection that has received nothing for this long is closed anyway.
SILENCE_LIMIT_S = 3_600.0

# RFC 6455 7.4.1: codes an application may choose to close with (1002, 1007, 1009 and
# 1010 report errors the server did not see, so they are not offered).
CLOSE_CODES_BELOW_3000 = frozenset({1000, 1001, 1003, 1008, 1011, 1012, 1013, 1014})
_CLOSE_CODES_TEXT = "1000, 1001, 1003, 1008, 1011-1014 or 3000-4999"
_TRUE = frozenset({"", "1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


class Kind(enum.Enum):
    """How a control's value is written."""

    INTEGER = "integer"  # ASCII digits, within [low, high]
    FLAG = "flag"  # no value, or true/false (yes/no, on/off, 1/0)
    CHOICE = "choice"  # one of ``choices``
    CLOSE_CODE = "close code"
    TEXT = "text"  # UTF-8, at most ``high`` bytes


@dataclass(frozen=True, slots=True)
class Spec:
    """One row of the table: a control, how it is written, its range, what it does.

    ``high`` None means MAX_MESSAGE_SIZE (known only from the settings).
    """

    name: str
    kind: Kind
    low: int
    high: int | None
    unit: str
    what: str
    choices: tuple[str, ...] = ()
    needs: tuple[str, ...] = ()  # refused unless one of these is given too

    def expected(self, max_message_size: int) -> str:
        """What a valid value looks like, for the 400 reason."""
        if self.kind is Kind.FLAG:
            return "no value, or true or false" if self.name != "heartbeat" else "on or off"
        if self.kind is Kind.CHOICE:
            return " or ".join(self.choices)
        if self.kind is Kind.CLOSE_CODE:
            return _CLOSE_CODES_TEXT
        high = max_message_size if self.high is None else self.high
        if self.kind is Kind.TEXT:
            return f"UTF-8 text of at most {high} bytes"
        unit = f" ({self.unit})" if self.unit else ""
        return f"an integer from {self.low} to {high}{unit}"


TABLE: tuple[Spec, ...] = (
    Spec("delay", Kind.INTEGER, 0, MAX_WAIT_MS, "ms", "hold each echo this long; order is kept"),
    Spec("jitter", Kind.INTEGER, 0, MAX_WAIT_MS, "ms", "and a random 0 to jitter ms more"),
    Spec("close_after", Kind.INTEGER, 0, MAX_COUNT, "messages",
         "after this many messages, close with close_code and close_reason"),
    Spec("close_after_ms", Kind.INTEGER, 0, MAX_TIMER_MS, "ms",
         "this long after the upgrade, close with close_code and close_reason"),
    Spec("close_code", Kind.CLOSE_CODE, 1000, 4999, "",
         "code of that closing handshake (default 1000)",
         needs=("close_after", "close_after_ms")),
    Spec("close_reason", Kind.TEXT, 0, MAX_CLOSE_REASON, "bytes",
         "reason of that closing handshake (default none)",
         needs=("close_after", "close_after_ms")),
    Spec("drop_after", Kind.INTEGER, 0, MAX_COUNT, "messages",
         "after this many messages, close the TCP connection without a close frame (1006)"),
    Spec("drop_after_ms", Kind.INTEGER, 0, MAX_TIMER_MS, "ms",
         "this long after the upgrade, close the TCP connection without a close frame"),
    Spec("ignore_pings", Kind.FLAG, 0, 1, "", "never answer the peer's pings"),
    Spec("heartbeat", Kind.FLAG, 0, 1, "",
         "off: the server sends no pings of its own (the connection still ends after "
         "an hour without a frame from the peer)"),
    Spec("silent", Kind.FLAG, 0, 1, "", "read and discard every message, echo nothing"),
    Spec("status", Kind.INTEGER, 400, 599, "", "refuse the handshake with this HTTP status"),
    Spec("retry_after", Kind.INTEGER, 0, MAX_RETRY_AFTER, "s",
         "with status: the Retry-After header", needs=("status",)),
    Spec("ping_every", Kind.INTEGER, MIN_EVERY_MS, MAX_TIMER_MS, "ms",
         "the server sends a ping this often"),
    Spec("push_every", Kind.INTEGER, MIN_EVERY_MS, MAX_TIMER_MS, "ms",
         "the server sends a message of its own this often (never faster than the peer reads)"),
    Spec("push_size", Kind.INTEGER, 0, None, "bytes",
         f"size of each pushed message (default {DEFAULT_PUSH_SIZE}); "
         "push_size / push_every at most PUSH_MAX_RATE", needs=("push_every",)),
    Spec("push_type", Kind.CHOICE, 0, 0, "", "text (default) or binary pushed messages",
         choices=("text", "binary"), needs=("push_every",)),
    Spec("fragment", Kind.INTEGER, 1, None, "bytes",
         "echo each message in fragments of this many bytes (no compression)"),
    Spec("info", Kind.FLAG, 0, 1, "", "the first message is a JSON description of the connection"),
)  # fmt: skip
SPECS = {spec.name: spec for spec in TABLE}
# Given with status, every other control would be silently ignored.
_WITH_STATUS = frozenset({"status", "retry_after"})
_SILENT_EXCLUDES = ("delay", "jitter", "fragment")


class ControlError(ValueError):
    """A query string that cannot be used; ``str()`` is the one-line reason for HTTP 400."""


@dataclass(frozen=True, slots=True)
class Controls:
    """What one connection asked for; every value already within its bounds.

    Durations are in milliseconds as written; ``None`` means not asked for.
    """

    delay: int = 0
    jitter: int = 0
    close_after: int | None = None
    close_after_ms: int | None = None
    close_code: int = 1000
    close_reason: str = ""
    drop_after: int | None = None
    drop_after_ms: int | None = None
    ignore_pings: bool = False
    heartbeat: bool = True
    silent: bool = False
    status: int | None = None
    retry_after: int | None = None
    ping_every: int | None = None
    push_every: int | None = None
    push_size: int = DEFAULT_PUSH_SIZE
    push_type: str = "text"
    fragment: int | None = None
    info: bool = False

    @property
    def holds(self) -> bool:
        """Whether echoes are held back (delay or jitter)."""
        return bool(self.delay or self.jitter)

    def describe(self) -> str:
        """The controls that differ from the defaults, as a canonical query string
        (table order, values percent-encoded): what the close log names."""
        parts = []
        for spec in TABLE:
            value = getattr(self, spec.name)
            if value == getattr(NO_CONTROLS, spec.name):
                continue
            if isinstance(value, bool):
                text = ("on" if value else "off") if spec.name == "heartbeat" else ""
                parts.append(spec.name if not text else f"{spec.name}={text}")
            else:
                parts.append(f"{spec.name}={quote(str(value), safe='')}")
        return "&".join(parts)


NO_CONTROLS = Controls()


@dataclass(frozen=True, slots=True)
class ControlRules:
    """The settings that bound controls: CONTROLS, MAX_MESSAGE_SIZE, PUSH_MAX_RATE."""

    enabled: bool = True
    max_message_size: int = 1_048_576
    push_max_rate: int = 1_048_576  # bytes per second of pushed payload, per connection

    def parse(self, query_string: str) -> Controls | None:
        """The controls in a raw (still percent-encoded) query string, or None if it
        names none. Raises ControlError with a one-line reason."""
        pairs = _split(query_string)
        if not pairs:
            return None
        if not self.enabled:
            for name, _value in pairs:
                if name in SPECS:
                    raise ControlError(
                        f"test controls are off on this server (CONTROLS=false): "
                        f"{preview(name, 40)} refused"
                    )
            return None
        values: dict[str, object] = {}
        for name, value in pairs:
            spec = SPECS.get(name)
            if spec is None:
                raise ControlError(
                    f"unknown control {preview(name, 40)}; known: {', '.join(SPECS)}"
                )
            if name in values:
                raise ControlError(f"control {name} given more than once")
            values[name] = self._value(spec, value)
        self._check_combination(values)
        controls = Controls(**values)  # type: ignore[arg-type]
        return None if controls == NO_CONTROLS else controls

    def _value(self, spec: Spec, text: str) -> object:
        def bad() -> ControlError:
            return ControlError(
                f"bad control {spec.name}={preview(text, 40)}: "
                f"expected {spec.expected(self.max_message_size)}"
            )

        if spec.kind is Kind.FLAG:
            lowered = text.lower()
            if spec.name == "heartbeat" and lowered == "":
                raise bad()  # heartbeat is on by default: only "off" says something
            if lowered in _TRUE:
                return True
            if lowered in _FALSE:
                return False
            raise bad()
        if spec.kind is Kind.CHOICE:
            if text not in spec.choices:
                raise bad()
            return text
        if spec.kind is Kind.TEXT:
            high = self.max_message_size if spec.high is None else spec.high
            if len(text.encode("utf-8", "surrogatepass")) > high or not _is_text(text):
                raise bad()
            return text
        if not (text.isascii() and text.isdigit()) or len(text) > 10:
            raise bad()
        number = int(text)
        if spec.kind is Kind.CLOSE_CODE:
            if number not in CLOSE_CODES_BELOW_3000 and not 3000 <= number <= 4999:
                raise bad()
            return number
        high = self.max_message_size if spec.high is None else spec.high
        if not spec.low <= number <= high:
            raise bad()
        return number

    def _check_combination(self, values: dict[str, object]) -> None:
        for name in values:
            needs = SPECS[name].needs
            if needs and not any(need in values for need in needs):
                raise ControlError(f"control {name} needs {' or '.join(needs)}")
        if "status" in values and len(values.keys() - _WITH_STATUS):
            others = ", ".join(sorted(values.keys() - _WITH_STATUS))
            raise ControlError(f"status refuses the handshake; {others} would have no effect")
        if values.get("silent"):
            useless = [name for name in _SILENT_EXCLUDES if name in values]
            if useless:
                raise ControlError(
                    f"silent echoes nothing; {', '.join(useless)} would have no effect"
                )
        wait = sum(
            value for name in ("delay", "jitter") if isinstance(value := values.get(name), int)
        )
        if wait > MAX_WAIT_MS:
            raise ControlError(
                f"delay + jitter is {wait} ms; a held echo waits at most {MAX_WAIT_MS} ms"
            )
        every = values.get("push_every")
        if isinstance(every, int):
            size = values.get("push_size", DEFAULT_PUSH_SIZE)
            assert isinstance(size, int)
            rate = size * 1000 / every
            if rate > self.push_max_rate:
                raise ControlError(
                    f"push_size={size} every {every} ms is {rate:.0f} bytes/s, over this "
                    f"server's PUSH_MAX_RATE of {self.push_max_rate} bytes/s"
                )


def has_query(query_string: str) -> bool:
    """The per-connection check on the fast road: could this query string hold controls?"""
    return bool(query_string) and query_string.strip("&") != ""


def _split(query_string: str) -> list[tuple[str, str]]:
    """``name=value`` pairs, percent-decoded as UTF-8 (``+`` is a space); empty pieces
    skipped. Raises ControlError for too many pieces or bytes that are not UTF-8."""
    pieces = [piece for piece in query_string.split("&") if piece]
    if len(pieces) > MAX_PARAMETERS:
        raise ControlError(f"too many query parameters ({len(pieces)}; at most {MAX_PARAMETERS})")
    pairs = []
    for piece in pieces:
        raw_name, _, raw_value = piece.partition("=")
        try:
            name = unquote_plus(raw_name, errors="strict")
            value = unquote_plus(raw_value, errors="strict")
        except UnicodeDecodeError:
            raise ControlError(f"query parameter {preview(piece, 40)} is not UTF-8") from None
        pairs.append((name, value))
    return pairs


def _is_text(text: str) -> bool:
    """Whether ``text`` can go into a close frame's reason: encodable UTF-8 (no lone
    surrogates, which unquote can produce from nothing but never from valid UTF-8)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
