"""Connection options on every mode: headers, subprotocols, compression, the handshake shown,
proxies (HTTP CONNECT and SOCKS5), client certificates, --insecure, redirects, JSON events."""

from __future__ import annotations

import asyncio
import json
import re
import ssl
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import trustme
from aiohttp import web
from multidict import CIMultiDictProxy

from tests.client_support import json_events, parse_summary, run_client
from tests.proxy_support import HttpProxy, SocksProxy
from tests.support import ServerProcess
from tests.tls_support import make_pki, start_tls_server

ServerStarter = Callable[..., ServerProcess]


async def serve_locally(
    path: str, handler: Any, ssl_context: ssl.SSLContext | None
) -> tuple[web.AppRunner, str]:
    """A server of the test's own: ``handler`` for GET ``path`` on a free loopback
    port; its runner and its ws:// (wss:// with ``ssl_context``) URL."""
    app = web.Application()
    app.router.add_get(path, handler)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ssl_context).start()
    port = runner.addresses[0][1]
    return runner, f"{'wss' if ssl_context else 'ws'}://127.0.0.1:{port}/"


@dataclass
class Recorder:
    """An in-test WebSocket echo server that records each handshake's headers."""

    handshakes: list[CIMultiDictProxy[str]] = field(default_factory=list)
    peer_certs: list[Any] = field(default_factory=list)
    runner: web.AppRunner | None = None
    url: str = ""
    close_first_after: int = 0  # close the first connection with 4000 after N echoes
    info: dict[str, Any] | None = None  # sent first when the query asks for `info`

    async def handler(self, request: web.Request) -> web.WebSocketResponse:
        self.handshakes.append(request.headers)
        transport = request.transport
        self.peer_certs.append(transport.get_extra_info("peercert") if transport else None)
        ws = web.WebSocketResponse(protocols=("chat", "v2"))
        await ws.prepare(request)
        if self.info is not None and "info" in request.query:
            await ws.send_str(json.dumps(self.info))
        echoed = 0
        async for msg in ws:
            if msg.type.name == "TEXT":
                await ws.send_str(msg.data)
            else:
                await ws.send_bytes(msg.data)
            echoed += 1
            if len(self.handshakes) == 1 and echoed == self.close_first_after:
                await ws.close(code=4000, message=b"go away")
        return ws

    async def start(self, ssl_context: ssl.SSLContext | None = None) -> Recorder:
        self.runner, self.url = await serve_locally("/", self.handler, ssl_context)
        return self

    async def close(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


@pytest.fixture
async def recorder() -> AsyncIterator[Recorder]:
    server = await Recorder().start()
    yield server
    await server.close()


async def client(args: list[str], cwd: Path, **variables: str) -> Any:
    return await asyncio.to_thread(run_client, args, cwd, 60, variables)


# -- headers, subprotocols, compression, the handshake shown ----------------------------


async def test_headers_subprotocols_and_no_compression_reach_the_server(
    recorder: Recorder, tmp_path: Path
) -> None:
    result = await client(
        [
            recorder.url,
            "--count",
            "2",
            "-H",
            "X-Token: abc 123",
            "--header",
            "Authorization: Bearer s3cret",
            "--subprotocol",
            "v2",
            "--subprotocol",
            "chat",
            "--no-compression",
            "--show-handshake",
        ],
        tmp_path,
    )
    assert result.returncode == 0, result.stderr
    seen = recorder.handshakes[0]
    assert seen["X-Token"] == "abc 123"
    assert seen["Authorization"] == "Bearer s3cret"
    assert seen["Sec-WebSocket-Protocol"] == "v2,chat"
    assert "Sec-WebSocket-Extensions" not in seen, "no permessage-deflate offered"
    assert "Origin" not in seen, "not a browser: no Origin"
    err = result.stderr
    assert "INFO echo.client: > Authorization: Bearer [masked]" in err
    assert "s3cret" not in err
    assert "INFO echo.client: < HTTP 101 Switching Protocols" in err
    assert "INFO echo.client: < Sec-WebSocket-Protocol: v2" in err
    assert re.search(r"connected to .*; subprotocol 'v2'", err), err
    assert parse_summary(result.stdout)["echoed"] == "2"


async def test_compression_is_offered_by_default_and_an_origin_only_when_asked(
    recorder: Recorder, tmp_path: Path
) -> None:
    result = await client(
        [recorder.url, "--count", "1", "--origin", "https://page.example"], tmp_path
    )
    assert result.returncode == 0, result.stderr
    seen = recorder.handshakes[0]
    assert seen["Sec-WebSocket-Extensions"].startswith("permessage-deflate")
    assert seen["Origin"] == "https://page.example"


async def test_json_events_of_a_run_with_a_reconnect(recorder: Recorder, tmp_path: Path) -> None:
    recorder.close_first_after = 2
    result = await client([recorder.url, "--count", "4", "--json"], tmp_path)
    assert result.returncode == 0, result.stderr
    events = json_events(result.stdout)
    names = [e["event"] for e in events]
    assert names[0] == "start"
    connected = next(e for e in events if e["event"] == "connected")
    assert connected["url"] == recorder.url
    assert connected["status"] == 101
    assert connected["extensions"].startswith("permessage-deflate")
    sent = [e for e in events if e["event"] == "sent"]
    echoes = [e for e in events if e["event"] == "echo"]
    assert [e["seq"] for e in sent] == [1, 2, 3, 4]
    assert [e["seq"] for e in echoes] == [1, 2, 3, 4]
    assert all(e["rtt_ms"] > 0 for e in echoes)
    lost = next(e for e in events if e["event"] == "disconnected")
    assert (lost["code"], lost["reason"]) == (4000, "'go away'")
    assert lost["up_ms"] >= 0
    again = next(e for e in events if e["event"] == "reconnected")
    assert again["downtime_ms"] >= 0
    assert again["connection"] == 2
    summary = events[-1]
    assert summary["event"] == "summary"
    assert (summary["sent"], summary["echoed"], summary["lost"], summary["mismatched"]) == (
        4,
        4,
        0,
        0,
    )
    assert summary["reconnects"] == 1
    assert summary["rtt_p50_ms"] > 0


async def test_the_servers_info_is_taken_from_the_first_message(
    recorder: Recorder, tmp_path: Path
) -> None:
    recorder.info = {"connection": "c7", "instance": {"pid": 42}}
    result = await client([recorder.url + "?info", "--count", "3", "--json"], tmp_path)
    assert result.returncode == 0, result.stderr
    events = json_events(result.stdout)
    connected = next(e for e in events if e["event"] == "connected")
    assert connected["info"] == {"connection": "c7", "instance": {"pid": 42}}
    summary = events[-1]
    assert (summary["echoed"], summary["mismatched"]) == (3, 0), "the info is not an echo"


# -- proxies ------------------------------------------------------------------------------


async def test_http_connect_proxy_tunnels_ws_and_wss(
    server_process: ServerStarter, tmp_path: Path
) -> None:
    plain = server_process()
    pki = make_pki(tmp_path)
    secure = start_tls_server(server_process, pki)
    proxy = HttpProxy(tmp_path)
    try:
        for url, env in (
            (plain.url, {}),
            (f"wss://localhost:{secure.port}/", {"TLS_CA_FILE": str(pki.ca)}),
        ):
            result = await client([url, "--count", "3", "--proxy", proxy.url()], tmp_path, **env)
            assert result.returncode == 0, result.stderr
            assert parse_summary(result.stdout)["echoed"] == "3"
            assert f"via {proxy.url()}" in result.stderr
        await asyncio.sleep(0.5)  # the access log is written when a tunnel closes
        log = proxy.log()
    finally:
        proxy.stop()
    # Both went through CONNECT (aiohttp's own proxy support would send GET ws://...).
    assert re.search(rf"CONNECT 127\.0\.0\.1:{plain.port}\b", log), log
    assert re.search(rf"CONNECT localhost:{secure.port}\b", log), log
    assert "GET ws://" not in log


async def test_http_proxy_credentials_are_used_and_never_shown(
    server_process: ServerStarter, tmp_path: Path
) -> None:
    server = server_process()
    proxy = HttpProxy(tmp_path, auth="user:pa55word")
    try:
        good = await client(
            [server.url, "--count", "2", "--proxy", proxy.url("user:pa55word")], tmp_path
        )
        bad = await client(
            [server.url, "--count", "2", "--max-attempts", "2", "--proxy", proxy.url("user:wrong")],
            tmp_path,
        )
    finally:
        proxy.stop()
    assert good.returncode == 0, good.stderr
    assert "pa55word" not in good.stderr
    assert "via http://user:***@127.0.0.1:" in good.stderr
    assert bad.returncode == 1
    assert "wrong" not in bad.stderr
    assert re.search(
        r"cannot connect \(attempt 1 of 2\): .*\(proxy http://user:\*\*\*@", bad.stderr
    )
    assert "gave up after 2 failed attempt(s)" in bad.stderr


@pytest.mark.parametrize("scheme", ["socks5", "socks5h"])
async def test_socks5_proxy_tunnels_ws_and_wss(
    server_process: ServerStarter, tmp_path: Path, scheme: str
) -> None:
    plain = server_process()
    pki = make_pki(tmp_path)
    secure = start_tls_server(server_process, pki)
    proxy = SocksProxy(tmp_path, user="alice", password="0pen-sesame")
    try:
        for url, env in (
            (plain.url, {}),
            (f"wss://localhost:{secure.port}/", {"TLS_CA_FILE": str(pki.ca)}),
        ):
            through = proxy.url("alice:0pen-sesame", scheme)
            result = await client([url, "--count", "3", "--proxy", through], tmp_path, **env)
            assert result.returncode == 0, result.stderr
            assert parse_summary(result.stdout)["echoed"] == "3"
            assert "0pen-sesame" not in result.stderr
        # The proxy is really in the path: without its password, nothing gets through.
        refused = await client(
            [plain.url, "--count", "1", "--max-attempts", "1", "--proxy", proxy.url("", scheme)],
            tmp_path,
        )
    finally:
        proxy.stop()
    assert refused.returncode == 1
    assert "(proxy socks5" in refused.stderr


# -- TLS: client certificates and --insecure ----------------------------------------------


@dataclass
class MutualTls:
    server: Recorder
    ca: Path  # the server's CA, for TLS_CA_FILE
    cert: Path  # the client's certificate
    key: Path
    both: Path  # certificate and key in one file
    stranger_cert: Path  # a client certificate from a CA the server does not trust
    stranger_key: Path


@pytest.fixture
async def mutual_tls(tmp_path: Path) -> AsyncIterator[MutualTls]:
    server_ca, client_ca, other_ca = trustme.CA(), trustme.CA(), trustme.CA()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ca.issue_cert("127.0.0.1", "localhost").configure_cert(context)
    client_ca.configure_trust(context)
    context.verify_mode = ssl.CERT_REQUIRED
    issued = client_ca.issue_cert("client.example")
    stranger = other_ca.issue_cert("client.example")
    files = MutualTls(
        server=await Recorder().start(context),
        ca=tmp_path / "server-ca.pem",
        cert=tmp_path / "client.pem",
        key=tmp_path / "client-key.pem",
        both=tmp_path / "client-both.pem",
        stranger_cert=tmp_path / "stranger.pem",
        stranger_key=tmp_path / "stranger-key.pem",
    )
    server_ca.cert_pem.write_to_path(str(files.ca))
    issued.cert_chain_pems[0].write_to_path(str(files.cert))
    issued.private_key_pem.write_to_path(str(files.key))
    files.both.write_bytes(issued.cert_chain_pems[0].bytes() + issued.private_key_pem.bytes())
    stranger.cert_chain_pems[0].write_to_path(str(files.stranger_cert))
    stranger.private_key_pem.write_to_path(str(files.stranger_key))
    yield files
    await files.server.close()


async def test_client_certificate_is_presented_and_required(
    mutual_tls: MutualTls, tmp_path: Path
) -> None:
    url = mutual_tls.server.url
    ca = str(mutual_tls.ca)
    good = await client(
        [url, "--count", "2", "--cert", str(mutual_tls.cert), "--key", str(mutual_tls.key)],
        tmp_path,
        TLS_CA_FILE=ca,
    )
    assert good.returncode == 0, good.stderr
    assert "client certificate" in good.stderr
    alt_names = mutual_tls.server.peer_certs[0]["subjectAltName"]
    assert ("DNS", "client.example") in alt_names, "the server saw our certificate"
    one_file = await client(
        [url, "--count", "1", "--cert", str(mutual_tls.both)], tmp_path, TLS_CA_FILE=ca
    )
    assert one_file.returncode == 0, one_file.stderr
    for args in (
        [],
        ["--cert", str(mutual_tls.stranger_cert), "--key", str(mutual_tls.stranger_key)],
    ):
        refused = await client(
            [url, "--count", "1", "--max-attempts", "1", *args], tmp_path, TLS_CA_FILE=ca
        )
        assert refused.returncode == 1, refused.stderr
        assert "gave up after 1 failed attempt(s)" in refused.stderr
        assert refused.stdout == ""


async def test_insecure_skips_verification_with_a_warning_every_time(
    mutual_tls: MutualTls, tmp_path: Path
) -> None:
    url = mutual_tls.server.url
    cert = ["--cert", str(mutual_tls.cert), "--key", str(mutual_tls.key)]
    untrusted = await client([url, "--count", "1", *cert], tmp_path)
    assert untrusted.returncode == 1
    assert "cannot trust the TLS certificate of" in untrusted.stderr.splitlines()[-1]
    for _ in range(2):
        insecure = await client([url, "--count", "1", "--insecure", *cert], tmp_path)
        assert insecure.returncode == 0, insecure.stderr
        warnings = re.findall(r"WARNING echo\.client: --insecure: .* NOT verified", insecure.stderr)
        assert len(warnings) == 1, insecure.stderr


# -- redirects ----------------------------------------------------------------------------


@dataclass
class Redirector:
    """An in-test server answering every request with a redirect to ``location``."""

    location: str = ""
    status: int = 301
    runner: web.AppRunner | None = None
    url: str = ""
    hits: int = 0

    async def handler(self, request: web.Request) -> web.Response:
        self.hits += 1
        return web.Response(status=self.status, headers={"Location": self.location})

    async def start(self, ssl_context: ssl.SSLContext | None = None) -> Redirector:
        self.runner, self.url = await serve_locally("/{tail:.*}", self.handler, ssl_context)
        return self

    async def close(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


@pytest.fixture
async def redirectors() -> AsyncIterator[Callable[..., Any]]:
    started: list[Redirector] = []

    async def start(location: str, ssl_context: ssl.SSLContext | None = None) -> Redirector:
        redirector = await Redirector(location).start(ssl_context)
        started.append(redirector)
        return redirector

    yield start
    for redirector in started:
        await redirector.close()


async def test_redirects_are_not_followed_by_default_and_followed_when_asked(
    recorder: Recorder, redirectors: Callable[..., Any], tmp_path: Path
) -> None:
    hop = await redirectors(recorder.url.replace("ws://", "http://") + "?from=hop")
    refused = await client([hop.url, "--count", "1"], tmp_path)
    assert refused.returncode == 1
    assert refused.stderr.strip().splitlines()[-1] == (
        f"echo-client: the server at '{hop.url}' redirects (HTTP 301) to "
        f"'{recorder.url.replace('ws://', 'http://')}?from=hop': not followed; connect to that "
        "URL, or pass --follow-redirects"
    )
    assert recorder.handshakes == []
    followed = await client(
        [hop.url, "--count", "2", "--follow-redirects", "-H", "Authorization: Basic c2VjcmV0"],
        tmp_path,
    )
    assert followed.returncode == 0, followed.stderr
    where = f"{recorder.url}?from=hop"
    assert f"connected to {where} (redirected from {hop.url})" in followed.stderr
    assert f"redirected (HTTP 301) from {hop.url} to {where}" in followed.stderr
    # Another origin (port): the credentials given for the first one are not passed on.
    assert "Authorization" not in recorder.handshakes[0]


async def test_a_redirect_never_downgrades_wss(
    server_process: ServerStarter, redirectors: Callable[..., Any], tmp_path: Path
) -> None:
    plain = server_process()
    pki = make_pki(tmp_path)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(str(pki.cert), str(pki.key))
    for location in (plain.http + "/", plain.url):  # http:// and ws://
        hop = await redirectors(location, context)
        result = await client(
            [hop.url, "--count", "1", "--follow-redirects"], tmp_path, TLS_CA_FILE=str(pki.ca)
        )
        assert result.returncode == 1
        assert result.stderr.strip().splitlines()[-1] == (
            f"echo-client: the server at '{hop.url}' redirects (HTTP 301) to '{location}': "
            f"refused: '{location}' is not encrypted and the connection started as wss://"
        )
    assert "open id=" not in plain.log(), "nothing was sent in plaintext"


async def test_a_redirect_loop_ends(redirectors: Callable[..., Any], tmp_path: Path) -> None:
    loop = await redirectors("/again")
    result = await client([loop.url, "--count", "1", "--follow-redirects"], tmp_path)
    assert result.returncode == 1
    assert "more than 5 redirects" in result.stderr.splitlines()[-1]
    assert loop.hits == 6
