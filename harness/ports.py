"""Free loopback ports."""

from __future__ import annotations

import socket


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now at ``host`` (IPv4 or IPv6 loopback).

    The kernel picks it; another process may take it before the caller binds, which on a
    loopback test machine is rare enough that callers do not retry.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])
