"""Sans-I/O: a message in fragments (the ``fragment`` control's frames), checked by a
decoder written from RFC 6455 (tests/test_controls.py has aiohttp's client reassemble
them over a real connection)."""

from __future__ import annotations

import struct
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from echo.fragments import fragment_frames, frame_header
from harness.frames import OP_BINARY, OP_TEXT


def decode(stream: bytes) -> list[tuple[bool, int, bytes]]:
    """Every (fin, opcode, payload) in a stream of unmasked frames."""
    frames = []
    at = 0
    while at < len(stream):
        first, second = stream[at], stream[at + 1]
        assert first & 0x70 == 0, "no extension bits"
        assert second & 0x80 == 0, "servers do not mask"
        length = second & 0x7F
        at += 2
        if length == 126:
            (length,) = struct.unpack_from("!H", stream, at)
            at += 2
        elif length == 127:
            (length,) = struct.unpack_from("!Q", stream, at)
            at += 8
        frames.append((bool(first & 0x80), first & 0x0F, stream[at : at + length]))
        at += length
    return frames


def check(payload: bytes, opcode: int, size: int) -> list[tuple[bool, int, bytes]]:
    chunks = list(fragment_frames(payload, opcode, size, chunk=1000))
    frames = decode(b"".join(chunks))
    assert b"".join(data for _fin, _op, data in frames) == payload
    assert frames[0][1] == opcode
    assert all(op == 0 for _fin, op, _data in frames[1:])
    assert [fin for fin, _op, _data in frames] == [False] * (len(frames) - 1) + [True]
    assert all(len(data) == size for _fin, _op, data in frames[:-1])
    assert 0 < len(frames[-1][2]) <= size or payload == b""
    return frames


@pytest.mark.parametrize(
    ("length", "size", "count"),
    [(0, 5, 1), (5, 5, 1), (6, 5, 2), (10, 5, 2), (11, 5, 3), (1000, 1, 1000), (70_000, 31, 2259)],
)
def test_fragment_counts_and_sizes(length: int, size: int, count: int) -> None:
    payload = bytes(range(256)) * (length // 256) + bytes(range(length % 256))
    assert len(check(payload, OP_BINARY, size)) == count


def test_headers_follow_the_length_forms() -> None:
    assert frame_header(OP_TEXT, 125, fin=True) == b"\x81\x7d"
    assert frame_header(0, 126, fin=False) == b"\x00\x7e\x00\x7e"
    assert frame_header(0, 65536, fin=True) == b"\x80\x7f" + (65536).to_bytes(8, "big")
    frames = check(b"x" * 200_000, OP_TEXT, 70_000)
    assert [len(data) for _fin, _op, data in frames] == [70_000, 70_000, 60_000]


def test_chunks_stay_near_their_size() -> None:
    chunks = list(fragment_frames(b"a" * 100_000, OP_BINARY, 7, chunk=4096))
    assert all(len(chunk) <= 4096 + 20 for chunk in chunks)


def test_a_million_one_byte_fragments_cost_little() -> None:
    """A 1 MiB message in 1-byte fragments: three bytes out per byte in, made by slices
    (a Python loop per frame would take about a second)."""
    payload = bytes(range(256)) * 4096
    started = time.process_time()
    stream = b"".join(fragment_frames(payload, OP_BINARY, 1))
    spent = time.process_time() - started
    assert len(stream) == 3 * len(payload)
    assert stream[:6] == b"\x02\x01\x00\x00\x01\x01"
    assert stream[-3:] == b"\x80\x01\xff"
    assert spent < 5, "a safety bound, not a speed target"


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=3000), st.integers(1, 400), st.sampled_from([OP_TEXT, OP_BINARY]))
def test_any_message_survives_fragmenting(payload: bytes, size: int, opcode: int) -> None:
    check(payload, opcode, size)
