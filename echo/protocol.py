"""Sans-I/O WebSocket rules the server applies on top of aiohttp's frame reader."""

from __future__ import annotations

import re
import zlib

from aiohttp import WebSocketError

from echo.text import preview

# RFC 6455 section 7.4: codes a peer may put on the wire. 1004, 1005, 1006 and 1015
# are reserved (1005/1006/1015 are for reporting only and must never be sent).
_SENDABLE_BELOW_3000 = frozenset(
    {1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014}
)

NORMAL_CLOSURE = 1000
GOING_AWAY = 1001
PROTOCOL_ERROR = 1002
ABNORMAL_CLOSURE = 1006  # reported locally when the TCP connection ended without a close
INVALID_PAYLOAD = 1007
MESSAGE_TOO_BIG = 1009
INTERNAL_ERROR = 1011
NO_STATUS = 0  # aiohttp's value for a close frame without a payload


def is_valid_close_code(code: int) -> bool:
    """Whether a peer may send ``code`` in a close frame."""
    return code in _SENDABLE_BELOW_3000 or 3000 <= code <= 4999


def close_reply(code: int) -> int:
    """The code to answer a peer's close frame with: echo a valid code, 1002 otherwise."""
    if code == NO_STATUS:
        return NORMAL_CLOSURE
    if code in _SENDABLE_BELOW_3000:  # the usual codes, without a call
        return code
    return code if is_valid_close_code(code) else PROTOCOL_ERROR


def is_utf8(data: bytes) -> bool:
    """Whether a text message's payload is valid UTF-8 (checked, never decoded for use)."""
    if data.isascii():
        return True
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


# RFC 6455 4.1: a subprotocol name is an HTTP token (RFC 9110 5.6.2).
SUBPROTOCOL_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


def select_subprotocol(offered: str | None, configured: tuple[str, ...]) -> tuple[str, ...]:
    """The subprotocol an upgrade selects, as the ``protocols`` aiohttp's
    WebSocketResponse takes, from the client's first Sec-WebSocket-Protocol header
    (``offered``; aiohttp reads only that one) and SUBPROTOCOLS (``configured``).

    With a list, the first protocol the client offers that is on it (aiohttp's own
    rule); with none, the client's first offer if it is a valid name, so clients that
    insist on a subprotocol work out of the box.
    """
    if offered is None:
        return ()
    names = [name.strip() for name in offered.split(",")]
    if configured:
        return next(((name,) for name in names if name in configured), ())
    first = names[0]
    return (first,) if SUBPROTOCOL_NAME.fullmatch(first) else ()


def peer_fault(error: BaseException) -> str | None:
    """What the peer did wrong, if ``error`` (as aiohttp's ``receive()`` reports it) is
    the peer's protocol violation; None if it is not (our bug).

    aiohttp raises WebSocketError for what its parser refuses (it has then closed with
    1002, 1007 or 1009) and lets zlib.error through for a corrupt or over-terminated
    permessage-deflate stream.
    """
    if isinstance(error, WebSocketError):
        return preview(str(error), 120)
    if isinstance(error, zlib.error):
        return "invalid compressed data"
    return None
