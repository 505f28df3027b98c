"""A raw RFC 6455 peer over asyncio streams, for frames aiohttp's client will not send.

Tests use it to fragment messages, send invalid frames, stay silent on pings and
drip a handshake byte by byte. It speaks only to loopback servers the tests start.
Frames and upgrade requests are built by ``harness.frames`` (shared with the
benchmark's load generator); the opcodes, ``encode_frame`` and ``close_payload`` are
re-exported here.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
from dataclasses import dataclass

from harness import frames
from harness.frames import (
    OP_BINARY,
    OP_CLOSE,
    OP_CONT,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    close_payload,
    encode_frame,
)

__all__ = [
    "OP_BINARY",
    "OP_CLOSE",
    "OP_CONT",
    "OP_PING",
    "OP_PONG",
    "OP_TEXT",
    "Frame",
    "RawWebSocket",
    "close_payload",
    "encode_frame",
]


@dataclass
class Frame:
    fin: bool
    opcode: int
    payload: bytes

    @property
    def close_code(self) -> int | None:
        return struct.unpack("!H", self.payload[:2])[0] if len(self.payload) >= 2 else None


class RawWebSocket:
    """A client connection after a successful (101) handshake."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @staticmethod
    def upgrade_request(host: str, port: int, origin: str | None = None) -> bytes:
        return frames.upgrade_request(host, port, origin=origin)

    @classmethod
    async def connect(
        cls, host: str, port: int, origin: str | None = None, timeout: float = 5.0
    ) -> RawWebSocket:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
        writer.write(cls.upgrade_request(host, port, origin))
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
        status = head.split(b"\r\n", 1)[0]
        if b" 101 " not in status:
            writer.close()
            raise ConnectionError(f"handshake refused: {status!r}")
        return cls(reader, writer)

    async def send(self, opcode: int, payload: bytes = b"", **kwargs: bool | int) -> None:
        self.writer.write(encode_frame(opcode, payload, **kwargs))  # type: ignore[arg-type]
        await self.writer.drain()

    async def send_raw(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def recv(self, timeout: float = 5.0) -> Frame:
        """The next frame from the server (servers never mask)."""

        async def read() -> Frame:
            b0, b1 = await self.reader.readexactly(2)
            length = b1 & 0x7F
            if length == 126:
                (length,) = struct.unpack("!H", await self.reader.readexactly(2))
            elif length == 127:
                (length,) = struct.unpack("!Q", await self.reader.readexactly(8))
            payload = await self.reader.readexactly(length)
            return Frame(bool(b0 & 0x80), b0 & 0x0F, payload)

        return await asyncio.wait_for(read(), timeout)

    async def recv_data(self, timeout: float = 5.0) -> Frame:
        """The next frame that is not a ping (answering nothing)."""
        while True:
            frame = await self.recv(timeout)
            if frame.opcode != OP_PING:
                return frame

    async def eof(self, timeout: float = 5.0) -> bool:
        """Whether the server closes the TCP connection within ``timeout``; then close ours."""
        try:
            while await asyncio.wait_for(self.reader.read(65536), timeout):
                pass
        except TimeoutError:
            return False
        except ConnectionError:
            pass  # a reset is a drop too
        await self.aclose()
        return True

    def abort(self) -> None:
        """Drop the TCP connection without a close frame."""
        transport = self.writer.transport
        transport.abort()

    async def aclose(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError):
            await self.writer.wait_closed()
