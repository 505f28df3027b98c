"""RFC 6455 client frames and upgrade requests, built byte by byte.

For peers that aiohttp's client cannot be: the raw test peer (``tests/wsraw.py``), which
sends invalid frames on purpose, and the benchmark's load generator, which builds its
frames once and writes them over and over.
"""

from __future__ import annotations

import base64
import hashlib
import os
import struct

OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def mask_payload(payload: bytes, key: bytes) -> bytes:
    """``payload`` XORed with the 4-byte ``key`` repeated, as a client must send it."""
    n = len(payload)
    if not n:
        return b""
    stream = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(payload, "big") ^ int.from_bytes(stream, "big")).to_bytes(n, "big")


def encode_frame(
    opcode: int,
    payload: bytes,
    *,
    fin: bool = True,
    mask: bool = True,
    rsv: int = 0,
    key: bytes | None = None,
) -> bytes:
    """Serialise one client frame.

    Clients must mask, so ``mask=False`` makes an invalid frame; ``rsv`` sets the three
    reserved bits (4 is RSV1). ``key`` is the masking key, random when not given.
    """
    head = bytes([(0x80 if fin else 0) | (rsv << 4) | opcode])
    length = len(payload)
    mask_bit = 0x80 if mask else 0
    if length < 126:
        head += bytes([mask_bit | length])
    elif length < 1 << 16:
        head += bytes([mask_bit | 126]) + struct.pack("!H", length)
    else:
        head += bytes([mask_bit | 127]) + struct.pack("!Q", length)
    if not mask:
        return head + payload
    key = os.urandom(4) if key is None else key
    return head + key + mask_payload(payload, key)


def close_payload(code: int, reason: bytes = b"") -> bytes:
    """The payload of a close frame: the code in network order, then the reason."""
    return struct.pack("!H", code) + reason


def new_key() -> str:
    """A random Sec-WebSocket-Key."""
    return base64.b64encode(os.urandom(16)).decode()


def accept_value(key: str) -> str:
    """The Sec-WebSocket-Accept a server must answer ``key`` with."""
    return base64.b64encode(hashlib.sha1(key.encode() + WS_GUID).digest()).decode()


def upgrade_request(
    host: str, port: int, *, origin: str | None = None, key: str | None = None
) -> bytes:
    """A WebSocket upgrade request for ``/`` (no extensions offered)."""
    lines = [
        "GET / HTTP/1.1",
        f"Host: {host}:{port}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {new_key() if key is None else key}",
        "Sec-WebSocket-Version: 13",
    ]
    if origin is not None:
        lines.append(f"Origin: {origin}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()
