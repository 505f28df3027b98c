"""``echo-healthcheck``, the image's HEALTHCHECK: exit 0 only if this host's server is alive."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest

from echo.config import ServerSettings
from echo.healthcheck import healthz_url
from tests.support import ServerProcess, clean_env, free_port
from tests.tls_support import make_pki, start_tls_server

ServerStarter = Callable[..., ServerProcess]


def healthcheck(cwd: Path, **variables: str) -> subprocess.CompletedProcess[str]:
    """Run ``echo-healthcheck`` (the console script) with only ``variables`` set."""
    script = Path(sys.executable).with_name("echo-healthcheck")
    return subprocess.run(
        [str(script)],
        env=clean_env(**variables),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_url_reaches_a_wildcard_host_on_loopback() -> None:
    assert healthz_url(ServerSettings()) == "http://127.0.0.1:8080/healthz"
    assert healthz_url(ServerSettings(host="::", port=81)) == "http://[::1]:81/healthz"
    assert healthz_url(ServerSettings(host="10.1.2.3", port=9)) == "http://10.1.2.3:9/healthz"
    tls = ServerSettings(host="localhost", tls_cert_file="c.pem", tls_key_file="k.pem")
    assert healthz_url(tls) == "https://localhost:8080/healthz"


def test_a_running_server_is_healthy(server_process: ServerStarter, tmp_path: Path) -> None:
    server = server_process()  # on 127.0.0.1
    result = healthcheck(tmp_path, HOST="0.0.0.0", PORT=str(server.port))
    assert (result.returncode, result.stderr) == (0, "")


def test_a_tls_server_is_checked_over_https(server_process: ServerStarter, tmp_path: Path) -> None:
    pki = make_pki(tmp_path)
    server = start_tls_server(server_process, pki)
    tls = {"TLS_CERT_FILE": str(pki.cert), "TLS_KEY_FILE": str(pki.key)}
    result = healthcheck(tmp_path, HOST="127.0.0.1", PORT=str(server.port), **tls)
    assert (result.returncode, result.stderr) == (0, "")


def test_no_server_is_unhealthy_with_one_line(tmp_path: Path) -> None:
    port = free_port()
    result = healthcheck(tmp_path, HOST="127.0.0.1", PORT=str(port))
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(f"echo-healthcheck: http://127.0.0.1:{port}/")


class _Liar(BaseHTTPRequestHandler):
    """Something else on the port: 200, but not the server's answer."""

    def do_GET(self) -> None:
        body = b'{"status": "fine"}'
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def liar() -> Iterator[int]:
    server = HTTPServer(("127.0.0.1", 0), _Liar)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_an_answer_that_is_not_ok_is_unhealthy(liar: int, tmp_path: Path) -> None:
    result = healthcheck(tmp_path, HOST="127.0.0.1", PORT=str(liar))
    assert result.returncode == 1
    assert "unexpected answer" in result.stderr


def test_a_port_that_never_answers_is_unhealthy_within_the_timeout(tmp_path: Path) -> None:
    with socket.socket() as listener:  # accepts (backlog) but never answers
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        result = healthcheck(tmp_path, HOST="127.0.0.1", PORT=str(listener.getsockname()[1]))
    assert result.returncode == 1
    assert "timed out" in result.stderr


@pytest.mark.parametrize("variables", [{"PORT": "eighty"}, {"PORT": "0"}])
def test_bad_configuration_exits_2(variables: dict[str, str], tmp_path: Path) -> None:
    result = healthcheck(tmp_path, **variables)
    assert result.returncode == 2
    assert len(result.stderr.splitlines()) == 1
    assert result.stderr.startswith("echo-healthcheck: ")
