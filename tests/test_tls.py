"""TLS: https:// and wss:// on one port, certificate checks in the client, bad TLS settings.

Certificates come from a throwaway CA made by ``trustme`` for each test.
"""

from __future__ import annotations

import asyncio
import signal
import socket
import ssl
from collections.abc import Callable
from pathlib import Path

import aiohttp
import pytest
import trustme

from echo.client import CertificateUntrusted, EchoClient
from echo.client.dialer import Dialer
from echo.config import ClientSettings, ConfigError, ServerSettings
from echo.tls import client_context
from harness.frames import OP_CLOSE, close_payload, encode_frame, upgrade_request
from tests.client_support import ClientProcess, fast_client_env, fast_settings, parse_summary
from tests.support import ServerProcess, clean_env, run_server_briefly, seconds_until_cut_off
from tests.tls_support import Pki, let_tls_close, make_pki, start_tls_server, wait_tls_ready

ServerStarter = Callable[..., ServerProcess]


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return make_pki(tmp_path)


async def test_server_over_tls_echoes_to_a_client_trusting_the_ca(
    server_process: ServerStarter, pki: Pki
) -> None:
    server = start_tls_server(server_process, pki)
    port = server.port
    assert f"listening on https://127.0.0.1:{port}/ (WebSocket wss://127.0.0.1:{port}/, " in (
        server.log()
    )
    url = f"wss://127.0.0.1:{port}/"
    client = EchoClient(fast_settings(url, message_count=5, ca_file=str(pki.ca)))
    stats = await asyncio.wait_for(client.run(), 15)
    assert (stats.sent, stats.echoed, stats.mismatched, stats.connections) == (5, 5, 0, 1)


async def test_page_and_same_origin_rule_use_https(server_process: ServerStarter, pki: Pki) -> None:
    server = start_tls_server(server_process, pki, ALLOWED_ORIGINS="http://other.example")
    port = server.port
    context = ssl.create_default_context(cafile=str(pki.ca))
    async with aiohttp.ClientSession() as session:
        async with session.get(f"https://127.0.0.1:{port}/", ssl=context) as page:
            assert page.status == 200
            assert page.content_type == "text/html"
        # A page served over https sends its https origin: admitted as same-origin.
        async with session.ws_connect(
            f"wss://127.0.0.1:{port}/", origin=f"https://127.0.0.1:{port}", ssl=context
        ) as ws:
            await ws.send_str("over tls")
            assert (await ws.receive_str(timeout=5)) == "over tls"
        # The same host and port over plain http is another origin.
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await session.ws_connect(
                f"wss://127.0.0.1:{port}/", origin=f"http://127.0.0.1:{port}", ssl=context
            )
        assert refused.value.status == 403
    await let_tls_close()  # aiohttp's client closes TLS connections in the background


def test_client_without_the_ca_exits_1_with_one_clear_line(
    server_process: ServerStarter, pki: Pki, tmp_path: Path
) -> None:
    server = start_tls_server(server_process, pki)
    env = fast_client_env(WS_URL=f"wss://127.0.0.1:{server.port}/")
    client = ClientProcess([], env, tmp_path)
    try:
        # Without the certificate check the client would retry for ever.
        assert client.proc.wait(15) == 1, client.stderr()
    finally:
        client.kill()
    last = client.stderr().strip().splitlines()[-1]
    assert last.startswith("echo-client: cannot trust the TLS certificate of 'wss://127.0.0.1:")
    assert "certificate verify failed" in last
    assert "TLS_CA_FILE" in last
    assert client.stdout() == ""


async def test_client_refuses_a_certificate_for_another_host(
    server_process: ServerStarter, pki: Pki, tmp_path: Path
) -> None:
    other_ca = trustme.CA()
    wrong = other_ca.issue_cert("elsewhere.example")
    cert, key, ca = tmp_path / "w.pem", tmp_path / "wk.pem", tmp_path / "wca.pem"
    wrong.cert_chain_pems[0].write_to_path(str(cert))
    wrong.private_key_pem.write_to_path(str(key))
    other_ca.cert_pem.write_to_path(str(ca))
    server = server_process(ready=False, TLS_CERT_FILE=str(cert), TLS_KEY_FILE=str(key))
    unchecked = ssl.create_default_context()
    unchecked.check_hostname = False
    unchecked.verify_mode = ssl.CERT_NONE
    wait_tls_ready(server, unchecked)
    client = EchoClient(
        fast_settings(f"wss://127.0.0.1:{server.port}/", message_count=1, ca_file=str(ca))
    )
    with pytest.raises(CertificateUntrusted) as caught:
        await asyncio.wait_for(client.run(), 10)
    assert "127.0.0.1" in caught.value.reason


@pytest.mark.parametrize(
    ("files", "name", "expected"),
    [
        ({"TLS_CERT_FILE": "cert"}, "TLS_KEY_FILE", "since TLS_CERT_FILE is set"),
        ({"TLS_KEY_FILE": "key"}, "TLS_CERT_FILE", "since TLS_KEY_FILE is set"),
        ({"TLS_CERT_FILE": "missing", "TLS_KEY_FILE": "key"}, "TLS_CERT_FILE", "No such file"),
        ({"TLS_CERT_FILE": "cert", "TLS_KEY_FILE": "missing"}, "TLS_KEY_FILE", "No such file"),
        ({"TLS_CERT_FILE": "key", "TLS_KEY_FILE": "key"}, "TLS_CERT_FILE", "PEM certificate"),
        ({"TLS_CERT_FILE": "cert", "TLS_KEY_FILE": "other_key"}, "TLS_KEY_FILE", "private key"),
        ({"TLS_CERT_FILE": "cert", "TLS_KEY_FILE": "cert"}, "TLS_KEY_FILE", "private key"),
        ({"TLS_CERT_FILE": "cert", "TLS_KEY_FILE": "encrypted_key"}, "TLS_KEY_FILE", "unencrypted"),
    ],
)
def test_bad_tls_settings_exit_2_with_one_line(
    pki: Pki, tmp_path: Path, files: dict[str, str], name: str, expected: str
) -> None:
    paths = {
        "cert": pki.cert,
        "key": pki.key,
        "other_key": pki.other_key,
        "encrypted_key": pki.encrypted_key,
    }
    variables = {var: str(paths.get(which, tmp_path / which)) for var, which in files.items()}
    result = run_server_briefly(clean_env(PORT="0", HOST="127.0.0.1", **variables), tmp_path)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"echo-server: invalid {name}="), lines[0]
    assert expected in lines[0]


def test_tls_settings_are_read(pki: Pki) -> None:
    settings = ServerSettings.from_env(
        {"TLS_CERT_FILE": str(pki.cert), "TLS_KEY_FILE": str(pki.key)}
    )
    assert settings.tls
    assert (settings.tls_cert_file, settings.tls_key_file) == (str(pki.cert), str(pki.key))
    assert not ServerSettings.from_env({}).tls


def test_client_ca_file_is_validated(pki: Pki, tmp_path: Path) -> None:
    env = {"WS_URL": "wss://127.0.0.1:1/"}
    assert ClientSettings.from_env({**env, "TLS_CA_FILE": str(pki.ca)}).ca_file == str(pki.ca)
    with pytest.raises(ConfigError, match=r"TLS_CA_FILE=.*No such file"):
        ClientSettings.from_env({**env, "TLS_CA_FILE": str(tmp_path / "none.pem")})
    with pytest.raises(ConfigError, match=r"TLS_CA_FILE=.*a PEM file of CA certificates"):
        ClientSettings.from_env({**env, "TLS_CA_FILE": str(pki.key)})


def test_client_bad_ca_file_exits_2(tmp_path: Path) -> None:
    env = fast_client_env(WS_URL="wss://127.0.0.1:1/", TLS_CA_FILE=str(tmp_path / "none.pem"))
    result = run_server_briefly(env, tmp_path, module="echo.client")
    assert result.returncode == 2
    assert result.stderr.startswith("echo-client: invalid TLS_CA_FILE=")
    assert len(result.stderr.strip().splitlines()) == 1


async def test_silent_connection_on_the_tls_port_is_cut_after_handshake_timeout(
    server_process: ServerStarter, pki: Pki
) -> None:
    # asyncio's own limit for a TLS handshake is 60 s; HANDSHAKE_TIMEOUT applies instead.
    server = start_tls_server(server_process, pki, HANDSHAKE_TIMEOUT="300")
    await seconds_until_cut_off(server.port)


def test_client_over_wss_survives_a_server_kill_and_loses_nothing(
    server_process: ServerStarter, pki: Pki, tmp_path: Path
) -> None:
    first = start_tls_server(server_process, pki)
    url = f"wss://127.0.0.1:{first.port}/"
    env = fast_client_env(WS_URL=url, TLS_CA_FILE=str(pki.ca), LOG_FORMAT="json")
    client = ClientProcess([], env, tmp_path)
    try:
        client.wait_for_log(r'"event": "echo"', count=5)
        first.signal(signal.SIGKILL)
        first.wait()
        client.wait_for_log(r'"event": "disconnected"')
        second = start_tls_server(server_process, pki, PORT=str(first.port))
        client.wait_for_log(r'"event": "reconnected".*"connection": 2')
        before = client.stderr().count('"event": "echo"')
        client.wait_for_log(r'"event": "echo"', count=before + 5)
        assert client.stop(signal.SIGINT) == 0, client.stderr()
    finally:
        client.kill()
    summary = parse_summary(client.stdout())
    assert summary["echoed"] == summary["sent"], summary
    assert summary["mismatched"] == "0"
    assert int(summary["reconnects"]) >= 1
    assert '"event": "open"' not in second.log(), "the server logs text by default"
    assert "open id=c1" in second.log()
    client.assert_no_leaks_reported()


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_client_waits_for_the_tls_shutdown_of_each_connection(
    server_process: ServerStarter, pki: Pki, loop: str
) -> None:
    # aiohttp forgets a transport once it has closed it; a TLS one is still exchanging
    # close_notify then, and would be leaked if the client's event loop ended first.
    # The client runs on uvloop (echo.eventloop), whose TLS transport is no
    # asyncio.Transport: both loops are checked.
    factory = pytest.importorskip("uvloop").new_event_loop if loop == "uvloop" else None
    server = start_tls_server(server_process, pki)
    settings = fast_settings(f"wss://127.0.0.1:{server.port}/", ca_file=str(pki.ca))

    async def connect_and_close() -> None:
        dialer = Dialer(settings)
        async with dialer.session() as session:
            link = await dialer.connect(session)
            watch = link._transport
            assert watch is not None, "the trace hook saw no transport under the WebSocket"
            assert not watch.closed
            await link.close()
            assert watch.closed  # the socket is gone: close_notify exchanged, or aborted
            assert watch.transport.is_closing()

    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(connect_and_close())


async def test_sigterm_closes_wss_connections_with_1001_and_exits_0(
    server_process: ServerStarter, pki: Pki
) -> None:
    # With warnings on, a transport left open when the loop ends is a ResourceWarning.
    server = start_tls_server(server_process, pki, PYTHONWARNINGS="always::ResourceWarning")
    context = client_context(str(pki.ca))
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(f"wss://127.0.0.1:{server.port}/", ssl=context) as ws:
            await ws.send_str("before")
            assert (await ws.receive_str(timeout=5)) == "before"
            server.signal(signal.SIGTERM)
            closing = await ws.receive(timeout=10)
            assert (closing.type, closing.data) == (aiohttp.WSMsgType.CLOSE, 1001)
    assert await asyncio.to_thread(server.wait) == 0
    log = server.log()
    # The shutdown waits for the connection's end (after the TLS close_notify
    # exchange), which logs this line; before, the process could exit first.
    assert "close id=c1 code=1001" in log
    for sign in ("Traceback", "Error", "WARNING", "ResourceWarning"):
        assert sign not in log, log


def test_sigterm_waits_for_a_slow_tls_close_before_exiting(
    server_process: ServerStarter, pki: Pki
) -> None:
    """The peer answers the 1001 but never sends its TLS close_notify: the connection
    ends only when the server's TLS shutdown gives up (ssl_shutdown_timeout). The server
    waits for that end before it exits, so the close line is logged and no transport is
    left open; it used to exit first (on the fast engine, whose close line comes at the
    connection's end, the line was missing)."""
    server = start_tls_server(server_process, pki, PYTHONWARNINGS="always::ResourceWarning")
    context = client_context(str(pki.ca))
    raw = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    with context.wrap_socket(raw, server_hostname="127.0.0.1") as sock:
        sock.sendall(upgrade_request("127.0.0.1", server.port))
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = sock.recv(1)
            assert chunk, "closed during the handshake"
            head += chunk
        assert b" 101 " in head.split(b"\r\n", 1)[0], head
        server.signal(signal.SIGTERM)
        frame = sock.recv(2)
        assert frame[0] == 0x88, frame  # the server's close frame
        sock.recv(frame[1] & 0x7F)
        sock.sendall(encode_frame(OP_CLOSE, close_payload(1001)))
        assert server.wait(30) == 0
    log = server.log()
    assert "close id=c1 code=1001 sent=1001 received=1001" in log, log
    assert "ResourceWarning" not in log, log
