"""RFC 6455 5.1: unmasked client frames fail the connection (1002), on every engine.

Where the frames begin and how the check walks them: tests/test_framing.py.
"""

from __future__ import annotations

from tests.support import ServerFactory
from tests.wsraw import OP_CLOSE, OP_TEXT, RawWebSocket, encode_frame


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
