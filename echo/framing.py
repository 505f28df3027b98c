"""Where a connection's WebSocket frames begin, and what their headers say (sans-I/O).

aiohttp's frame parser accepts unmasked client frames, which RFC 6455 section 5.1 says
a server must fail the connection on, and aiohttp offers no public way to see a frame's
mask bit. :class:`StreamTracker` is fed
every chunk a connection receives, in order, before aiohttp sees it (echo.listeners
does that for every connection, whatever the engine), and says how much of each chunk
may be passed on.

The exact rule for where the frames begin:

- A connection carries HTTP/1.1 requests until one is upgraded. The tracker follows
  their framing as RFC 9112 section 6 defines it: a head ends at its first empty line
  (CRLF, as aiohttp requires); a body is Content-Length bytes, or chunked; nothing
  else carries a body in a request.
- A head that asks for a WebSocket (a ``Connection`` header with the ``upgrade`` token,
  an ``Upgrade: websocket`` header, and no body) ends the HTTP part: every byte after
  it is taken as WebSocket frames, and held (:attr:`holding`) until the server has
  upgraded the connection (:meth:`StreamTracker.release`); if it refuses, they go with
  the connection, never parsed as HTTP. aiohttp too stops parsing HTTP right after such a
  head (every release in the allowed range), and the server upgrades no other
  request: one with a body is refused, and a refused upgrade ends its connection
  once answered (echo.server), so the bytes after such a head are never read as HTTP.
  The test is a superset of aiohttp's own (which takes only the first ``Connection``
  and ``Upgrade`` headers), so it cannot miss a head aiohttp upgrades.
- What the tracker cannot follow stops it (:attr:`lost`): a line over 64 KiB, a
  ``Transfer-Encoding`` other than ``chunked``, a ``Content-Length`` that is not digits
  or comes twice, both of them, a bad chunk size, CONNECT. aiohttp answers all of
  these with 400 and closes, except a very long line within its own limits; a
  WebSocket upgraded on a connection whose tracker is lost cannot be checked, and is
  failed at once (1002) by the engine.

In the frames, the tracker walks the headers only (payload bytes are skipped, never
read):

- a frame without the mask bit stops the stream right before it (:attr:`violation`),
  so nothing from it on reaches aiohttp;
- a data frame that declares more than ``limit`` payload bytes (MAX_MESSAGE_SIZE; for
  a compressed one, more than DEFLATE can expand that many bytes to) stops it too, at
  its header (:attr:`too_big`; the engine then fails the connection with 1009).
  aiohttp 3.14.0-3.14.3 refuse an oversized frame only once it is complete, buffering
  whatever it declared meanwhile; this bound holds on every release.

A frame header cut by the end of a chunk is held back until it is complete, so that
aiohttp never sees part of a frame that stops the stream. :meth:`StreamTracker.feed`
returns ``data`` itself when all of it passes, else the list of pieces that do.

With ``lazy=True`` (the gate's tracker) a chunk that is exactly one whole head of at
most LAZY_HEAD bytes, the way clients send an upgrade request, is only counted
(:attr:`requests`) and kept (so an idle keep-alive HTTP connection keeps at most that
much until its next request, or its keep-alive timeout); what it asks
for is read when that matters: when the next chunk comes, or at :meth:`release`,
when the server has upgraded the connection. Then nothing came after the head, and
the server upgrades only a head that asks for a WebSocket, so the frames begin right
after it unless the head could announce a body or is CONNECT: :meth:`release` looks
for those two in one search (and reads the head as ever if it finds any hint of
them), before it releases what was held. Reading every such head in full was about
4% of a handshake's instructions.
"""

from __future__ import annotations

import re

_HEAD = 0  # reading a request head, line by line
_BODY = 1  # skipping ``_left`` bytes of a Content-Length body
_CHUNK_SIZE = 2  # reading a chunk-size line
_CHUNK_DATA = 3  # skipping ``_left`` bytes of chunk data
_CHUNK_END = 4  # the CRLF after chunk data (``_left`` bytes of it to come)
_TRAILERS = 5  # trailer lines after the last chunk, up to an empty line
FRAMES = 6  # WebSocket frames
LOST = 7  # not followed any more: everything passes
STOPPED = 8  # after an unmasked frame: nothing passes

_NOTHING: list[bytes] = []  # shared by upgraded connections (never appended to)
_NO_LINE = bytearray()  # likewise
MAX_LINE = 65_536  # longer head or chunk lines are not followed (aiohttp's limit is 8190)
LAZY_HEAD = 4096  # a longer whole head is read at once, even by a lazy tracker
_CRLF = b"\r\n"
# The header lines the tracker reads, and how each begins in a lower-cased head (a
# field's name is what precedes its line's first colon). Values are only compared in
# lower case or as digits, so a lower-cased head gives the same answers.
_FIELDS = tuple(
    (name, b"\r\n" + name + b":")
    for name in (b"content-length", b"transfer-encoding", b"connection", b"upgrade")
)


# Any header line whose name starts like one that frames a body: a superset of what
# _whole_head reads as Content-Length or Transfer-Encoding.
_BODY_HINT = re.compile(rb"\r\n(?:content-length|transfer-encoding)", re.IGNORECASE)


class StreamTracker:
    """Follows one connection's bytes: HTTP requests, then WebSocket frame headers.

    ``requests`` counts the complete request heads; ``seen`` is set by every chunk (the
    fast engine's heartbeat reads and clears it).
    """

    __slots__ = (
        "_chunked",
        "_head",
        "_left",
        "_lengths",
        "_line",
        "_method",
        "_pending",
        "_skip",
        "_upgrade",
        "_websocket",
        "held",
        "held_bytes",
        "holding",
        "lazy",
        "limit",
        "phase",
        "requests",
        "seen",
        "too_big",
    )

    def __init__(self, limit: int = 0, lazy: bool = False) -> None:
        self.limit = limit  # bytes a data message may have (0: no limit)
        self.lazy = lazy  # see the module
        self._pending: bytes | None = None  # a whole head not read yet (lazy)
        self.too_big = False
        self.holding = False  # frames before the upgrade are held until release()
        self.held: list[bytes] = []
        self.held_bytes = 0
        self.phase = _HEAD
        self.requests = 0
        self.seen = False
        self._line = bytearray()  # a line cut by the end of a chunk
        self._left = 0  # body, chunk or CRLF bytes still to skip
        self._skip = 0  # frames: bytes of the current frame (mask, payload) still to come
        self._head = b""  # frames: the start of a frame header cut by the end of a chunk
        # What _new_head() sets, without its call (once per connection).
        self._method: bytes | None = None
        self._lengths: list[bytes] = []
        self._chunked: list[bytes] = []
        self._upgrade = False
        self._websocket = False

    def _new_head(self) -> None:
        self._method = None
        self._lengths = []
        self._chunked = []
        self._upgrade = False  # a Connection header with the upgrade token
        self._websocket = False  # an Upgrade: websocket header

    @property
    def lost(self) -> bool:
        """Whether the tracker has stopped following the stream (see the module)."""
        return self.phase == LOST

    @property
    def in_frames(self) -> bool:
        """Whether the bytes now coming are WebSocket frames (an upgrade head was seen)."""
        return self.phase == FRAMES or self.phase == STOPPED

    @property
    def violation(self) -> bool:
        """Whether an unmasked frame stopped the stream."""
        return self.phase == STOPPED and not self.too_big

    def feed(self, data: bytes) -> bytes | list[bytes]:
        """Follow ``data``; return what may be passed on: ``data`` itself, or the
        pieces of it (and of held-back headers) that pass (none once stopped)."""
        self.seen = True
        if self._pending is not None:
            self._read_pending()
        phase = self.phase
        if phase == FRAMES:
            if self.holding:
                return self._held_back(self.frames(data, 0))
            return self.frames(data, 0)
        if phase == LOST:
            return data
        if phase == STOPPED:
            return []
        if (
            phase == _HEAD
            and self._method is None
            and not self._line
            and 4 < len(data) <= MAX_LINE
            and data.find(b"\r\n\r\n") == len(data) - 4
            and not data.startswith(b"\r\n")
        ):  # a chunk that is one whole head (an upgrade request as clients send it)
            if self.lazy and len(data) <= LAZY_HEAD:
                self._pending = data[:-2]
                self.requests += 1
            else:
                self._whole_head(data[:-2])
            return data
        return self._http(data)

    # -- HTTP ---------------------------------------------------------------------------

    def _http(self, data: bytes) -> bytes | list[bytes]:
        size = len(data)
        pos = 0
        while pos < size:
            phase = self.phase
            if phase in (_BODY, _CHUNK_DATA, _CHUNK_END):
                step = min(self._left, size - pos)
                if phase == _CHUNK_END and data[pos : pos + step] != _CRLF[2 - self._left :][:step]:
                    return self._lose(data)
                self._left -= step
                pos += step
                if self._left == 0:
                    if phase == _BODY:
                        self.phase = _HEAD
                    elif phase == _CHUNK_DATA:
                        self.phase, self._left = _CHUNK_END, 2
                    else:
                        self.phase = _CHUNK_SIZE
                continue
            if phase == FRAMES:  # the frames begin here
                frames = self.frames(data[pos:], 0)
                if self.holding:
                    self._held_back(frames)
                    return [data[:pos]]
                return [data[:pos], *([frames] if isinstance(frames, bytes) else frames)]
            if phase == LOST:
                return data
            if phase == _HEAD and self._method is None and not self._line:
                # A whole head in this chunk (the common case): its fields are found
                # in one search, not line by line. Within MAX_LINE no line is too long.
                end = data.find(b"\r\n\r\n", pos)
                if pos < end <= pos + MAX_LINE and not data.startswith(b"\r\n", pos):
                    self._whole_head(data[pos : end + 2])
                    pos = end + 4
                    continue
            # A line: _HEAD, _CHUNK_SIZE or _TRAILERS.
            end = data.find(b"\r\n", pos)
            if end < 0 or self._line:
                line, pos = self._join_line(data, pos, end)
                if line is None:
                    return data
            else:
                line, pos = data[pos:end], end + 2
            if len(line) > MAX_LINE:
                return self._lose(data)
            if phase == _HEAD:
                self._head_line(line)
            elif phase == _CHUNK_SIZE:
                self._chunk_size(line)
            elif not line:  # the empty line after the trailers
                self.phase = _HEAD
        return data

    def _join_line(self, data: bytes, pos: int, end: int) -> tuple[bytes | None, int]:
        """A line cut by chunk ends: keep its start, or complete it. A CR ending one
        chunk and the LF starting the next end the line too."""
        buffered = self._line
        if buffered.endswith(b"\r") and data[pos : pos + 1] == b"\n":
            line = bytes(buffered[:-1])
            buffered.clear()
            return line, pos + 1
        if end < 0:
            buffered += data[pos:]
            if len(buffered) > MAX_LINE + 1:
                self.phase = LOST
            return None, len(data)
        buffered += data[pos:end]
        line = bytes(buffered)
        buffered.clear()
        return line, end + 2

    def _head_line(self, line: bytes) -> None:
        if self._method is None:
            if line:  # empty lines before a request line are skipped, as aiohttp does
                self._method = line.split(b" ", 1)[0]
            return
        if line:
            colon = line.find(b":")
            if colon > 0:
                self._field(line[:colon].lower(), line[colon + 1 :])
            return
        self._head_done()

    def _read_pending(self) -> None:
        """Read the head :meth:`feed` only counted (lazy), as it would have read it."""
        head = self._pending
        assert head is not None
        self._pending = None
        self.requests -= 1  # counted again by _whole_head
        self._whole_head(head)

    def _whole_head(self, head: bytes) -> None:
        """A complete head without its empty line (every line ends with CRLF), as
        :meth:`_head_line` would take it line by line."""
        first = head.find(b"\r\n")
        lowered = head.lower()  # ASCII only, as in _head_line: the offsets stay
        # find(), not ``in``: bytes.__contains__ tries its argument as an integer first,
        # and formats a TypeError for a bytes one.
        if lowered.find(b"\r\ncontent-length:") < 0 and lowered.find(b"\r\ntransfer-encoding:") < 0:
            # No body (an upgrade, the common case): only whether it asks for a
            # WebSocket, without the line-by-line state (still as _new_head left it).
            upgrade = websocket = False
            at = lowered.find(b"\r\nconnection:", first)
            while at >= 0:
                end = lowered.find(b"\r\n", at + 13)
                value = lowered[at + 13 : end].strip()
                upgrade = (
                    upgrade
                    or value == b"upgrade"  # as most clients send it: no list to split
                    or b"upgrade" in [t.strip() for t in value.split(b",")]
                )
                at = lowered.find(b"\r\nconnection:", end)
            at = lowered.find(b"\r\nupgrade:", first)
            while at >= 0:
                end = lowered.find(b"\r\n", at + 10)
                websocket = websocket or lowered[at + 10 : end].strip() == b"websocket"
                at = lowered.find(b"\r\nupgrade:", end)
            self.requests += 1
            if head.startswith(b"CONNECT") and head[:first].split(b" ", 1)[0] == b"CONNECT":
                self.phase = LOST
            else:
                self.phase = FRAMES if upgrade and websocket else _HEAD
            self.holding = self.phase == FRAMES
            return
        self._method = head[:first].split(b" ", 1)[0]
        for name, marker in _FIELDS:
            at = lowered.find(marker, first)
            while at >= 0:
                start = at + len(marker)
                end = lowered.find(b"\r\n", start)
                self._field(name, lowered[start:end])
                at = lowered.find(marker, end)
        self._head_done()

    def _field(self, name: bytes, value: bytes) -> None:
        """A header line: ``name`` in lower case, ``value`` what follows its colon."""
        if name == b"content-length":
            self._lengths.append(value.strip())
        elif name == b"transfer-encoding":
            self._chunked.append(value.strip().lower())
        elif name == b"connection":
            tokens = value.lower().split(b",")
            self._upgrade = self._upgrade or any(t.strip() == b"upgrade" for t in tokens)
        elif name == b"upgrade":
            self._websocket = self._websocket or value.strip().lower() == b"websocket"

    def _head_done(self) -> None:
        """The empty line: the head is complete; what comes next?"""
        self.requests += 1
        lengths, chunked = self._lengths, self._chunked
        websocket = self._upgrade and self._websocket
        method = self._method
        self._new_head()
        if method == b"CONNECT" or len(lengths) > 1 or len(chunked) > 1:
            self.phase = LOST
        elif chunked:
            self.phase = _CHUNK_SIZE if chunked == [b"chunked"] and not lengths else LOST
        elif lengths:
            if not lengths[0].isdigit():
                self.phase = LOST
            elif int(lengths[0]) > 0:
                self.phase, self._left = _BODY, int(lengths[0])
            else:
                self.phase = FRAMES if websocket else _HEAD
        else:
            self.phase = FRAMES if websocket else _HEAD
        self.holding = self.phase == FRAMES

    def _held_back(self, passed: bytes | list[bytes]) -> list[bytes]:
        """Hold what would pass until :meth:`release`; nothing passes now."""
        pieces = [passed] if isinstance(passed, bytes) else passed
        self.held += pieces
        self.held_bytes += sum(map(len, pieces))
        return []

    def release(self) -> list[bytes]:
        """The connection is upgraded: what was held, in order, to pass on now (if the
        frames begin where it was upgraded: :attr:`in_frames`). The HTTP state is never
        used again: it goes (memory of every idle WebSocket).

        A head only counted so far (lazy) is the one upgraded, with nothing after it
        yet: the frames begin next, unless it may announce a body or is CONNECT, when
        it is read as ever (see the module)."""
        head = self._pending
        if head is not None:
            if head.startswith(b"CONNECT") or _BODY_HINT.search(head) is not None:
                self._read_pending()
            else:
                self._pending = None
                self.phase = FRAMES
        held = self.held
        self.holding = False
        self.held = self._lengths = self._chunked = _NOTHING
        self._line = _NO_LINE
        self.held_bytes = 0
        return held

    def _chunk_size(self, line: bytes) -> None:
        text = line.split(b";", 1)[0]
        if not text or any(c not in b"0123456789abcdefABCDEF" for c in text) or len(text) > 16:
            self.phase = LOST
            return
        size = int(text, 16)
        if size == 0:
            self.phase = _TRAILERS
        else:
            self.phase, self._left = _CHUNK_DATA, size

    def _lose(self, data: bytes) -> bytes:
        self.phase = LOST
        return data

    # -- WebSocket frames ----------------------------------------------------------------

    def frames(self, data: bytes, start: int = 0) -> bytes | list[bytes]:
        """Walk the frame headers in ``data`` from ``start`` (``data[:start]`` is HTTP,
        passed on); what :meth:`feed` does once the frames have begun, called by the
        gate directly then. The common case (whole headers, nothing stopped) returns
        ``data`` after a few operations per frame, in locals: it runs for every chunk a
        WebSocket receives."""
        self.seen = True
        size = len(data)
        pos = start + self._skip
        out: list[bytes] | None = None  # once a held-back header passes
        keep = 0  # data[keep:pos] is the run being passed on
        if self._head:  # a header begun in the last chunk: complete it from this one
            head = self._head
            view = head + data[start : start + 14]
            header = _header_size(view)
            if header < 0 or header > len(view):
                return self._hold(data, view, None, 0, start)
            length = _payload_size(view, header)
            if not view[1] & 0x80 or self._over(view[0], length):
                self.phase = STOPPED
                return [data[:start]]
            out = [data[:start], head]  # the held-back start of a frame that passes
            keep = start
            pos = start + header - len(head) + 4 + length
            self._head = b""
        while pos < size:
            if pos + 2 > size:
                return self._hold(data, data[pos:], out, keep, pos)
            second = data[pos + 1]
            if second < 0x80:  # no mask bit
                self.phase = STOPPED
                return [*(out or ()), data[keep:pos]]
            length = second & 0x7F
            if length < 126:  # a short frame: 125 bytes at most, nothing to bound
                pos += 6 + length
                continue
            header = 4 if length == 126 else 10
            if pos + header > size:
                return self._hold(data, data[pos:], out, keep, pos)
            length = int.from_bytes(data[pos + 2 : pos + header], "big")
            if self._over(data[pos], length):
                self.phase = STOPPED
                return [*(out or ()), data[keep:pos]]
            pos += header + 4 + length
        self._skip = pos - size if pos > size else 0
        if out is None:
            return data
        out.append(data[keep:])
        return out

    def _over(self, first: int, length: int) -> bool:
        """Whether a frame whose header starts with ``first`` and declares ``length``
        payload bytes is past the limit (then :attr:`too_big`). A data frame's payload
        may not exceed it; a compressed one's (RSV1, or any continuation) by what
        DEFLATE can add: 5 bytes per 16 KiB stored block, and a little more. The sum of
        a fragmented message is aiohttp's to check (after each fragment, at the latest);
        this bounds what one frame makes it buffer."""
        limit = self.limit
        if not limit or first & 0x08:  # no limit, or a control frame (aiohttp: 125 B)
            return False
        if first & 0x40 or not first & 0x07:
            limit += (limit >> 12) + 1024
        if length > limit:
            self.too_big = True
            return True
        return False

    def _hold(
        self, data: bytes, cut: bytes, out: list[bytes] | None, keep: int, pos: int
    ) -> list[bytes]:
        """Keep ``cut``, a frame header's start, until the next chunk completes it."""
        self._head = cut
        self._skip = 0
        return [*(out or ()), data[keep:pos]]


def _header_size(view: bytes) -> int:
    """The size of the frame header at the start of ``view`` (-1: too short to say)."""
    if len(view) < 2:
        return -1
    length = view[1] & 0x7F
    return 2 if length < 126 else 4 if length == 126 else 10


def _payload_size(view: bytes, header: int) -> int:
    length = view[1] & 0x7F
    return length if header == 2 else int.from_bytes(view[2:header], "big")
