"""Origin parsing and comparison (RFC 6454 serialisation, as browsers send it).

Besides exact origins, ALLOWED_ORIGINS takes patterns ``scheme://*.example.com[:port]``
and ALLOWED_HOSTS takes host names and ``*.example.com``: the ``*`` stands for exactly
one DNS label, as in a TLS certificate, so ``*.example.com`` matches
``app.example.com`` but neither ``example.com`` nor ``a.b.example.com`` nor
``example.com.evil.net``. A ``*`` anywhere else is refused at start-up.
"""

from __future__ import annotations

import ipaddress
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


class OriginPattern(NamedTuple):
    """``scheme://*.suffix[:port]``: any origin of that scheme and port one label below."""

    scheme: str
    suffix: str
    port: int | None

    def matches(self, origin: Origin) -> bool:
        return (
            origin.scheme == self.scheme
            and origin.port == self.port
            and host_matches(origin.host, "*." + self.suffix)
        )

    def __str__(self) -> str:
        return str(Origin(self.scheme, "*." + self.suffix, self.port))


_NAME_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")


def parse_host_pattern(text: str) -> str:
    """A host name, or ``*.`` and a name of at least two labels; lower-cased.

    ``*.com`` would admit every .com site and is refused; a name with ``*`` anywhere but
    as the whole first label, or an IP address under ``*.``, is refused too.
    """
    host = text.strip().lower().removesuffix(".")
    name = host.removeprefix("*.")
    labels = name.split(".")
    if not all(_NAME_LABEL.match(label) for label in labels) or len(name) > 253:
        raise ValueError(f"not a host name or *.name: {text!r}")
    if host.startswith("*.") and (len(labels) < 2 or _is_ip(name)):
        raise ValueError(f"*. needs a name of two labels or more: {text!r}")
    return host


def host_matches(host: str, pattern: str) -> bool:
    """``host`` (lower case) is ``pattern``, or one label below it when it is ``*.name``."""
    if not pattern.startswith("*."):
        return host == pattern
    label, dot, rest = host.partition(".")
    return bool(dot) and bool(label) and rest == pattern[2:]


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host[1:-1] if host.startswith("[") else host)
    except ValueError:
        return False
    return True


def parse_allowed_origin(text: str) -> Origin | OriginPattern:
    """An entry of ALLOWED_ORIGINS: an exact origin, or ``scheme://*.name[:port]``."""
    if "*" not in text:
        return parse_origin(text)
    exact = parse_origin(text)  # the same syntax, with "*." as the start of the host
    if exact.scheme not in DEFAULT_PORTS:
        raise ValueError(f"a pattern needs http, https, ws or wss: {text!r}")
    host = parse_host_pattern(exact.host)
    if not host.startswith("*."):
        raise ValueError(f"'*' must be the whole first label: {text!r}")
    return OriginPattern(exact.scheme, host[2:], exact.port)


def is_local_name(host: str) -> bool:
    """An IP literal, ``localhost`` or a ``*.localhost`` name: no DNS rebinding there.

    A rebinding attack needs a name whose DNS answer the attacker controls; browsers
    resolve ``localhost`` names to loopback themselves (RFC 6761), and a page whose
    origin is an IP address was loaded from that address.
    """
    return host == "localhost" or host.endswith(".localhost") or _is_ip(host)


def own_origin(scheme: str, host_header: str) -> Origin | None:
    """The origin of a page this server served, from the request's scheme and Host header."""
    try:
        return parse_origin(f"{scheme}://{host_header}")
    except ValueError:
        return None
