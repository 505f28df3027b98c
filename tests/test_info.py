"""Connection info over plain HTTP (JSON), the text echo's instance line, TLS details, mTLS.

The same fields as the ``info`` control's first message (tests/test_controls.py), asked
for with ``?format=json`` or ``Accept: application/json`` on any echo path or ``/``.
"""

from __future__ import annotations

import json
import os
import socket
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from echo.proxies import parse_trusted_proxies
from tests.support import (
    ServerFactory,
    ServerProcess,
    clean_env,
    run_server_briefly,
    wait_until,
)
from tests.test_httpecho import raw_request
from tests.tls_support import (
    Pki,
    client_cert_context,
    let_tls_close,
    make_pki,
    start_mtls_server,
    start_tls_server,
)

ServerStarter = Callable[..., ServerProcess]


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return make_pki(tmp_path)


async def get_json(url: str, **kwargs: Any) -> dict[str, Any]:
    async with aiohttp.ClientSession() as session, session.get(url, **kwargs) as response:
        assert response.status == 200
        assert response.content_type == "application/json"
        assert response.headers["Cache-Control"] == "no-store"
        return dict(await response.json())


async def get_text(url: str, **kwargs: Any) -> str:
    async with aiohttp.ClientSession() as session, session.get(url, **kwargs) as response:
        assert response.status == 200
        text = await response.text()
    await let_tls_close()
    return text


async def test_format_json_describes_the_request(start_app: ServerFactory) -> None:
    server = await start_app(instance_name="pod-7")
    request = (
        b"GET /some/path?format=json&a=%20 HTTP/1.1\r\n"
        b"Host: echo.test\r\n"
        b"Authorization: Bearer s3cret-token\r\n"
        b"Cookie: session=abc123; theme=dark\r\n"
        b"x-MiXeD: kept\r\n"
        b"Connection: close\r\n"
        b"\r\n"
    )
    status, body = await raw_request(server.port, request)
    assert status == 200
    info = json.loads(body)
    assert b"s3cret" not in body
    assert b"abc123" not in body
    assert info["connection"] is None
    assert info["instance"] == {
        "host": socket.gethostname(),
        "name": "pod-7",
        "pid": os.getpid(),
        "worker": None,
        "workers": 1,
    }
    assert info["remote"] == "127.0.0.1"
    assert info["peer"]["address"] == "127.0.0.1"
    assert isinstance(info["peer"]["port"], int)
    assert (info["method"], info["path"], info["query"]) == (
        "GET",
        "/some/path",
        "format=json&a=%20",
    )
    assert info["http_version"] == "1.1"
    assert info["headers"] == [
        ["Host", "echo.test"],
        ["Authorization", "Bearer [masked]"],
        ["Cookie", "session=[masked]; theme=[masked]"],
        ["x-MiXeD", "kept"],
        ["Connection", "close"],
    ]
    assert (info["subprotocol"], info["extensions"], info["tls"]) == (None, None, None)
    assert info["body_size"] == 0


@pytest.mark.parametrize(
    ("accept", "json_expected"),
    [
        ("application/json", True),
        ("text/html, Application/JSON;q=0.5", True),
        ("application/json; q=0", False),
        ("application/json;q=0.0", False),
        ("*/*", False),
        ("text/plain", False),
        ("application/jsonx", False),
    ],
)
async def test_accept_header_chooses_json(
    start_app: ServerFactory, accept: str, json_expected: bool
) -> None:
    server = await start_app()
    async with aiohttp.ClientSession() as session:
        async with session.post(
            server.make_url("/x"), data=b"12345", headers={"Accept": accept}
        ) as response:
            assert response.status == 200
            body = await response.read()
    if json_expected:
        assert response.content_type == "application/json"
        info = json.loads(body)
        assert (info["method"], info["body_size"]) == ("POST", 5)
    else:
        assert response.content_type == "text/plain"
        assert body.endswith(b"\r\n\r\n12345")


async def test_root_answers_json_when_asked_and_the_page_otherwise(
    start_app: ServerFactory,
) -> None:
    server = await start_app()
    info = await get_json(str(server.make_url("/")), headers={"Accept": "application/json"})
    assert info["path"] == "/"
    info = await get_json(str(server.make_url("/?format=json")))
    assert info["query"] == "format=json"
    async with aiohttp.ClientSession() as session, session.get(server.make_url("/")) as page:
        assert page.content_type == "text/html"


async def test_remote_is_the_client_behind_a_trusted_proxy(start_app: ServerFactory) -> None:
    server = await start_app(trusted_proxies=parse_trusted_proxies("127.0.0.1"))
    info = await get_json(
        str(server.make_url("/who?format=json")),
        headers={"X-Forwarded-For": "198.51.100.1, 203.0.113.9"},
    )
    assert info["remote"] == "203.0.113.9"
    assert info["peer"]["address"] == "127.0.0.1"


async def test_a_liar_is_not_believed_without_trusted_proxies(start_app: ServerFactory) -> None:
    server = await start_app()
    info = await get_json(
        str(server.make_url("/who?format=json")), headers={"X-Forwarded-For": "203.0.113.9"}
    )
    assert info["remote"] == "127.0.0.1"
    assert ["X-Forwarded-For", "203.0.113.9"] in info["headers"]


async def test_hostile_headers_stay_bounded_and_escaped(start_app: ServerFactory) -> None:
    server = await start_app()
    headers = b"".join(b"X-H%d: %s\r\n" % (i, b"v" * 2000) for i in range(120))
    request = (
        b"GET /h?format=json HTTP/1.1\r\nHost: x\r\nX-Bytes: caf\xc3\xa9 \xff\r\n"
        + headers
        + b"Connection: close\r\n\r\n"
    )
    status, body = await raw_request(server.port, request)
    assert status == 200
    info = json.loads(body)
    assert len(info["headers"]) == 100
    assert info["headers_omitted"] == 23
    assert info["headers"][1] == ["X-Bytes", "café \\xff"]
    assert all(len(value) <= 1027 for _name, value in info["headers"])
    assert len(body) < 120_000


async def test_text_echo_starts_with_the_instance_line(start_app: ServerFactory) -> None:
    server = await start_app(instance_name="eu-1.pod_7")
    async with aiohttp.ClientSession() as session, session.get(server.make_url("/x")) as answer:
        body = await answer.read()
    first, _, rest = body.partition(b"\r\n")
    assert (
        first
        == (
            f"# instance host={socket.gethostname()} name=eu-1.pod_7 pid={os.getpid()} workers=1"
        ).encode()
    )
    assert rest.startswith(b"GET /x HTTP/1.1\r\n")


@pytest.mark.parametrize("value", ["a b", "x" * 254, "caf\u00e9", "a/b", "a\nb"])
def test_bad_instance_name_exits_2(tmp_path: Path, value: str) -> None:
    result = run_server_briefly(clean_env(INSTANCE_NAME=value), tmp_path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("echo-server: invalid INSTANCE_NAME=")


async def test_tls_details_sni_and_alpn(server_process: ServerStarter, pki: Pki) -> None:
    server = start_tls_server(server_process, pki)
    context = client_cert_context(pki)
    context.set_alpn_protocols(["h2", "http/1.1"])
    info = await get_json(f"https://localhost:{server.port}/t?format=json", ssl=context)
    tls = info["tls"]
    assert tls["version"] in ("TLSv1.2", "TLSv1.3")
    assert tls["cipher"]
    assert tls["sni"] == "localhost"
    assert tls["alpn"] == "http/1.1"
    assert tls["client_certificate"] is None
    # By address: no SNI (clients send none for IP literals), no ALPN offered.
    info = await get_json(
        f"https://127.0.0.1:{server.port}/t?format=json", ssl=client_cert_context(pki)
    )
    assert (info["tls"]["sni"], info["tls"]["alpn"]) == (None, None)
    await let_tls_close()


async def test_mtls_admits_a_verified_client_and_shows_its_certificate(
    server_process: ServerStarter, pki: Pki
) -> None:
    server = start_mtls_server(server_process, pki)
    url = f"https://127.0.0.1:{server.port}/t?format=json"
    info = await get_json(url, ssl=client_cert_context(pki, pki.client))
    certificate = info["tls"]["client_certificate"]
    assert "CN=echo test client" in certificate["subject"]
    assert certificate["issuer"].startswith("O=trustme")
    assert "Testing CA" in certificate["issuer"]
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(
            f"wss://127.0.0.1:{server.port}/", ssl=client_cert_context(pki, pki.client)
        ) as ws:
            await ws.send_str("mutual")
            assert await ws.receive_str(timeout=5) == "mutual"
    await let_tls_close()


@pytest.mark.parametrize("who", ["no certificate", "another CA's certificate"])
async def test_mtls_refuses_other_clients_in_the_tls_handshake(
    server_process: ServerStarter, pki: Pki, who: str
) -> None:
    server = start_mtls_server(server_process, pki)
    certificate = None if who == "no certificate" else pki.stranger
    async with aiohttp.ClientSession() as session:
        with pytest.raises((aiohttp.ClientConnectionError, ssl.SSLError)):
            async with session.get(
                f"https://127.0.0.1:{server.port}/healthz",
                ssl=client_cert_context(pki, certificate),
            ) as response:
                await response.read()
    await let_tls_close()
    assert "open id=" not in server.log()
    await wait_until(lambda: "reason=client_certificate" in server.log())
    lines = [x for x in server.log().splitlines() if "reason=client_certificate" in x]
    assert all("refused remote=- origin=- reason=client_certificate (" in x for x in lines)
    metrics = await get_text(
        f"https://127.0.0.1:{server.port}/metrics", ssl=client_cert_context(pki, pki.client)
    )
    # aiohttp's client may try twice; each attempt is one refusal, counted and logged.
    counted = f'echo_handshakes_refused_total{{reason="client_certificate"}} {len(lines)}.0'
    assert counted in metrics


@pytest.mark.parametrize(
    ("variables", "expected"),
    [
        ({"TLS_CLIENT_CA_FILE": "ca"}, "unless TLS_CERT_FILE and TLS_KEY_FILE are set"),
        ({"TLS_CLIENT_CA_FILE": "missing", "TLS": "on"}, "No such file"),
        ({"TLS_CLIENT_CA_FILE": "key", "TLS": "on"}, "a PEM file of CA certificates"),
    ],
)
def test_bad_client_ca_file_exits_2(
    tmp_path: Path, pki: Pki, variables: dict[str, str], expected: str
) -> None:
    files = {"ca": pki.ca, "key": pki.key, "missing": tmp_path / "missing.pem"}
    env = clean_env(TLS_CLIENT_CA_FILE=str(files[variables["TLS_CLIENT_CA_FILE"]]))
    if "TLS" in variables:
        env.update(TLS_CERT_FILE=str(pki.cert), TLS_KEY_FILE=str(pki.key))
    result = run_server_briefly(env, tmp_path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("echo-server: invalid TLS_CLIENT_CA_FILE=")
    assert expected in lines[0]
