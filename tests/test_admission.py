"""Who gets in: origin validation and connection limits, exact under concurrency."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path

import aiohttp
import pytest

from echo.config import parse_origins
from echo.origins import parse_origin
from echo.server import SERVER_KEY
from tests.support import (
    ServerFactory,
    ServerProcess,
    clean_env,
    free_port,
    raw_handshake,
    wait_until,
)
from tests.wsraw import OP_TEXT, RawWebSocket

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


@pytest.mark.parametrize(
    ("settings", "headers", "reason"),
    [
        (
            {"allow_missing_origin": False},
            [],
            b"origin not allowed: no Origin header, and ALLOW_MISSING_ORIGIN=false\n",
        ),
        (
            {},
            [("Origin", "https://evil.example")],
            b"origin not allowed: not in ALLOWED_ORIGINS\n",
        ),
        (
            {},
            [("Host", "evil.example:{port}"), ("Origin", "http://evil.example:{port}")],
            b"origin not allowed: not in ALLOWED_ORIGINS, and its host is not in ALLOWED_HOSTS\n",
        ),
    ],
)
async def test_every_403_says_why_in_its_body_and_its_log_line(
    start_app: ServerFactory,
    caplog: pytest.LogCaptureFixture,
    settings: dict[str, bool],
    headers: list[tuple[str, str]],
    reason: bytes,
) -> None:
    server = await start_app(any_origin=False, allowed_origins=ORIGINS, **settings)
    headers = [(name, value.format(port=server.port)) for name, value in headers]
    if not any(name == "Host" for name, _ in headers):
        headers.insert(0, ("Host", f"127.0.0.1:{server.port}"))
    with caplog.at_level(logging.INFO, "echo.server"):
        status, head, body = await raw_handshake(server.port, headers)
    assert status == 403
    assert b"\r\nContent-Type: text/plain" in head
    assert body == reason
    why = reason.decode().removeprefix("origin not allowed: ").strip()
    refused = [r.getMessage() for r in caplog.records if r.getMessage().startswith("refused ")]
    assert len(refused) == 1
    assert refused[0].endswith(f" reason=origin ({why})"), refused


async def test_a_client_without_origin_echoes_by_default(tmp_path: Path) -> None:
    """wscat and websocat send no Origin; the server's defaults admit them."""
    env = clean_env(HOST="127.0.0.1", PORT=str(free_port()))  # every other setting default
    server = ServerProcess(env, tmp_path, tmp_path / "server.log")
    try:
        server.wait_ready()
        raw = await RawWebSocket.connect("127.0.0.1", server.port, origin=None)
        await raw.send(OP_TEXT, b"from a tool")
        frame = await raw.recv_data()
        assert (frame.opcode, frame.payload) == (OP_TEXT, b"from a tool")
        await raw.aclose()
        await wait_until(lambda: "open id=c1 remote=127.0.0.1 origin=-" in server.log())
        # A browser page of another site is still refused by the default list.
        status, _, body = await raw_handshake(
            server.port, [("Host", f"127.0.0.1:{server.port}"), ("Origin", "https://evil.example")]
        )
        assert (status, body) == (403, b"origin not allowed: not in ALLOWED_ORIGINS\n")
    finally:
        server.stop()


@pytest.mark.parametrize(
    ("host", "allowed_hosts", "status"),
    [
        ("evil.example", (), 403),  # a DNS-rebinding page: evil.example -> this server
        ("evil.example", ("echo.example",), 403),
        ("echo.example", ("echo.example",), 101),
        ("app.echo.example", ("*.echo.example",), 101),
        ("echo.example", ("*.echo.example",), 403),  # *. is one label below, not the name
        ("a.b.echo.example", ("*.echo.example",), 403),
        ("echo.example.evil.net", ("*.echo.example", "echo.example"), 403),
        ("localhost", (), 101),
        ("app.localhost", (), 101),
        ("127.0.0.1", (), 101),
        ("[::1]", (), 101),
    ],
)
async def test_own_page_is_admitted_only_under_a_host_the_server_knows(
    start_app: ServerFactory, host: str, allowed_hosts: tuple[str, ...], status: int
) -> None:
    """Origin and Host agree in a DNS-rebinding attack, so agreeing is not enough."""
    server = await start_app(
        any_origin=False, allowed_origins=frozenset(), allowed_hosts=allowed_hosts
    )
    headers = [("Host", f"{host}:{server.port}"), ("Origin", f"http://{host}:{server.port}")]
    assert (await raw_handshake(server.port, headers))[0] == status


async def test_dns_rebinding_is_refused_by_a_real_server(
    server_process: Callable[..., ServerProcess],
) -> None:
    """The attack as a browser makes it: evil.example resolves to the server's address."""
    server = server_process(ALLOWED_ORIGINS="https://app.example.com")
    name = f"evil.example:{server.port}"
    status, _, body = await raw_handshake(
        server.port, [("Host", name), ("Origin", f"http://{name}")]
    )
    assert status == 403
    assert b"ALLOWED_HOSTS" in body
    await wait_until(lambda: "reason=origin (not in ALLOWED_ORIGINS, and its host" in server.log())
    listed = server_process(ALLOWED_ORIGINS="https://app.example.com", ALLOWED_HOSTS="evil.example")
    name = f"evil.example:{listed.port}"
    assert (await raw_handshake(listed.port, [("Host", name), ("Origin", f"http://{name}")]))[
        0
    ] == 101


async def test_two_origin_headers_get_400(
    start_app: ServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    server = await start_app(any_origin=True)
    host = ("Host", f"127.0.0.1:{server.port}")
    for origins in (
        [("Origin", "https://a.example"), ("Origin", "https://b.example")],
        [("Origin", "https://a.example"), ("origin", "https://a.example")],  # even the same one
    ):
        with caplog.at_level(logging.INFO, "echo.server"):
            status, _, body = await raw_handshake(server.port, [host, *origins])
        assert status == 400
        assert body == b"bad request: more than one Origin header\n"
    assert "reason=duplicate_origin (more than one Origin header)" in caplog.text
    metrics = server.app[SERVER_KEY].metrics
    assert metrics is not None
    assert metrics.refused["duplicate_origin"] == 2
    assert server.app[SERVER_KEY].limiter.open == 0
    status, _, _ = await raw_handshake(server.port, [host, ("Origin", "https://a.example")])
    assert status == 101


@pytest.mark.parametrize(
    ("origin", "status"),
    [
        ("https://app.example.com", 101),
        ("https://APP.Example.com:443", 101),
        ("https://example.com", 403),  # the pattern is one label below
        ("https://a.b.example.com", 403),
        ("https://example.com.evil.net", 403),
        ("https://evil-example.com", 403),
        ("http://app.example.com", 403),  # scheme
        ("https://app.example.com:8443", 403),  # port
        ("wss://push.example.org:9000", 101),
    ],
)
async def test_origin_patterns_match_one_label(
    start_app: ServerFactory, origin: str, status: int
) -> None:
    _, _, patterns = parse_origins("https://*.example.com,wss://*.example.org:9000")
    server = await start_app(
        any_origin=False, allowed_origins=frozenset(), origin_patterns=patterns
    )
    assert await handshake_status(str(server.make_url("/")), origin) == status


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
