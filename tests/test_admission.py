"""Who gets in: origin validation and connection limits, exact under concurrency."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from echo.origins import parse_origin
from echo.server import SERVER_KEY
from tests.support import ServerFactory, wait_until
from tests.wsraw import RawWebSocket

ORIGINS = frozenset(
    {parse_origin("https://app.example.com"), parse_origin("http://localhost:3000")}
)


async def handshake_status(url: str, origin: str | None) -> int:
    """The HTTP status of a WebSocket handshake (101 on success)."""
    headers = {} if origin is None else {"Origin": origin}
    async with aiohttp.ClientSession() as session:
        try:
            async with session.ws_connect(url, headers=headers):
                return 101
        except aiohttp.WSServerHandshakeError as error:
            return error.status


@pytest.mark.parametrize(
    ("origin", "status"),
    [
        ("https://app.example.com", 101),
        ("HTTPS://App.Example.COM:443", 101),  # case and default port normalised
        ("http://localhost:3000", 101),
        ("http://localhost:3001", 403),
        ("https://evil.example.com", 403),
        ("http://app.example.com", 403),  # scheme matters
        ("null", 403),
        ("https://app.example.com/path", 403),
        (None, 403),
    ],
)
async def test_origin_allow_list(start_app: ServerFactory, origin: str | None, status: int) -> None:
    server = await start_app(any_origin=False, allowed_origins=ORIGINS, allow_missing_origin=False)
    assert await handshake_status(str(server.make_url("/")), origin) == status


async def test_refused_origin_gets_a_plain_text_reason(start_app: ServerFactory) -> None:
    server = await start_app(any_origin=False, allowed_origins=ORIGINS)
    raw_headers = RawWebSocket.upgrade_request("127.0.0.1", server.port, "https://evil.example")
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(raw_headers)
    response = await asyncio.wait_for(reader.read(4096), 5)
    writer.close()
    await writer.wait_closed()
    assert response.startswith(b"HTTP/1.1 403")
    assert b"origin not allowed" in response


async def test_missing_origin_is_admitted_only_when_allowed(start_app: ServerFactory) -> None:
    server = await start_app(any_origin=False, allowed_origins=ORIGINS, allow_missing_origin=True)
    assert await handshake_status(str(server.make_url("/")), None) == 101


async def test_same_origin_page_is_always_admitted(start_app: ServerFactory) -> None:
    server = await start_app(any_origin=False, allowed_origins=frozenset())
    url = str(server.make_url("/"))
    assert await handshake_status(url, f"http://127.0.0.1:{server.port}") == 101
    assert await handshake_status(url, f"http://127.0.0.1:{server.port + 1}") == 403
    assert await handshake_status(url, f"https://127.0.0.1:{server.port}") == 403


async def test_star_admits_any_origin(start_app: ServerFactory) -> None:
    server = await start_app(any_origin=True, allow_missing_origin=False)
    url = str(server.make_url("/"))
    assert await handshake_status(url, "https://anything.example:9999") == 101
    assert await handshake_status(url, None) == 403, "'*' does not admit a missing Origin"


async def test_concurrent_handshakes_admit_exactly_the_limit(start_app: ServerFactory) -> None:
    limit = 20
    server = await start_app(max_connections=limit)
    url = server.make_url("/")
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:

        async def attempt() -> aiohttp.ClientWebSocketResponse | int:
            try:
                return await session.ws_connect(url)
            except aiohttp.WSServerHandshakeError as error:
                assert error.headers is not None
                assert error.headers.get("Retry-After") == "1"
                return error.status

        results = await asyncio.gather(*(attempt() for _ in range(2 * limit)))
        admitted = [r for r in results if not isinstance(r, int)]
        refused = [r for r in results if isinstance(r, int)]
        assert len(admitted) == limit
        assert refused == [503] * limit
        for ws in admitted:
            await ws.close()
    await wait_until(lambda: server.app[SERVER_KEY].limiter.open == 0)


async def test_per_address_limit_answers_429(start_app: ServerFactory) -> None:
    server = await start_app(max_connections=10, max_connections_per_ip=2)
    url = server.make_url("/")
    async with aiohttp.ClientSession() as session:
        first = await session.ws_connect(url)
        second = await session.ws_connect(url)
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await session.ws_connect(url)
        assert refused.value.status == 429
        assert refused.value.headers is not None
        assert refused.value.headers.get("Retry-After") == "1"
        await first.close()
        await wait_until(lambda: server.app[SERVER_KEY].limiter.open == 1)
        third = await session.ws_connect(url)  # the freed slot is usable again
        await second.close()
        await third.close()


async def test_slot_is_freed_when_a_client_vanishes_without_closing(
    start_app: ServerFactory,
) -> None:
    server = await start_app(max_connections=2)
    limiter = server.app[SERVER_KEY].limiter
    vanishing = [await RawWebSocket.connect("127.0.0.1", server.port) for _ in range(2)]
    assert limiter.open == 2
    for raw in vanishing:
        raw.abort()  # TCP reset, no close frame
    await wait_until(lambda: limiter.open == 0)
    async with aiohttp.ClientSession() as session:
        a = await session.ws_connect(server.make_url("/"))
        b = await session.ws_connect(server.make_url("/"))
        await a.close()
        await b.close()


async def test_failed_upgrade_does_not_leak_a_slot(start_app: ServerFactory) -> None:
    server = await start_app(max_connections=1)
    async with aiohttp.ClientSession() as session:
        # An Upgrade header without the WebSocket key is a bad handshake: 400.
        response = await session.get(server.make_url("/"), headers={"Upgrade": "websocket"})
        assert response.status == 400
        response.release()
        assert server.app[SERVER_KEY].limiter.open == 0
        ws = await session.ws_connect(server.make_url("/"))
        await ws.close()
