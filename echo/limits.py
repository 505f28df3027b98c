"""Connection admission: a global and a per-address count, exact under concurrency.

The event loop runs one callback at a time and ``try_acquire`` never awaits, so a
check and its increment cannot interleave with another handshake's.
"""

from __future__ import annotations

from enum import Enum


class Refusal(Enum):
    """Why a handshake was turned away; the value is the name used in logs and metrics."""

    ORIGIN = "origin"
    LIMIT = "limit"
    PER_IP_LIMIT = "per_ip_limit"
    DUPLICATE_ORIGIN = "duplicate_origin"  # more than one Origin header: 400
    DRAINING = "draining"  # not a limit: the server is shutting down (echo.readiness)


class ConnectionLimiter:
    """Counts open WebSocket connections, in total and per remote address."""

    def __init__(self, max_total: int, max_per_ip: int = 0) -> None:
        self.max_total = max_total
        self.max_per_ip = max_per_ip
        self.open = 0
        self._by_ip: dict[str, int] = {}

    def try_acquire(self, ip: str) -> Refusal | None:
        """Take a slot for ``ip``, or say which limit refuses it."""
        held = self._by_ip.get(ip, 0)
        if self.max_per_ip and held >= self.max_per_ip:
            return Refusal.PER_IP_LIMIT
        if self.open >= self.max_total:
            return Refusal.LIMIT
        self.open += 1
        self._by_ip[ip] = held + 1
        return None

    def release(self, ip: str) -> None:
        """Give back a slot taken by ``try_acquire``."""
        self.open -= 1
        held = self._by_ip[ip] - 1
        if held:
            self._by_ip[ip] = held
        else:
            del self._by_ip[ip]

    def held_by(self, ip: str) -> int:
        return self._by_ip.get(ip, 0)
