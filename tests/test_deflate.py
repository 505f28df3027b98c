"""permessage-deflate (RFC 7692): a stream that does not inflate fails the connection
with 1007, on every engine (compressed connections run on the plain path), and the
close log line, /metrics and the wire agree.

aiohttp lets zlib.error through ``receive()``, which then closes with its default 1000;
the plain engine's close() gives the code the error deserves (echo.engine.plain).
"""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import zlib

import aiohttp
import pytest
from prometheus_client import generate_latest

from echo.metrics import METRICS_KEY
from echo.server import SERVER_KEY
from tests.support import ServerFactory, wait_until
from tests.test_metrics import by_label, parse
from tests.wsraw import OP_BINARY, OP_CLOSE, OP_TEXT, RawWebSocket, encode_frame

RSV1 = 4  # the "compressed" bit, as encode_frame's rsv takes it


def deflate(data: bytes, final: bool = False) -> bytes:
    """``data`` as one permessage-deflate payload (the sync-flush tail taken off), or a
    whole raw DEFLATE stream (``final``: its last block has BFINAL set)."""
    compressor = zlib.compressobj(wbits=-15)
    if final:
        return compressor.compress(data) + compressor.flush(zlib.Z_FINISH)
    return (compressor.compress(data) + compressor.flush(zlib.Z_SYNC_FLUSH))[:-4]


async def compressed_connection(port: int) -> RawWebSocket:
    """A raw client whose handshake negotiated permessage-deflate."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write(
        (
            f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Extensions: permessage-deflate\r\n\r\n"
        ).encode()
    )
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert head.startswith(b"HTTP/1.1 101 ")
    assert b"permessage-deflate" in head.lower()
    return RawWebSocket(reader, writer)


@pytest.mark.parametrize(
    ("frames", "echoed"),
    [
        ([encode_frame(OP_BINARY, b"not deflate at all \xff\xfe\xfd", rsv=RSV1)], 0),
        # A stream that ended (BFINAL) and goes on in the next message: over-terminated.
        (
            [
                encode_frame(OP_TEXT, deflate(b"hello", final=True), rsv=RSV1),
                encode_frame(OP_TEXT, deflate(b"again"), rsv=RSV1),
            ],
            1,
        ),
    ],
    ids=["corrupt", "over-terminated"],
)
async def test_a_stream_that_does_not_inflate_fails_with_1007(
    start_app: ServerFactory, caplog: pytest.LogCaptureFixture, frames: list[bytes], echoed: int
) -> None:
    caplog.set_level(logging.INFO, "echo.server")
    server = await start_app()
    raw = await compressed_connection(server.port)
    for frame in frames:
        await raw.send_raw(frame)
    for _ in range(echoed):
        assert (await raw.recv()).opcode in (OP_TEXT, OP_BINARY)
    closing = await raw.recv()
    assert (closing.opcode, closing.close_code) == (OP_CLOSE, 1007)
    # Failed, as aiohttp fails its own protocol errors: the transport closes at once,
    # without waiting for the peer's answer.
    assert await raw.eof()
    echo = server.app[SERVER_KEY]
    await wait_until(lambda: not echo.connections, timeout=5)
    # The log: one INFO line for the peer's fault, the close line with the wire's codes.
    assert "protocol error id=c1: invalid compressed data" in caplog.text
    assert "close id=c1 code=1007 sent=1007 received=- " in caplog.text
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    samples = parse(generate_latest(server.app[METRICS_KEY].registry).decode())
    assert by_label(samples, "echo_close_codes_sent_total", "code") == {"1007": 1}
    assert by_label(samples, "echo_close_codes_received_total", "code") == {}


async def test_valid_compressed_messages_are_echoed_after_many(start_app: ServerFactory) -> None:
    """The check costs nothing on valid streams: context takeover across messages."""
    server = await start_app()
    async with (
        aiohttp.ClientSession() as session,
        session.ws_connect(server.make_url("/"), compress=15) as ws,
    ):
        assert ws.compress
        for i in range(50):
            await ws.send_str(f"message {i} " * 20)
            assert (await ws.receive(timeout=5)).data == f"message {i} " * 20
