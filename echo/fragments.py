"""Sans-I/O: one WebSocket message as a sequence of fragments, server frames (unmasked).

aiohttp's public API sends whole messages only (``send_frame`` always sets FIN), so the
``fragment`` test control writes frames of its own: :func:`fragment_frames` turns a
message into its frames (RFC 6455 5.4: the first carries the opcode, the rest are
continuation frames, FIN on the last), joined into chunks of about ``chunk`` bytes that
the caller writes to the transport one at a time, waiting for it to drain in between.

Tiny fragments are cheap to make: a message of 1 MiB in fragments of one byte is a
million frames, whose identical headers are laid out with a handful of strided slice
assignments per chunk rather than a Python loop per frame, so the CPU a peer can make
the server spend stays proportional to the bytes it sends.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator

OP_CONTINUATION = 0x0
CHUNK = 65536  # bytes of frames handed to the transport at a time
_STRIDED_BELOW = 32  # fragment sizes laid out by strided slices rather than per frame


def frame_header(opcode: int, length: int, *, fin: bool) -> bytes:
    """The header of an unmasked frame of ``length`` payload bytes (no extension bits)."""
    first = (0x80 if fin else 0) | opcode
    if length < 126:
        return bytes((first, length))
    if length < 1 << 16:
        return struct.pack("!BBH", first, 126, length)
    return struct.pack("!BBQ", first, 127, length)


def fragment_frames(payload: bytes, opcode: int, size: int, chunk: int = CHUNK) -> Iterator[bytes]:
    """The frames of one message of ``opcode`` in fragments of ``size`` bytes (the last
    may be shorter), as byte strings of about ``chunk`` bytes (at least one frame)."""
    if size < 1:
        raise ValueError("fragment size must be at least 1")
    total = len(payload)
    if total <= size:
        yield frame_header(opcode, total, fin=True) + payload
        return
    view = memoryview(payload)
    yield frame_header(opcode, size, fin=False) + view[:size]
    start = size
    last = total - ((total - 1) % size + 1)  # offset of the final fragment
    middle = frame_header(OP_CONTINUATION, size, fin=False)
    stride = len(middle) + size
    per_chunk = max(1, chunk // stride)
    while start < last:
        count = min(per_chunk, (last - start) // size)
        end = start + count * size
        if size < _STRIDED_BELOW:
            out = bytearray(count * stride)
            for i, byte in enumerate(middle):
                out[i::stride] = bytes((byte,)) * count
            for j in range(size):
                out[len(middle) + j :: stride] = view[start + j : end : size]
            yield bytes(out)
        else:
            yield b"".join(
                middle + view[offset : offset + size] for offset in range(start, end, size)
            )
        start = end
    yield frame_header(OP_CONTINUATION, total - last, fin=True) + view[last:]
