"""TRUSTED_PROXIES: X-Forwarded-For and -Proto are believed only from a trusted proxy."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from echo.config import ConfigError, ServerSettings
from echo.proxies import TrustedProxies, parse_trusted_proxies
from echo.server import SERVER_KEY
from tests.support import ServerFactory, clean_env, run_server_briefly, wait_until
from tests.wsraw import RawWebSocket


def proxies(text: str) -> TrustedProxies:
    return TrustedProxies(parse_trusted_proxies(text))


@pytest.mark.parametrize(
    ("trusted", "peer", "xff", "client"),
    [
        ("", "127.0.0.1", ["198.51.100.1"], "127.0.0.1"),  # nothing trusted
        ("10.0.0.0/8", "127.0.0.1", ["198.51.100.1"], "127.0.0.1"),  # peer not trusted
        ("127.0.0.1", "127.0.0.1", [], "127.0.0.1"),  # no header
        ("127.0.0.1", "127.0.0.1", ["198.51.100.1"], "198.51.100.1"),
        # The right-most untrusted entry: what the client wrote on the left is ignored.
        ("127.0.0.1", "127.0.0.1", ["1.1.1.1, 198.51.100.1"], "198.51.100.1"),
        ("127.0.0.1,10.0.0.0/8", "127.0.0.1", ["6.6.6.6, 198.51.100.1, 10.1.2.3"], "198.51.100.1"),
        (
            "127.0.0.1,10.0.0.0/8",
            "127.0.0.1",
            ["6.6.6.6", "198.51.100.1", "10.1.2.3"],
            "198.51.100.1",
        ),
        ("127.0.0.1,10.0.0.0/8", "127.0.0.1", ["10.9.9.9, 10.1.2.3"], "10.9.9.9"),  # all trusted
        ("127.0.0.1", "127.0.0.1", ["198.51.100.1, junk"], "127.0.0.1"),  # malformed: stop
        ("127.0.0.1", "127.0.0.1", ["junk, 198.51.100.1"], "198.51.100.1"),
        ("::1", "::1", ["2001:db8::5"], "2001:db8::5"),
        ("::1", "::1", ["[2001:db8::5]"], "2001:db8::5"),
        ("127.0.0.0/8", "::ffff:127.0.0.1", ["::ffff:198.51.100.1"], "198.51.100.1"),
        ("::1", "::1", ["fe80::1"], "fe80::1"),
        # A scope id is no plain address: it stops the walk like any other junk.
        ("127.0.0.1", "127.0.0.1", ["fe80::1%eth0"], "127.0.0.1"),
        ("127.0.0.1", "127.0.0.1", ["[fe80::1%eth0]"], "127.0.0.1"),
        ("127.0.0.1", "127.0.0.1", ["198.51.100.1, fe80::1%x"], "127.0.0.1"),
        ("127.0.0.1", "127.0.0.1", ["fe80::1%x, 198.51.100.1"], "198.51.100.1"),
        ("127.0.0.1", "127.0.0.1", ["198.51.100.1:80"], "127.0.0.1"),
        ("127.0.0.1", "127.0.0.1", ["\uff11.2.3.4"], "127.0.0.1"),  # a fullwidth digit
        ("127.0.0.1", "127.0.0.1", ["0" * 46], "127.0.0.1"),
    ],
)
def test_client_address(trusted: str, peer: str, xff: list[str], client: str) -> None:
    assert proxies(trusted).client_address(peer, xff) == client


@pytest.mark.parametrize(
    ("trusted", "peer", "scheme", "xfp", "expected"),
    [
        ("", "127.0.0.1", "http", ["https"], "http"),  # nothing trusted
        ("10.0.0.0/8", "127.0.0.1", "http", ["https"], "http"),  # peer not trusted
        ("127.0.0.1", "127.0.0.1", "http", [], "http"),  # no header
        ("127.0.0.1", "127.0.0.1", "http", ["https"], "https"),
        ("127.0.0.1", "127.0.0.1", "http", [" HTTPS "], "https"),
        ("127.0.0.1", "127.0.0.1", "https", ["http"], "http"),  # TLS to us, plain to the proxy
        ("127.0.0.0/8", "::ffff:127.0.0.1", "http", ["https"], "https"),
        ("::1", "::1", "http", ["https"], "https"),
        # Only http and https are taken.
        ("127.0.0.1", "127.0.0.1", "http", ["wss"], "http"),
        ("127.0.0.1", "127.0.0.1", "http", ["https://evil.example"], "http"),
        ("127.0.0.1", "127.0.0.1", "http", [""], "http"),
        ("127.0.0.1", "127.0.0.1", "https", ["ftp"], "https"),
        # The right-most entry is the one the proxy next to us wrote.
        ("127.0.0.1", "127.0.0.1", "http", ["http, https"], "https"),
        ("127.0.0.1", "127.0.0.1", "http", ["https, http"], "http"),
        ("127.0.0.1", "127.0.0.1", "http", ["https", "http"], "http"),
        ("127.0.0.1", "127.0.0.1", "http", ["https, junk"], "http"),
    ],
)
def test_scheme(trusted: str, peer: str, scheme: str, xfp: list[str], expected: str) -> None:
    assert proxies(trusted).scheme(peer, scheme, xfp) == expected


def test_trusted_proxies_setting() -> None:
    settings = ServerSettings.from_env({"TRUSTED_PROXIES": " 127.0.0.1, 10.0.0.0/8 ,::1 "})
    assert [str(n) for n in settings.trusted_proxies] == ["127.0.0.1/32", "10.0.0.0/8", "::1/128"]
    assert ServerSettings.from_env({}).trusted_proxies == ()
    with pytest.raises(ConfigError, match=r"TRUSTED_PROXIES entry '10\.0\.0\.0/33' \(1 of 1\)"):
        ServerSettings.from_env({"TRUSTED_PROXIES": "10.0.0.0/33"})


def test_bad_trusted_proxies_exit_2(tmp_path: Path) -> None:
    env = clean_env(PORT="0", HOST="127.0.0.1", TRUSTED_PROXIES="127.0.0.1,nginx")
    result = run_server_briefly(env, tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "echo-server: invalid TRUSTED_PROXIES entry 'nginx' (2 of 2): "
        "expected an IP address or CIDR network"
    )


@contextlib.asynccontextmanager
async def connected(url: str, xff: str) -> AsyncIterator[aiohttp.ClientWebSocketResponse]:
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(url, headers={"X-Forwarded-For": xff}) as ws:
            yield ws


async def handshake_status(url: str, xff: str) -> int:
    try:
        async with connected(url, xff):
            return 101
    except aiohttp.WSServerHandshakeError as error:
        return error.status


async def test_spoofed_xff_from_an_untrusted_peer_changes_nothing(
    start_app: ServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "echo.server")
    server = await start_app(max_connections_per_ip=1)
    url = str(server.make_url("/"))
    limiter = server.app[SERVER_KEY].limiter
    async with connected(url, "198.51.100.1"):
        assert limiter.held_by("127.0.0.1") == 1
        assert limiter.held_by("198.51.100.1") == 0
        # Another made-up address does not buy a second slot.
        assert await handshake_status(url, "198.51.100.2") == 429
    assert "remote=127.0.0.1" in caplog.text
    assert "198.51.100" not in caplog.text


async def test_trusted_proxy_gives_each_forwarded_client_its_own_slot(
    start_app: ServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "echo.server")
    server = await start_app(
        max_connections_per_ip=1, trusted_proxies=parse_trusted_proxies("127.0.0.1")
    )
    url = str(server.make_url("/"))
    limiter = server.app[SERVER_KEY].limiter
    async with connected(url, "198.51.100.1"), connected(url, "6.6.6.6, 198.51.100.2"):
        assert limiter.held_by("198.51.100.1") == 1
        assert limiter.held_by("198.51.100.2") == 1
        assert limiter.held_by("127.0.0.1") == 0
        assert await handshake_status(url, "198.51.100.1") == 429  # that client's slot is taken
    assert "open id=c1 remote=198.51.100.1 " in caplog.text
    assert "open id=c2 remote=198.51.100.2 " in caplog.text
    assert "refused remote=198.51.100.1 " in caplog.text
    await wait_until(lambda: limiter.open == 0)


async def origin_status(url: str, origin: str, headers: dict[str, str]) -> int:
    async with aiohttp.ClientSession() as session:
        try:
            async with session.ws_connect(url, origin=origin, headers=headers):
                return 101
        except aiohttp.WSServerHandshakeError as error:
            return error.status


@pytest.mark.parametrize("trusted", ["127.0.0.1", "10.0.0.0/8"])
async def test_x_forwarded_proto_from_a_trusted_proxy_makes_the_https_page_same_origin(
    start_app: ServerFactory, caplog: pytest.LogCaptureFixture, trusted: str
) -> None:
    caplog.set_level(logging.INFO, "echo.server")
    server = await start_app(
        any_origin=False,
        allowed_origins=frozenset(),
        allow_missing_origin=False,
        trusted_proxies=parse_trusted_proxies(trusted),
    )
    url = str(server.make_url("/"))
    page = f"https://127.0.0.1:{server.port}"  # what a browser sends from the https:// page
    tls_terminated = {"X-Forwarded-Proto": "https"}
    if trusted == "127.0.0.1":  # the peer is a trusted proxy: its word counts
        assert await origin_status(url, page, tls_terminated) == 101
        assert await origin_status(url, page, {"X-Forwarded-Proto": "HTTPS"}) == 101
        assert await origin_status(url, page, {"X-Forwarded-Proto": "ftp"}) == 403
    else:  # an untrusted peer sending the same header changes nothing
        assert await origin_status(url, page, tls_terminated) == 403
        assert "refused remote=127.0.0.1 origin='https://127.0.0.1:" in caplog.text
    # Without the header the scheme is the connection's own, from anyone.
    assert await origin_status(url, page, {}) == 403
    assert await origin_status(url, f"http://127.0.0.1:{server.port}", {}) == 101
    await wait_until(lambda: server.app[SERVER_KEY].limiter.open == 0)


FORGED_SCOPES = [
    b"fe80::1%eth0 reason=origin remote=10.0.0.1",
    b"fe80::1%\tINFO echo.server: open id=c9",
    b"fe80::1%" + "\u00e9\u202e".encode() * 500,  # raw non-ASCII (obs-text), 3 KB
    b"fe80::1%" + b"x" * 3000,
]


async def raw_upgrade(port: int, xff: bytes) -> tuple[int, asyncio.StreamWriter]:
    """A handshake with ``xff`` as X-Forwarded-For, sent as raw bytes; its status."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    request = RawWebSocket.upgrade_request("127.0.0.1", port)
    writer.write(request[:-2] + b"X-Forwarded-For: " + xff + b"\r\n\r\n")
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    return int(head.split(b" ", 2)[1]), writer


async def test_forwarded_addresses_with_a_scope_id_are_not_believed(
    start_app: ServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """Python's ipaddress takes ``fe80::1%<anything>``; such an entry must stop the
    walk, or its scope id reaches the log and becomes the per-address limit key."""
    caplog.set_level(logging.DEBUG)
    server = await start_app(
        max_connections_per_ip=1, trusted_proxies=parse_trusted_proxies("127.0.0.1")
    )
    limiter = server.app[SERVER_KEY].limiter
    status, held = await raw_upgrade(server.port, FORGED_SCOPES[0])
    assert status == 101
    assert limiter.held_by("127.0.0.1") == 1  # the proxy's own address: nothing believed
    for forged in FORGED_SCOPES[1:]:  # another "address" each time buys no second slot
        status, writer = await raw_upgrade(server.port, forged)
        assert status == 429
        writer.close()
    held.close()
    await wait_until(lambda: limiter.open == 0)
    assert "open id=c1 remote=127.0.0.1 " in caplog.text
    assert caplog.text.count("refused remote=127.0.0.1 ") == len(FORGED_SCOPES) - 1
    assert "fe80" not in caplog.text
