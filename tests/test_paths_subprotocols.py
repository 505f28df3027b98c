"""WebSocket upgrades on any path, and subprotocol negotiation (SUBPROTOCOLS)."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from echo.config import ConfigError, ServerSettings
from tests.support import ServerFactory
from tests.test_httpecho import echoed_request
from tests.wsraw import OP_TEXT, RawWebSocket


@pytest.mark.parametrize("path", ["/", "/ws", "/a/b/c", "/api/v1/echo/", "/%7Euser", "/healthz/x"])
async def test_upgrade_is_served_on_any_path(start_app: ServerFactory, path: str) -> None:
    server = await start_app()
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(server.make_url(path)) as ws:
            await ws.send_str(f"on {path}")
            assert await ws.receive_str(timeout=5) == f"on {path}"
    # The raw peer too: the request line names the path as a proxy would forward it.
    raw = await RawWebSocket.connect("127.0.0.1", server.port, path=path)
    await raw.send(OP_TEXT, b"raw")
    frame = await raw.recv_data()
    assert (frame.opcode, frame.payload) == (OP_TEXT, b"raw")
    await raw.aclose()


async def test_plain_requests_keep_their_pages(start_app: ServerFactory) -> None:
    server = await start_app()
    async with aiohttp.ClientSession() as session:
        async with session.get(server.make_url("/")) as page:
            assert page.content_type == "text/html"
        async with session.get(server.make_url("/ws")) as echo:
            assert echoed_request(await echo.read()).startswith(b"GET /ws HTTP/1.1\r\n")
        # Only GET upgrades: another method with the same headers is echoed as HTTP.
        headers = {"Upgrade": "websocket", "Connection": "Upgrade"}
        async with session.post(server.make_url("/ws"), headers=headers, data=b"x") as post:
            assert post.status == 200
            assert echoed_request(await post.read()).startswith(b"POST /ws HTTP/1.1\r\n")
        async with session.get(server.make_url("/healthz")) as health:
            assert (await health.json())["status"] == "ok"


async def test_limits_and_origins_hold_on_every_path(start_app: ServerFactory) -> None:
    server = await start_app(max_connections=1, any_origin=False, allow_missing_origin=False)
    async with aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await session.ws_connect(server.make_url("/deep/path"), origin="http://evil.example")
        assert refused.value.status == 403
        own = f"http://127.0.0.1:{server.port}"
        async with session.ws_connect(server.make_url("/one"), origin=own):
            with pytest.raises(aiohttp.WSServerHandshakeError) as full:
                await session.ws_connect(server.make_url("/two"), origin=own)
            assert full.value.status == 503


async def negotiated(url: str, offered: tuple[str, ...]) -> str | None:
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(url, protocols=offered) as ws:
            await ws.send_str("x")
            assert await ws.receive_str(timeout=5) == "x"
            return ws.protocol


@pytest.mark.parametrize(
    ("configured", "offered", "selected"),
    [
        ((), (), None),
        ((), ("chat.v2", "chat.v1"), "chat.v2"),  # empty list: the client's first offer
        ((), ("graphql-transport-ws",), "graphql-transport-ws"),
        (("v1", "v2"), ("v3", "v2", "v1"), "v2"),  # the client's order decides
        (("v1", "v2"), ("v3",), None),  # no match: answered without one
        (("v1",), (), None),
    ],
)
async def test_subprotocol_negotiation(
    start_app: ServerFactory,
    configured: tuple[str, ...],
    offered: tuple[str, ...],
    selected: str | None,
) -> None:
    server = await start_app(subprotocols=configured)
    assert await negotiated(str(server.make_url("/")), offered) == selected


async def test_an_offer_that_is_not_a_token_is_not_echoed(start_app: ServerFactory) -> None:
    server = await start_app()
    raw = RawWebSocket.upgrade_request("127.0.0.1", server.port).replace(
        b"\r\n\r\n", b"\r\nSec-WebSocket-Protocol: a b, c\r\n\r\n"
    )
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(raw)
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    writer.close()
    await writer.wait_closed()
    assert head.startswith(b"HTTP/1.1 101")
    assert b"sec-websocket-protocol" not in head.lower()


def test_subprotocols_setting() -> None:
    assert ServerSettings.from_env({}).subprotocols == ()
    assert ServerSettings.from_env({"SUBPROTOCOLS": " mqtt , wamp.2.json,"}).subprotocols == (
        "mqtt",
        "wamp.2.json",
    )
    for bad in ("a b", "chat,v1 v2", "x\u00e9", ",".join(["p"] * 65)):
        with pytest.raises(ConfigError) as caught:
            ServerSettings.from_env({"SUBPROTOCOLS": bad})
        assert "SUBPROTOCOLS" in str(caught.value)
