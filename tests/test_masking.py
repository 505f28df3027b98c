"""RFC 6455 5.1: unmasked client frames fail the connection; masked ones pass untouched."""

from __future__ import annotations

import random

from echo.engine.fast.masking import MaskedFramesOnly
from tests.support import ServerFactory
from tests.wsraw import OP_BINARY, OP_CLOSE, OP_PING, OP_TEXT, RawWebSocket, encode_frame


class Recorder:
    """Stands in for aiohttp's parser and queue to see what the checker passes on."""

    def __init__(self) -> None:
        self.fed = bytearray()
        self.error: BaseException | None = None

    def feed_data(self, data: bytes) -> tuple[bool, bytes]:
        self.fed += data
        return False, b""

    def feed_eof(self) -> None:
        pass

    def set_exception(self, exc: BaseException) -> None:
        self.error = exc


def stream(frames: list[bytes], seed: int) -> list[bytes]:
    """The frames' bytes cut at random places, as TCP may deliver them."""
    data = b"".join(frames)
    rng = random.Random(seed)
    chunks, pos = [], 0
    while pos < len(data):
        step = rng.choice([1, 2, 3, 7, 13, 200, 70_000])
        chunks.append(data[pos : pos + step])
        pos += step
    return chunks


def feed(frames: list[bytes], seed: int) -> Recorder:
    recorder = Recorder()
    checker = MaskedFramesOnly(recorder, recorder)
    for chunk in stream(frames, seed):
        checker.feed_data(chunk)
    return recorder


def masked_frames() -> list[bytes]:
    return [
        encode_frame(OP_TEXT, b"hi"),
        encode_frame(OP_BINARY, b"x" * 125),
        encode_frame(OP_BINARY, b"y" * 126),
        encode_frame(OP_BINARY, b"z" * 65_536),
        encode_frame(OP_PING, b""),
        encode_frame(OP_TEXT, b""),
    ]


def test_masked_frames_pass_through_unchanged_however_they_are_cut() -> None:
    frames = masked_frames()
    for seed in range(30):
        recorder = feed(frames, seed)
        assert recorder.error is None
        assert bytes(recorder.fed) == b"".join(frames)


def test_an_unmasked_frame_anywhere_is_a_protocol_error_and_stops_the_stream() -> None:
    for position in range(4):
        frames = masked_frames()[:3]
        frames.insert(position, encode_frame(OP_BINARY, b"\x00" * 130, mask=False))
        for seed in range(10):
            recorder = feed(frames, seed)
            assert recorder.error is not None
            assert getattr(recorder.error, "code", None) == 1002
            before = b"".join(frames[:position])
            assert bytes(recorder.fed).startswith(before[: len(recorder.fed)])
            assert len(recorder.fed) < len(before) + len(frames[position])


async def test_server_answers_an_unmasked_frame_with_1002(start_app: ServerFactory) -> None:
    server = await start_app()
    raw = await RawWebSocket.connect("127.0.0.1", server.port)
    await raw.send(OP_TEXT, b"masked")
    echoed = await raw.recv_data()
    assert echoed.payload == b"masked"
    await raw.send_raw(encode_frame(OP_TEXT, b"unmasked", mask=False))
    frame = await raw.recv_data()
    assert (frame.opcode, frame.close_code) == (OP_CLOSE, 1002)
    assert await raw.eof(timeout=2)
