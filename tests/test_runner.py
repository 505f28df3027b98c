"""The fast engine's runner (echo.engine.fast.runner): TCP_NODELAY from the listening socket."""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import aiohttp
import aiohttp.base_protocol
import aiohttp.tcp_helpers
import pytest
from aiohttp import web

from echo.server import SERVER_KEY, create_app, make_runner, start_site
from tests.support import TEST_SETTINGS, free_port, wait_until
from tests.tls_support import make_pki
from tests.wsraw import RawWebSocket


@pytest.fixture
def nodelay_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The local ports of aiohttp's per-connection TCP_NODELAY calls (still made).

    The client in the test process makes them too: a server's calls are those whose
    local port is the server's.
    """
    calls: list[int] = []
    real = aiohttp.tcp_helpers.tcp_nodelay

    def counting(transport: asyncio.Transport, value: bool) -> None:
        calls.append(transport.get_extra_info("sockname")[1])
        real(transport, value)

    monkeypatch.setattr(aiohttp.base_protocol, "tcp_nodelay", counting)
    return calls


async def server_side_nodelay(app: web.Application) -> int:
    echo = app[SERVER_KEY]
    await wait_until(lambda: len(echo.connections) == 1, timeout=3)
    (ws,) = echo.connections
    assert ws._req is not None
    assert ws._req.transport is not None
    sock = ws._req.transport.get_extra_info("socket")
    return int(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))


@pytest.fixture
async def runner_for() -> AsyncIterator[list[web.AppRunner]]:
    runners: list[web.AppRunner] = []
    yield runners
    for runner in runners:
        await runner.cleanup()


@pytest.mark.parametrize("tls", [False, True], ids=["tcp", "tls"])
async def test_connections_get_tcp_nodelay_from_the_listening_socket(
    tls: bool, nodelay_calls: list[int], runner_for: list[web.AppRunner], tmp_path: Path
) -> None:
    settings = replace(TEST_SETTINGS, port=free_port())
    pki = make_pki(tmp_path)
    if tls:
        settings = replace(settings, tls_cert_file=str(pki.cert), tls_key_file=str(pki.key))
    app = create_app(settings)
    runner = make_runner(app, settings)
    runner_for.append(runner)
    await runner.setup()
    await start_site(runner, settings)
    context = ssl.create_default_context(cafile=str(pki.ca)) if tls else True
    scheme = "wss" if tls else "ws"
    async with (
        aiohttp.ClientSession() as session,
        session.ws_connect(f"{scheme}://127.0.0.1:{settings.port}/", ssl=context) as ws,
    ):
        assert await server_side_nodelay(app) == 1
        assert settings.port not in nodelay_calls, "set per connection, not inherited"
        await ws.send_str("through")
        assert (await ws.receive(timeout=5)).data == "through"


async def test_without_the_listener_option_aiohttp_sets_it_per_connection(
    nodelay_calls: list[int], runner_for: list[web.AppRunner]
) -> None:
    settings = replace(TEST_SETTINGS, port=free_port())
    app = create_app(settings)
    runner = make_runner(app, settings)
    runner_for.append(runner)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", settings.port).start()  # no nodelay_on_listeners
    raw = await RawWebSocket.connect("127.0.0.1", settings.port)
    assert await server_side_nodelay(app) == 1
    assert nodelay_calls.count(settings.port) == 1
    await raw.aclose()
