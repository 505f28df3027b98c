"""Test controls on the wire: what a peer observes for each control and each bound.

Every test runs the real server (in-process on loopback, or a subprocess) and looks
at what reaches a real aiohttp client or the raw-frame peer of tests/wsraw.py: HTTP
statuses and reasons, close codes and reasons, a TCP close without a close frame,
timings, pings and pushes, fragments, the info message. The parsing rules themselves
are in tests/test_controls_rules.py.
"""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from tests.support import ServerFactory
from tests.wsraw import RawWebSocket


async def handshake(port: int, target: str, origin: str | None = None) -> tuple[int, bytes, bytes]:
    """Send a WebSocket upgrade for ``target`` (path and query); status, head, body."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(RawWebSocket.upgrade_request("127.0.0.1", port, origin, target))
        async with asyncio.timeout(5):
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head.split(b" ", 2)[1])
            body = b""
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    body = await reader.readexactly(int(value))
        return status, head, body
    finally:
        writer.close()
        await writer.wait_closed()


def header(head: bytes, name: bytes) -> bytes | None:
    for line in head.split(b"\r\n")[1:]:
        key, _, value = line.partition(b":")
        if key.strip().lower() == name.lower():
            return value.strip()
    return None


# -- refused before the upgrade -------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "reason"),
    [
        ("nope=1", b"unknown control 'nope'; known: delay, jitter, close_after"),
        ("close_after=1&close_code=1005", b"bad control close_code='1005': expected 1000, 1001"),
        ("delay=60001", b"bad control delay='60001': expected an integer from 0 to 60000 (ms)"),
        ("push_every=10&push_size=1000&x", b"unknown control 'x'"),
        (
            "push_every=10&push_size=1000",
            b"is 100000 bytes/s, over this server's PUSH_MAX_RATE of 65536 bytes/s",
        ),
        ("fragment=1025", b"bad control fragment='1025': expected an integer from 1 to 1024"),
        ("x=%0D%0AInjected:%20yes", b"unknown control 'x'"),
    ],
)
async def test_a_bad_control_gets_400_with_a_one_line_reason(
    start_app: ServerFactory, query: str, reason: bytes
) -> None:
    server = await start_app(max_message_size=1024, push_max_rate=65536)
    status, head, body = await handshake(server.port, f"/?{query}")
    assert status == 400
    assert reason in body
    assert body.count(b"\n") == 1
    assert body.endswith(b"\n")
    assert b"Injected" not in head
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(server.make_url("/")) as ws:
            await ws.send_str("still fine")
            assert await ws.receive_str(timeout=5) == "still fine"


async def test_aiohttp_client_sees_the_400(start_app: ServerFactory) -> None:
    server = await start_app()
    async with aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await session.ws_connect(server.make_url("/chat?close_after=x"))
    assert refused.value.status == 400


async def test_controls_off_refuses_any_control_saying_so(start_app: ServerFactory) -> None:
    server = await start_app(controls=False)
    status, _head, body = await handshake(server.port, "/?close_after=1")
    assert status == 400
    assert body == (
        b"bad test controls: test controls are off on this server (CONTROLS=false): "
        b"'close_after' refused\n"
    )
    # Other query parameters are none of its business then.
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(server.make_url("/?token=abc")) as ws:
            await ws.send_str("plain")
            assert await ws.receive_str(timeout=5) == "plain"


@pytest.mark.parametrize(("status", "retry_after"), [(503, "7"), (429, None), (401, None)])
async def test_status_refuses_the_handshake_as_asked(
    start_app: ServerFactory, status: int, retry_after: str | None
) -> None:
    server = await start_app()
    query = f"status={status}" + (f"&retry_after={retry_after}" if retry_after else "")
    got, head, body = await handshake(server.port, f"/any/path?{query}")
    assert got == status
    assert header(head, b"Retry-After") == (None if retry_after is None else retry_after.encode())
    assert body == b"refused as the status control asked\n"


async def test_refusals_are_counted_and_logged(
    start_app: ServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    server = await start_app()
    caplog.set_level("INFO", logger="echo.server")
    await handshake(server.port, "/?bogus")
    await handshake(server.port, "/?status=502")
    async with aiohttp.ClientSession() as session:
        async with session.get(server.make_url("/metrics")) as response:
            text = await response.text()
    assert 'echo_handshakes_refused_total{reason="controls"} 1.0' in text
    assert 'echo_handshakes_refused_total{reason="status_control"} 1.0' in text
    lines = [r.getMessage() for r in caplog.records if r.name == "echo.server"]
    assert (
        "refused remote=127.0.0.1 origin=- reason=controls "
        "(unknown control 'bogus'; known: delay, jitter, close_after, close_after_ms, "
        "close_code, close_reason, drop_after, drop_after_ms, ignore_pings, heartbeat, "
        "silent, status, retry_after, ping_every, push_every, push_size, push_type, "
        "fragment, info)"
    ) in lines
    assert "refused remote=127.0.0.1 origin=- reason=status_control (status=502)" in lines


async def test_origin_is_checked_before_controls(start_app: ServerFactory) -> None:
    server = await start_app(any_origin=False, allow_missing_origin=False)
    status, _head, _body = await handshake(server.port, "/?status=418", "http://evil.example")
    assert status == 403
