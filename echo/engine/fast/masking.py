"""RFC 6455 section 5.1: a server must fail the connection on an unmasked client frame.

aiohttp's frame parser accepts unmasked frames on purpose (its threat model keeps this
lenient). :class:`MaskedFramesOnly` stands between aiohttp's protocol and that parser:
it walks the frame headers of the byte stream (a few operations per frame; payload
bytes are skipped, not read), passes every chunk on unchanged, and at the first frame
without the mask bit hands the parser's queue a protocol error. The handler then sees
an ERROR message, aiohttp sends close 1002 and drops the TCP connection, as it does for
every other protocol error; nothing after the bad frame reaches the parser.
"""

from __future__ import annotations

from typing import Any

from aiohttp import WSCloseCode
from aiohttp.http_websocket import WebSocketError

_EMPTY = (False, b"")


class MaskedFramesOnly:
    """A drop-in for the ``set_parser`` argument of aiohttp's protocol.

    ``seen`` is set by every chunk received: the heartbeat (echo.engine.fast.fastpath) reads and
    clears it, in place of aiohttp's per-chunk ``data_received_cb`` call.
    """

    __slots__ = ("_failed", "_head", "_parser", "_queue", "_skip", "seen")

    def __init__(self, parser: Any, queue: Any) -> None:
        self._parser = parser
        self._queue = queue
        self._head = b""  # the start of a frame header cut by the end of a chunk
        self._skip = 0  # bytes of the current frame's mask and payload still to come
        self._failed = False
        self.seen = False

    def feed_data(self, data: bytes) -> tuple[bool, bytes]:
        self.seen = True
        if self._failed:
            return _EMPTY
        # Walk the frame headers in ``data``; the whole check is inline, as it runs
        # for every chunk received.
        view = data
        if self._head:  # the parser gets ``data`` as it came; the walk needs the cut header
            view = self._head + bytes(data)
            self._head = b""
        size = len(view)
        pos = self._skip
        while pos < size:
            if pos + 2 > size:
                self._head = bytes(view[pos:])
                pos = size
                break
            second = view[pos + 1]
            if not second & 0x80:
                return self._fail()
            length = second & 0x7F
            header = 2 if length < 126 else 4 if length == 126 else 10
            if pos + header > size:
                self._head = bytes(view[pos:])
                pos = size
                break
            if length >= 126:
                length = int.from_bytes(view[pos + 2 : pos + header], "big")
            pos += header + 4 + length
        self._skip = pos - size
        result: tuple[bool, bytes] = self._parser.feed_data(data)
        return result

    def feed_eof(self) -> None:
        self._parser.feed_eof()

    def _fail(self) -> tuple[bool, bytes]:
        """An unmasked frame: the queue gets a protocol error, nothing more is parsed."""
        self._failed = True
        self._queue.set_exception(
            WebSocketError(WSCloseCode.PROTOCOL_ERROR, "unmasked client frame")
        )
        return _EMPTY
