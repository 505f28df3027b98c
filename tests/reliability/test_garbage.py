"""Garbage: bytes that are not HTTP, and invalid frames after a valid upgrade.

Each must end that connection with the right close code (or a dropped TCP
connection), write no traceback or error to the log, and leave a bystander's
connection echoing as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import re
import struct
from collections.abc import Callable

import aiohttp
import pytest

from tests.reliability.conftest import record, scale
from tests.reliability.probes import alarming_lines, echo_rtt, stable_fds, wait_settled
from tests.support import ServerProcess
from tests.wsraw import (
    OP_BINARY,
    OP_CLOSE,
    OP_CONT,
    OP_PING,
    OP_TEXT,
    RawWebSocket,
    close_payload,
    encode_frame,
)

pytestmark = pytest.mark.soak

PROTOCOL_ERROR, INVALID_PAYLOAD, TOO_BIG = 1002, 1007, 1009
MAX_MESSAGE_SIZE = 4096

# name -> (bytes sent after a successful upgrade, close code expected)
FRAME_CASES: dict[str, tuple[bytes, int]] = {
    "rsv1 without extension": (encode_frame(OP_TEXT, b"hi", rsv=4), PROTOCOL_ERROR),
    "rsv2": (encode_frame(OP_TEXT, b"hi", rsv=2), PROTOCOL_ERROR),
    "rsv3": (encode_frame(OP_BINARY, b"hi", rsv=1), PROTOCOL_ERROR),
    **{
        f"reserved opcode {op:#x}": (encode_frame(op, b"x"), PROTOCOL_ERROR)
        for op in (0x3, 0x4, 0x5, 0x6, 0x7, 0xB, 0xC, 0xD, 0xE, 0xF)
    },
    "continuation without start": (encode_frame(OP_CONT, b"x"), PROTOCOL_ERROR),
    "new message inside a fragmented one": (
        encode_frame(OP_TEXT, b"a", fin=False) + encode_frame(OP_TEXT, b"b"),
        PROTOCOL_ERROR,
    ),
    "ping payload of 126 bytes": (encode_frame(OP_PING, b"p" * 126), PROTOCOL_ERROR),
    "fragmented ping": (encode_frame(OP_PING, b"p", fin=False), PROTOCOL_ERROR),
    "close payload of 126 bytes": (
        encode_frame(OP_CLOSE, close_payload(1000, b"r" * 124)),
        PROTOCOL_ERROR,
    ),
    "invalid UTF-8 text": (encode_frame(OP_TEXT, b"\xc3\x28 bad"), INVALID_PAYLOAD),
    "invalid UTF-8 across fragments": (
        encode_frame(OP_TEXT, b"\xf0\x9f", fin=False) + encode_frame(OP_CONT, b"\x41"),
        INVALID_PAYLOAD,
    ),
    "message over the limit": (encode_frame(OP_BINARY, b"\0" * (MAX_MESSAGE_SIZE + 1)), TOO_BIG),
    "length field of 2**62": (
        bytes([0x82, 0xFF]) + struct.pack("!Q", 1 << 62) + b"\0\0\0\0",
        TOO_BIG,
    ),
    "close with a 1-byte payload": (encode_frame(OP_CLOSE, b"\x03"), PROTOCOL_ERROR),
    **{
        f"close code {code}": (encode_frame(OP_CLOSE, close_payload(code)), PROTOCOL_ERROR)
        for code in (0, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000, 65535)
    },
}

# Not HTTP at all: the server must answer 400 or just hang up.
NOT_HTTP: dict[str, bytes] = {
    "binary noise": bytes(range(256)) * 4,
    "TLS client hello": bytes.fromhex("16030100a5010000a10303") + b"\0" * 64,
    "control characters": b"\x1b[2J\x00\x07GET / HTTP/1.1\r\n\r\n",
    "bare newlines": b"\n" * 2000,
    "huge request line": b"GET /" + b"a" * 70_000 + b" HTTP/1.1\r\n\r\n",
    "huge header": b"GET / HTTP/1.1\r\nX: " + b"b" * 70_000 + b"\r\n\r\n",
    "SSH banner": b"SSH-2.0-OpenSSH_9.6\r\n",
}


async def close_code_or_drop(
    raw: RawWebSocket, timeout: float = 5.0, reply: bool = True
) -> int | None:
    """The code of the server's close frame (ignoring pings and echoes), or None for a drop.

    Like a well-behaved client, answer a close frame with one (unless ``reply`` is false:
    our side is already shut), then expect the server to drop the TCP connection.
    """
    code = None
    try:
        while True:
            frame = await raw.recv(timeout)
            if frame.opcode == OP_CLOSE:
                code = frame.close_code
                if not reply:
                    break
                with contextlib.suppress(ConnectionError):
                    await raw.send(OP_CLOSE, close_payload(1000))
                break
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    except TimeoutError:
        raw.abort()
        raise AssertionError(f"no close frame and no drop within {timeout}s") from None
    assert await raw.eof(timeout), f"the server kept the TCP connection open after {code}"
    return code


async def send_not_http(port: int, data: bytes) -> bytes:
    """Send ``data`` on a fresh TCP connection; the server's whole answer before it hangs up."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    answer = b""
    try:
        with contextlib.suppress(ConnectionError):
            writer.write(data)
            await writer.drain()
        with contextlib.suppress(ConnectionError):
            while chunk := await asyncio.wait_for(reader.read(65536), 15):
                answer += chunk
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
    return answer


async def test_garbage_gets_the_right_answer_and_hurts_nobody_else(
    server_process: Callable[..., ServerProcess],
) -> None:
    fuzz_rounds = scale(300, 5_000)
    proc = server_process(MAX_MESSAGE_SIZE=str(MAX_MESSAGE_SIZE), HANDSHAKE_TIMEOUT="3000")
    fds_before = await stable_fds(proc.proc.pid)
    wrong: dict[str, object] = {}
    fuzz_outcomes = {"close frame": 0, "dropped": 0}

    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(proc.url) as bystander:
            for name, data in NOT_HTTP.items():
                answer = await send_not_http(proc.port, data)
                if answer and not re.match(rb"HTTP/1\.[01] 4\d\d ", answer):
                    wrong[name] = answer[:60]
                await echo_rtt(bystander, name)

            for name, (data, expected) in FRAME_CASES.items():
                raw = await RawWebSocket.connect("127.0.0.1", proc.port)
                await raw.send_raw(data)
                try:
                    code: object = await close_code_or_drop(raw)
                except AssertionError as error:
                    code = str(error)
                if code != expected:
                    wrong[name] = code
                await echo_rtt(bystander, name)

            rng = random.Random(7)
            for _ in range(fuzz_rounds):
                raw = await RawWebSocket.connect("127.0.0.1", proc.port)
                await raw.send_raw(rng.randbytes(rng.randint(1, 64)))
                raw.writer.write_eof()  # whatever it meant, nothing more is coming
                code = await close_code_or_drop(raw, reply=False)
                fuzz_outcomes["dropped" if code is None else "close frame"] += 1
            await echo_rtt(bystander, "after fuzz")
        fds_end = await wait_settled(proc, fds_before)

    alarms = alarming_lines(proc.log())
    record(
        "garbage",
        not_http_cases=len(NOT_HTTP),
        frame_cases=len(FRAME_CASES),
        wrong_answers=len(wrong),
        random_frames=fuzz_rounds,
        random_outcomes=fuzz_outcomes,
        alarming_log_lines=len(alarms),
        fds_start=fds_before,
        fds_end=fds_end,
    )
    assert wrong == {}
    assert alarms == []


async def test_unmasked_client_frame_is_refused(
    server_process: Callable[..., ServerProcess],
) -> None:
    proc = server_process()
    raw = await RawWebSocket.connect("127.0.0.1", proc.port)
    await raw.send_raw(encode_frame(OP_TEXT, b"hi", mask=False))
    try:
        code: object = await close_code_or_drop(raw, timeout=2)
    except AssertionError as error:
        code = str(error)
    assert code in (PROTOCOL_ERROR, None)
    assert alarming_lines(proc.log()) == []
