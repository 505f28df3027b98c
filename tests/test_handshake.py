"""The upgrade itself against a careless or hostile peer: permessage-deflate offers
(RFC 7692), HEAD, malformed handshakes, subprotocols. Raw sockets: aiohttp's client
sends none of these."""

from __future__ import annotations

import asyncio
import logging

import aiohttp
import pytest

from echo.handshake import deflate_offers_valid, key_valid
from echo.server import SERVER_KEY
from tests.support import ServerFactory, wait_until
from tests.wsraw import OP_TEXT, RawWebSocket, encode_frame

KEY = "dGhlIHNhbXBsZSBub25jZQ=="


def upgrade(port: int, *extra: str, method: str = "GET", key: str = KEY) -> bytes:
    lines = [
        f"{method} / HTTP/1.1",
        f"Host: 127.0.0.1:{port}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key}",
        "Sec-WebSocket-Version: 13",
        *extra,
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8")


async def handshake(
    port: int, request: bytes
) -> tuple[bytes, asyncio.StreamReader, asyncio.StreamWriter]:
    """Send ``request``; the response head (through the blank line) and the streams."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    return head, reader, writer


INVALID_OFFERS = [
    "permessage-deflate; client_max_window_bits=7",
    "permessage-deflate; client_max_window_bits=16",
    "permessage-deflate; client_max_window_bits=00000000000000000012",
    "permessage-deflate; client_max_window_bits=99999999999999999999",
    "permessage-deflate; server_max_window_bits",
    "permessage-deflate; server_max_window_bits=7",
    "permessage-deflate; server_no_context_takeover=1",
    "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
    "permessage-deflate; client_max_window_bits; client_max_window_bits=10",
    "permessage-deflate; mystery_parameter",
    "permessage-deflate;",
    "x-permessage-deflate",
    "permessage-deflate, permessage-deflate; client_max_window_bits=7",
]
VALID_OFFERS = [
    "permessage-deflate",
    "permessage-deflate; client_max_window_bits",
    "permessage-deflate; client_max_window_bits=15; server_no_context_takeover",
    "permessage-deflate; server_max_window_bits=10, permessage-deflate",
    "x-webkit-deflate-frame, permessage-deflate; client_no_context_takeover",
]


@pytest.mark.parametrize("offer", INVALID_OFFERS)
async def test_an_invalid_deflate_offer_is_declined_and_the_connection_goes_on(
    start_app: ServerFactory, offer: str
) -> None:
    """RFC 7692 5: a server declines an offer with an unknown or repeated parameter or an
    invalid value; aiohttp accepted these. Declined, the echo runs uncompressed."""
    server = await start_app(compression=True)
    head, reader, writer = await handshake(
        server.port, upgrade(server.port, f"Sec-WebSocket-Extensions: {offer}")
    )
    assert head.startswith(b"HTTP/1.1 101 "), head
    assert b"sec-websocket-extensions" not in head.lower(), head
    writer.write(encode_frame(OP_TEXT, b"plain"))
    first, length = await asyncio.wait_for(reader.readexactly(2), 5)
    assert first == 0x80 | OP_TEXT  # FIN, no RSV1: not compressed
    assert await reader.readexactly(length) == b"plain"
    writer.close()


@pytest.mark.parametrize("offer", VALID_OFFERS)
async def test_a_valid_deflate_offer_is_accepted(start_app: ServerFactory, offer: str) -> None:
    server = await start_app(compression=True)
    head, _reader, writer = await handshake(
        server.port, upgrade(server.port, f"Sec-WebSocket-Extensions: {offer}")
    )
    assert b"\r\nSec-WebSocket-Extensions: permessage-deflate" in head, head
    writer.close()


def test_offer_rules() -> None:
    assert deflate_offers_valid([])
    assert key_valid(KEY)
    assert not key_valid(KEY[:-3] + "\u00e9==")
    assert not key_valid(KEY[:-2])
    assert deflate_offers_valid(["foo; bar=baz"])
    assert deflate_offers_valid(['permessage-deflate; server_max_window_bits="9"'])
    assert not deflate_offers_valid(['permessage-deflate; server_max_window_bits="9'])
    assert not deflate_offers_valid(["permessage-deflate", "permessage-deflate; a"])
    assert not deflate_offers_valid(["permessage-deflatex"])


async def test_aiohttp_client_still_negotiates_compression(start_app: ServerFactory) -> None:
    server = await start_app(compression=True)
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(server.make_url("/"), compress=15) as ws:
            assert ws.compress == 15
            await ws.send_str("x" * 1000)
            assert (await ws.receive_str(timeout=5)) == "x" * 1000


async def test_head_never_upgrades(start_app: ServerFactory) -> None:
    """RFC 6455 4.1: the opening handshake is a GET. A HEAD with upgrade headers got 101
    and held a connection slot."""
    server = await start_app()
    head, _reader, writer = await handshake(server.port, upgrade(server.port, method="HEAD"))
    assert head.startswith(b"HTTP/1.1 200 "), head
    assert b"text/html" in head  # the console page's headers, as for any HEAD /
    writer.close()
    assert server.app[SERVER_KEY].limiter.open == 0
    assert not server.app[SERVER_KEY].connections


@pytest.mark.parametrize(
    "request_",
    [
        b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: s3cret-c\r\n"
        b"Sec-WebSocket-Key: " + KEY.encode() + b"\r\nSec-WebSocket-Version: 13\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: s3cret-key\r\nSec-WebSocket-Version: 13\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: " + KEY.encode() + b"\r\nSec-WebSocket-Version: s3cret-v\r\n\r\n",
        # Not ASCII: aiohttp's base64 decoding raised a ValueError it does not catch (500,
        # and an ERROR with a traceback in the log).
        b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: s3cret\xc3\xa9"
        + b"A" * 16
        + b"==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    ],
    ids=["connection", "key", "version", "key-not-ascii"],
)
async def test_a_bad_handshake_gets_400_without_its_header_quoted(
    start_app: ServerFactory, request_: bytes
) -> None:
    server = await start_app()
    head, reader, writer = await handshake(server.port, request_)
    body = await asyncio.wait_for(reader.read(1000), 5)
    assert head.startswith(b"HTTP/1.1 400 "), head
    assert b"s3cret" not in head + body
    assert body == b"invalid WebSocket handshake\n"
    writer.close()
    await wait_until(lambda: server.app[SERVER_KEY].limiter.open == 0)


@pytest.mark.parametrize(
    "request_",
    [
        b"GET / HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer s3cret\x01tail\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nX-Long: s3cret" + b"a" * 9000 + b"\r\n\r\n",
        b"GET /\x01s3cret HTTP/1.1\r\nHost: x\r\n\r\n",
        b"POST /x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\ns3cret\r\n",
    ],
    ids=["header-byte", "long-header", "path-byte", "chunk-size"],
)
async def test_aiohttp_400_bodies_do_not_quote_the_request(
    start_app: ServerFactory, request_: bytes
) -> None:
    """aiohttp's parser answered a malformed request with its error message, which
    quotes the offending line: an Authorization header's credentials included."""
    server = await start_app()
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(request_)
    answer = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    assert answer.split(b"\r\n")[0] in (b"HTTP/1.0 400 Bad Request", b"HTTP/1.1 400 Bad Request")
    assert b"s3cret" not in answer, answer


async def test_offered_subprotocols_make_no_warning(
    start_app: ServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """aiohttp logged a WARNING quoting the whole Sec-WebSocket-Protocol list (12,000
    characters of raw non-ASCII) for every handshake that offered one."""
    caplog.set_level(logging.DEBUG)
    server = await start_app()
    offered = ", ".join(["chat\u00e9\u202e"] * 700)  # 7.7 KB, under aiohttp's 8 KiB
    raw = await RawWebSocket.connect("127.0.0.1", server.port)  # without: no line at all
    await raw.aclose()
    head, _reader, writer = await handshake(
        server.port, upgrade(server.port, f"Sec-WebSocket-Protocol: {offered}")
    )
    assert head.startswith(b"HTTP/1.1 101 ")
    assert b"sec-websocket-protocol" not in head.lower()  # none chosen (RFC 6455 4.2.2)
    writer.close()
    await wait_until(lambda: server.app[SERVER_KEY].limiter.open == 0)
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []
    lines = [r for r in caplog.records if r.name == "aiohttp.websocket"]
    assert len(lines) == 1
    assert lines[0].levelno == logging.DEBUG
    assert len(lines[0].getMessage()) < 200
