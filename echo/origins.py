"""Origin parsing and comparison (RFC 6454 serialisation, as browsers send it)."""

from __future__ import annotations

import re
from typing import NamedTuple

DEFAULT_PORTS = {"http": 80, "ws": 80, "https": 443, "wss": 443}
_ORIGIN = re.compile(
    r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*)://"
    r"(?P<host>\[[0-9A-Fa-f:.]+\]|[^\s/:?#@\[\]]+)"
    r"(?::(?P<port>\d{1,5}))?$"
)


class Origin(NamedTuple):
    """A normalised origin: lower-case scheme and host, explicit port (None if unknown)."""

    scheme: str
    host: str
    port: int | None

    def __str__(self) -> str:
        if self.port is None or self.port == DEFAULT_PORTS.get(self.scheme):
            return f"{self.scheme}://{self.host}"
        return f"{self.scheme}://{self.host}:{self.port}"


def parse_origin(text: str) -> Origin:
    """Parse ``scheme://host[:port]``; raise ValueError for anything else (paths included)."""
    match = _ORIGIN.match(text.strip())
    if match is None:
        raise ValueError(f"not an origin: {text!r}")
    scheme = match["scheme"].lower()
    port = DEFAULT_PORTS.get(scheme) if match["port"] is None else int(match["port"])
    if port is not None and not 0 < port <= 65535:
        raise ValueError(f"port out of range: {text!r}")
    return Origin(scheme, match["host"].lower(), port)


def own_origin(scheme: str, host_header: str) -> Origin | None:
    """The origin of a page this server served, from the request's scheme and Host header."""
    try:
        return parse_origin(f"{scheme}://{host_header}")
    except ValueError:
        return None
