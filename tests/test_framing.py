"""echo.framing: where the frames begin in a connection's bytes, and what their headers say.

The tracker is fed the bytes as TCP may cut them (every seed cuts them differently);
what it passes on, where it stops and the close code it reads must not depend on that.
"""

from __future__ import annotations

import random

import pytest

from echo.framing import LAZY_HEAD, StreamTracker
from tests.wsraw import OP_BINARY, OP_CONT, OP_PING, OP_TEXT, encode_frame

UPGRADE = (
    b"GET / HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)


def cuts(data: bytes, seed: int) -> list[bytes]:
    """``data`` cut at random places, as TCP may deliver it."""
    rng = random.Random(seed)
    chunks, pos = [], 0
    while pos < len(data):
        step = rng.choice([1, 2, 3, 5, 7, 13, 200, 70_000])
        chunks.append(data[pos : pos + step])
        pos += step
    return chunks


def run(data: bytes, seed: int, limit: int = 0) -> tuple[StreamTracker, bytes]:
    """Feed ``data`` in random cuts; return the tracker and the bytes it let through."""
    tracker = StreamTracker(limit)
    passed = bytearray()
    for chunk in cuts(data, seed):
        passed += joined(tracker.feed(chunk))
        if tracker.holding and seed % 2:  # upgraded at once, or after everything came
            passed += joined(tracker.release())
    passed += joined(tracker.release())
    return tracker, bytes(passed)


def joined(passed: bytes | list[bytes]) -> bytes:
    return passed if isinstance(passed, bytes) else b"".join(passed)


def masked_frames() -> list[bytes]:
    return [
        encode_frame(OP_TEXT, b"hi"),
        encode_frame(OP_BINARY, b"x" * 125),
        encode_frame(OP_BINARY, b"y" * 126),
        encode_frame(OP_BINARY, b"z" * 65_536),
        encode_frame(OP_PING, b""),
        encode_frame(OP_TEXT, b""),
    ]


def test_masked_frames_after_the_upgrade_pass_through_unchanged() -> None:
    data = UPGRADE + b"".join(masked_frames())
    for seed in range(40):
        tracker, passed = run(data, seed)
        assert passed == data
        assert tracker.in_frames
        assert not tracker.violation
        assert tracker.requests == 1


def test_an_unmasked_frame_anywhere_stops_the_stream_right_before_it() -> None:
    for position in range(4):
        frames = masked_frames()[:3]
        frames.insert(position, encode_frame(OP_BINARY, b"\x00" * 130, mask=False))
        data = UPGRADE + b"".join(frames)
        before = UPGRADE + b"".join(frames[:position])
        for seed in range(20):
            tracker, passed = run(data, seed)
            assert tracker.violation
            # Everything before the bad frame, nothing of it (a header cut by the end of
            # a chunk is held back until it is whole).
            assert passed == before


def test_frames_pipelined_with_the_upgrade_in_one_chunk_are_checked() -> None:
    tracker = StreamTracker()
    early = encode_frame(OP_TEXT, b"early")
    # Until the server has upgraded the connection, only the request passes.
    assert joined(tracker.feed(UPGRADE + early + encode_frame(OP_TEXT, b"bad", mask=False))) == (
        UPGRADE
    )
    assert tracker.holding
    assert tracker.violation
    assert joined(tracker.feed(encode_frame(OP_TEXT, b"later"))) == b""
    assert joined(tracker.release()) == early


def keep_alive_requests() -> bytes:
    """Requests before the upgrade whose bodies hold what looks like an upgrade and an
    unmasked frame: read as bodies, never as a head or frames."""
    decoy = UPGRADE + encode_frame(OP_TEXT, b"decoy", mask=False)
    chunked = b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in (decoy[:40], decoy[40:]))
    return (
        b"GET /healthz HTTP/1.1\r\nHost: h\r\n\r\n"
        + b"POST /x HTTP/1.1\r\nHost: h\r\nContent-Length: %d\r\n\r\n" % len(decoy)
        + decoy
        + b"POST /y HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
        + chunked
        + b"0\r\nX-Trailer: 1\r\n\r\n"
        + b"\r\n"  # an empty line between requests is skipped, as aiohttp does
        + b"GET /z HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n"
    )


def test_requests_with_bodies_before_the_upgrade_are_followed_exactly() -> None:
    data = keep_alive_requests() + UPGRADE + encode_frame(OP_TEXT, b"hi")
    for seed in range(40):
        tracker, passed = run(data, seed)
        assert passed == data
        assert tracker.requests == 5
        assert tracker.in_frames
        assert not tracker.violation
    bad = data + encode_frame(OP_TEXT, b"bad", mask=False)
    for seed in range(10):
        tracker, passed = run(bad, seed)
        assert tracker.violation
        assert passed == data


@pytest.mark.parametrize(
    "head",
    [
        b"GET / HTTP/1.1\r\nUpgrade: websocket\r\n\r\n",  # no Connection: upgrade
        b"GET / HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n",
        b"GET / HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: websocket, h2c\r\n\r\n",
    ],
    ids=["no-connection-token", "h2c", "websocket-in-a-list"],
)
def test_heads_that_do_not_ask_for_a_websocket_stay_http(head: bytes) -> None:
    tracker = StreamTracker()
    tracker.feed(head + encode_frame(OP_TEXT, b"x", mask=False))
    assert not tracker.in_frames
    assert not tracker.violation


def test_an_upgrade_with_a_body_is_not_where_frames_begin() -> None:
    head = (
        b"GET / HTTP/1.1\r\nConnection: upgrade\r\nUpgrade: websocket\r\nContent-Length: 3\r\n\r\n"
    )
    tracker = StreamTracker()
    tracker.feed(head + b"abc")
    assert not tracker.in_frames
    assert tracker.requests == 1


def test_the_connection_and_upgrade_tokens_are_matched_like_aiohttp_or_wider() -> None:
    head = (
        b"GET / HTTP/1.1\r\nconnection: keep-alive\r\nCONNECTION: Keep-Alive ,  UPGRADE\r\n"
        b"upgrade:   WebSocket  \r\n\r\n"
    )
    tracker = StreamTracker()
    tracker.feed(head)
    assert tracker.in_frames


@pytest.mark.parametrize(
    "head",
    [
        b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n",
        b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
        b"POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\n",
        b"POST / HTTP/1.1\r\nContent-Length: +3\r\n\r\n",
        b"CONNECT h:1 HTTP/1.1\r\n\r\n",
        b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"GET / HTTP/1.1\r\nX: " + b"a" * 70_000 + b"\r\n\r\n",
    ],
    ids=["gzip-te", "te-and-cl", "two-cl", "signed-cl", "connect", "bad-chunk", "long-line"],
)
def test_what_aiohttp_refuses_is_not_followed(head: bytes) -> None:
    for seed in range(5):
        tracker, passed = run(head + UPGRADE, seed)
        assert tracker.lost
        assert passed == head + UPGRADE
        assert not tracker.in_frames


def test_a_dripped_head_costs_no_more_than_its_lines() -> None:
    """One byte per chunk (a slowloris): the head is still found, with bounded state."""
    tracker = StreamTracker()
    for byte in UPGRADE:
        assert joined(tracker.feed(bytes([byte]))) == bytes([byte])
    assert tracker.requests == 1
    assert tracker.in_frames


def test_a_frame_past_the_limit_stops_the_stream_at_its_header() -> None:
    """aiohttp 3.14.0-3.14.3 buffer a frame's payload before checking its size: the
    tracker stops the stream at the header, before any of it is read."""
    limit = 1000
    head = UPGRADE + encode_frame(OP_TEXT, b"a" * limit) + encode_frame(OP_PING, b"p")
    data = head + encode_frame(OP_BINARY, b"b" * (limit + 1)) + encode_frame(OP_TEXT, b"c")
    for seed in range(40):
        tracker, passed = run(data, seed, limit)
        assert tracker.too_big
        assert not tracker.violation
        assert passed == head


def test_each_fragment_is_bounded_and_their_sum_is_left_to_aiohttp() -> None:
    """The bound is on what one frame can make aiohttp buffer; aiohttp checks the sum of
    a fragmented message itself (after each fragment at the latest)."""
    limit = 1000
    first = encode_frame(OP_TEXT, b"a" * 600, fin=False)
    head = UPGRADE + first
    data = head + encode_frame(OP_CONT, b"a" * 3000, fin=True)  # past even the deflate slack
    for seed in range(20):
        tracker, passed = run(data, seed, limit)
        assert tracker.too_big
        assert passed == head
    fits = UPGRADE + first + encode_frame(OP_CONT, b"a" * 900) + encode_frame(OP_TEXT, b"x" * 900)
    tracker, passed = run(fits, 0, limit)
    assert not tracker.too_big
    assert passed == fits


def test_a_compressed_message_may_declare_what_deflate_can_expand_the_limit_to() -> None:
    limit = 100_000
    rsv1 = 4
    fits = UPGRADE + encode_frame(OP_BINARY, b"z" * (limit + 24), rsv=rsv1)
    tracker, passed = run(fits, 0, limit)
    assert not tracker.too_big
    assert passed == fits
    tracker, _ = run(UPGRADE + encode_frame(OP_BINARY, b"z" * (2 * limit), rsv=rsv1), 0, limit)
    assert tracker.too_big


def test_a_huge_declared_length_costs_nothing() -> None:
    """A length field of 2**62: dropped at the header, nothing buffered."""
    tracker = StreamTracker(1 << 20)
    header = bytes([0x82, 0x80 | 127]) + (1 << 62).to_bytes(8, "big") + b"mask"
    assert joined(tracker.feed(UPGRADE + header + b"x" * 65536)) == UPGRADE
    assert joined(tracker.release()) == b""
    assert joined(tracker.feed(b"y" * 65536)) == b""
    assert tracker.too_big
    assert not tracker.violation


WHOLE_HEADS = [
    UPGRADE,
    b"GET / HTTP/1.1\r\nconnection: keep-alive\r\nCONNECTION: Keep-Alive ,  UPGRADE\r\n"
    b"upgrade:   WebSocket  \r\n\r\n",
    b"GET / HTTP/1.1\r\n\r\n" + UPGRADE,  # no fields at all, then the upgrade
    b"\r\n\r\n" + UPGRADE,  # empty lines before the request line
    b"GET / HTTP/1.1\r\nUpgrade : websocket\r\nConnection: upgrade\r\n\r\n",  # not a name
    b"GET / HTTP/1.1\r\nX-Upgrade: websocket\r\nConnection: upgrade\r\n\r\n",
    b"GET / HTTP/1.1\r\nX: a\r\nUpgrade:websocket:x\r\nConnection: upgrade\r\n\r\n",
    b"GET / HTTP/1.1\r\nUpgrade: websocket\n\r\nConnection: upgrade\r\n\r\n",  # bare LF
    b"POST / HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc" + UPGRADE,
    b"POST / HTTP/1.1\r\ncontent-LENGTH: 3\r\nContent-Length: 3\r\n\r\nabc" + UPGRADE,
    b"POST / HTTP/1.1\r\nTransfer-Encoding: Chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n" + UPGRADE,
    b"CONNECT h:1 HTTP/1.1\r\n\r\n" + UPGRADE,
    b"GET / HTTP/1.1\r\nX: " + b"a" * 70_000 + b"\r\n\r\n" + UPGRADE,
]


@pytest.mark.parametrize("stream", WHOLE_HEADS)
def test_a_head_whole_in_one_chunk_is_read_as_line_by_line(stream: bytes) -> None:
    """A head that arrives whole is read in one pass (the common case, one search per
    field name); dripped one byte at a time it is read line by line: same outcome."""
    stream += encode_frame(OP_TEXT, b"x")
    whole = StreamTracker()
    passed_whole = joined(whole.feed(stream))
    dripped = StreamTracker()
    passed_dripped = b"".join(joined(dripped.feed(bytes([byte]))) for byte in stream)
    assert (whole.phase, whole.requests, whole.holding, whole.lost) == (
        dripped.phase,
        dripped.requests,
        dripped.holding,
        dripped.lost,
    )
    assert passed_whole == passed_dripped
    assert joined(whole.release()) == joined(dripped.release())


@pytest.mark.parametrize("stream", WHOLE_HEADS)
def test_a_lazy_tracker_reads_a_head_it_only_counted_when_the_next_chunk_comes(
    stream: bytes,
) -> None:
    """The gate's tracker (lazy) only counts a chunk that is one whole head; the next
    chunk has it read first: the same outcome as reading it at once."""
    stream += encode_frame(OP_TEXT, b"x") + encode_frame(OP_TEXT, b"y", mask=False)
    end = stream.find(b"\r\n\r\n") + 4
    trackers = StreamTracker(), StreamTracker(lazy=True)
    outcomes: list[tuple[object, ...]] = []
    for tracker in trackers:
        passed = joined(tracker.feed(stream[:end]))
        passed += joined(tracker.feed(stream[end:]))
        outcomes.append((passed, tracker.phase, tracker.requests, tracker.holding))
        outcomes.append((joined(tracker.release()), tracker.violation))
    assert outcomes[:2] == outcomes[2:]


def test_a_lazy_tracker_takes_the_frames_to_begin_after_the_head_the_server_upgraded() -> None:
    tracker = StreamTracker(lazy=True)
    assert tracker.feed(UPGRADE) == UPGRADE
    assert tracker.requests == 1
    assert joined(tracker.release()) == b""
    assert tracker.in_frames
    good = encode_frame(OP_TEXT, b"hi")
    assert joined(tracker.feed(good + encode_frame(OP_TEXT, b"no", mask=False))) == good
    assert tracker.violation


@pytest.mark.parametrize(
    "head",
    [
        b"GET / HTTP/1.1\r\nConnection: upgrade\r\nUpgrade: websocket\r\nContent-Length: 3\r\n\r\n",
        b"GET / HTTP/1.1\r\nConnection: upgrade\r\nUpgrade: websocket\r\n"
        b"TRANSFER-encoding: chunked\r\n\r\n",
        b"CONNECT h:1 HTTP/1.1\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n",
    ],
    ids=["content-length", "transfer-encoding", "connect"],
)
def test_a_lazy_tracker_reads_an_upgraded_head_that_may_announce_a_body(head: bytes) -> None:
    """What follows such a head is not where frames begin: the head is read, and the
    gate fails the upgraded connection (frames not locatable)."""
    tracker = StreamTracker(lazy=True)
    tracker.feed(head)
    tracker.release()
    assert not tracker.in_frames
    assert tracker.requests == 1


def test_a_lazy_tracker_reads_a_long_head_at_once() -> None:
    """A whole head longer than LAZY_HEAD is not kept until the next chunk: read at
    once, as without ``lazy``."""
    head = UPGRADE[:-2] + b"X-Long: " + b"a" * LAZY_HEAD + b"\r\n\r\n"
    tracker = StreamTracker(lazy=True)
    assert tracker.feed(head) == head
    assert tracker.in_frames
    short = StreamTracker(lazy=True)
    short.feed(UPGRADE)
    assert not short.in_frames  # only counted, until release() or the next chunk
    assert short.requests == 1
