"""The client behind trusted reverse proxies (TRUSTED_PROXIES): X-Forwarded-For and -Proto.

Only a request whose peer is itself a trusted proxy may name another client address:
X-Forwarded-For is then read from the right (each proxy appends the address it received
the request from), skipping addresses that are trusted proxies too, and the first one
that is not is the client. Anything to its left was written by the client and is
ignored. From any other peer the header is ignored, so a client cannot pick the address
its connections are counted and logged under.

X-Forwarded-Proto is believed under the same condition: a proxy that terminates TLS
says the client used https, so the same-origin rule compares a page's Origin with
``https://host``. Only ``http`` and ``https`` are taken. X-Forwarded-Host is not read:
the proxy is expected to pass the Host header through (deploy/nginx/echo.conf does), and
a second source for the host would only be a second thing to spoof.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address

FORWARDED_SCHEMES = frozenset({"http", "https"})
_PLAIN_ADDRESS = re.compile(r"[0-9A-Fa-f.:]{2,45}")


def parse_trusted_proxies(text: str) -> tuple[Network, ...]:
    """Comma-separated IP addresses or CIDR networks; empty = none. ValueError otherwise."""
    networks = []
    for item in text.split(","):
        item = item.strip()
        if item:
            networks.append(ipaddress.ip_network(item, strict=False))
    return tuple(networks)


def _address(text: str) -> Address | None:
    """The peer's address (as the socket reports it), or None if it is none."""
    try:
        address = ipaddress.ip_address(text.strip())
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def forwarded_address(entry: str) -> Address | None:
    """An X-Forwarded-For entry as an address, if it is a plain IPv4 or IPv6 address.

    Only hex digits, dots and colons (at most 45 of them, the longest IPv6 text),
    optionally in brackets: Python's ``ipaddress`` also takes an IPv6 scope id
    (``fe80::1%<anything>``), which would carry whatever the sender wrote into the log
    and into the per-address limit key.
    """
    text = entry.strip(" \t")
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    if _PLAIN_ADDRESS.fullmatch(text) is None:
        return None
    return _address(text)


class TrustedProxies:
    """Decides a request's client address and scheme from its peer and X-Forwarded-* headers."""

    def __init__(self, networks: Iterable[Network]) -> None:
        self.networks = tuple(networks)

    def trusts(self, address: Address) -> bool:
        return any(address in network for network in self.networks)

    def _trusted_peer(self, peer: str | None) -> Address | None:
        """The peer's address if it is a trusted proxy, else None."""
        if not self.networks or peer is None:
            return None
        address = _address(peer)
        return address if address is not None and self.trusts(address) else None

    def client_address(self, peer: str | None, forwarded_for: Iterable[str]) -> str | None:
        """The client address: ``peer`` unless it is a trusted proxy that forwarded one.

        ``forwarded_for`` are the X-Forwarded-For header values in the order received.
        An entry that is not a plain IP address (see :func:`forwarded_address`) ends
        the walk: the address to its right (the last one a trusted proxy vouched for)
        is used.
        """
        current = self._trusted_peer(peer)
        if current is None:
            return peer
        entries = [entry for value in forwarded_for for entry in value.split(",")]
        for entry in reversed(entries):
            hop = forwarded_address(entry)
            if hop is None:
                break
            current = hop
            if not self.trusts(hop):
                break
        return str(current)

    def scheme(self, peer: str | None, scheme: str, forwarded_proto: Iterable[str]) -> str:
        """The scheme the client used: ``scheme`` unless a trusted proxy forwarded another.

        ``forwarded_proto`` are the X-Forwarded-Proto header values in the order received.
        The right-most entry counts (the one the proxy next to us wrote, as it appends
        last); it is used only if it is ``http`` or ``https``, in any case.
        """
        if self._trusted_peer(peer) is None:
            return scheme
        entries = [entry.strip().lower() for value in forwarded_proto for entry in value.split(",")]
        if entries and entries[-1] in FORWARDED_SCHEMES:
            return entries[-1]
        return scheme
