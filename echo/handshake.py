"""Checks of the opening handshake that aiohttp does not make, or makes wrongly (sans-I/O).

**The key.** aiohttp decodes ``Sec-WebSocket-Key`` with ``base64.b64decode`` and
catches only ``binascii.Error``: a key with a non-ASCII character raises another
``ValueError``, answered 500 with an ERROR and a traceback in the log, at will.
:func:`key_valid` requires the form RFC 6455 4.1 gives it (16 bytes in base64, 24
characters) before aiohttp sees it.

**permessage-deflate offers** (RFC 7692). aiohttp accepts offers RFC 7692 says a
server must decline: it ignores the value of ``client_max_window_bits`` (``=7``,
twenty digits), takes ``server_max_window_bits`` without a value, and finds
``permessage-deflate`` inside other extension names. The server therefore checks the
offers first and, when any permessage-deflate offer is invalid, declines compression
for that connection (RFC 7692 5: the server declines an offer with an unknown
parameter, an invalid value or a repeated parameter; it may always decline): the
upgrade goes on with a copy of the request without ``Sec-WebSocket-Extensions``
(:func:`without_invalid_offers`, public ``Request.clone``), so whichever engine serves
it negotiates nothing and the connection is uncompressed. When every offer is valid,
aiohttp's own choice among them stands.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from aiohttp import hdrs, web

EXTENSION = "permessage-deflate"
_FLAGS = frozenset({"server_no_context_takeover", "client_no_context_takeover"})
_WINDOW_BITS = re.compile(r"[89]|1[0-5]")  # 8 to 15, no leading zero (RFC 7692 7.1.2)
_KEY = re.compile(r"[A-Za-z0-9+/]{22}==")  # base64 of 16 bytes


def key_valid(key: str | None) -> bool:
    """Whether ``Sec-WebSocket-Key`` is 16 bytes in base64 (RFC 6455 4.1, 11.3.1)."""
    if key is None:
        return False
    return _KEY.fullmatch(key) is not None or _KEY.fullmatch(key.strip(" \t")) is not None


def _valid_offer(params: list[str]) -> bool:
    """Whether the parameters of one permessage-deflate offer are valid (RFC 7692 7.1)."""
    seen: set[str] = set()
    for param in params:
        name, has_value, value = (part.strip() for part in param.partition("="))
        if name in seen:
            return False
        seen.add(name)
        if len(value) >= 2 and value[0] == value[-1] == '"':
            value = value[1:-1]  # a quoted-string (RFC 7692 7.1.2.1, 7.1.2.2)
        if name in _FLAGS:
            if has_value:
                return False
        elif name == "server_max_window_bits":
            if _WINDOW_BITS.fullmatch(value) is None:
                return False
        elif name == "client_max_window_bits":
            if has_value and _WINDOW_BITS.fullmatch(value) is None:
                return False
        else:
            return False
    return True


def deflate_offers_valid(headers: Iterable[str]) -> bool:
    """Whether every permessage-deflate offer in the Sec-WebSocket-Extensions ``headers``
    is valid, so that compression may be negotiated. Offers of other extensions do not
    matter (the server accepts none), unless their text contains ``permessage-deflate``,
    which aiohttp would take for an offer."""
    for header in headers:
        for element in header.split(","):
            if EXTENSION not in element:
                continue
            name, *params = element.split(";")
            if name.strip() != EXTENSION or not _valid_offer(params):
                return False
    return True


def without_invalid_offers(request: web.Request) -> web.Request:
    """``request``, or a copy without Sec-WebSocket-Extensions if a permessage-deflate
    offer in it is invalid (compression is then declined)."""
    offers = request.headers.getall(hdrs.SEC_WEBSOCKET_EXTENSIONS, [])
    if not offers or deflate_offers_valid(offers):
        return request
    headers = request.headers.copy()
    headers.popall(hdrs.SEC_WEBSOCKET_EXTENSIONS)
    return request.clone(headers=headers)
