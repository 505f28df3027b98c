"""The client against nginx running deploy/nginx/echo.conf: the idle-timeout probe finds
a short proxy_read_timeout, and nginx's own port-80 redirect is a real redirect."""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests import nginx_support
from tests.client_support import run_client
from tests.nginx_support import Nginx, ensure_nginx, local_site
from tests.support import ServerProcess

ServerStarter = Callable[..., ServerProcess]
READ_TIMEOUT = 3.0  # seconds: proxy_read_timeout of the rendered config


@dataclass
class Site:
    tls_port: int
    plain_port: int
    ca: Path

    @property
    def url(self) -> str:
        return f"wss://127.0.0.1:{self.tls_port}/"


@pytest.fixture
def site(server_process: ServerStarter, tmp_path: Path) -> Iterator[Site]:
    try:
        binary = ensure_nginx()
    except nginx_support.NginxUnavailable as error:
        pytest.fail(str(error))
    # The backends never ping (their heartbeat is an hour): the path's own timeout decides.
    backends = [server_process(HEARTBEAT_INTERVAL="3600000") for _ in range(2)]
    local = local_site(
        [backend.port for backend in backends],
        tmp_path,
        replacements={"proxy_read_timeout 90s;": f"proxy_read_timeout {READ_TIMEOUT:g}s;"},
    )
    nginx = Nginx(binary, local.prefix, local.config)
    try:
        nginx.start(local.tls_port)
        yield Site(local.tls_port, local.plain_port, local.ca)
    finally:
        nginx.stop()


def client(args: list[str], cwd: Path, **variables: str) -> subprocess.CompletedProcess[str]:
    return run_client(args, cwd, timeout=240, env=variables)


def test_idle_probe_finds_nginx_proxy_read_timeout_within_10_percent(
    site: Site, tmp_path: Path
) -> None:
    result = client(
        ["--probe-idle", "6000", "--json", site.url], tmp_path, TLS_CA_FILE=str(site.ca)
    )
    assert result.returncode == 0, result.stderr
    events = [json.loads(line) for line in result.stdout.splitlines()]
    start = next(e for e in events if e["event"] == "probe_start")
    assert start["max_s"] == 6.0
    assert start["bound_s"] <= 4 * (6 + 5 + 10), "the bound is said up front"
    verdict = next(e for e in events if e["event"] == "probe")
    assert verdict["inconsistent"] is None
    assert verdict["estimate_s"] == pytest.approx(READ_TIMEOUT, rel=0.10), verdict
    assert verdict["longest_survived_s"] < READ_TIMEOUT <= verdict["first_cut_s"] * 1.10, verdict
    assert verdict["first_cut_s"] - verdict["longest_survived_s"] <= 0.10 * READ_TIMEOUT
    # nginx closes the connection at the timeout; it sends no WebSocket close frame.
    assert "without a close frame (1006)" in verdict["how"], verdict
    rounds = [e for e in events if e["event"] == "probe_round"]
    assert 2 <= len(rounds) <= 4
    assert rounds[0]["server_pings"] == 0


def test_idle_probe_in_text_says_the_bound_and_the_result(site: Site, tmp_path: Path) -> None:
    result = client(["--probe-idle", "1000", site.url], tmp_path, TLS_CA_FILE=str(site.ca))
    assert result.returncode == 0, result.stderr
    assert re.search(
        r"probing the idle timeout of .* up to 1 s: 8 connections per round, at most 4 rounds, "
        r"at most (\d+ min )?\d+ s in all",
        result.stderr,
    ), result.stderr
    assert result.stdout == (
        "idle probe: no cut up to 1 s: every connection idle that long survived (1.000 s)\n"
    )


def test_nginx_redirect_is_not_followed_by_default(site: Site, tmp_path: Path) -> None:
    plain = f"ws://127.0.0.1:{site.plain_port}/"
    result = client([plain, "--count", "1"], tmp_path)
    assert result.returncode == 1, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last == (
        f"echo-client: the server at '{plain}' redirects (HTTP 301) to 'https://127.0.0.1/': "
        "not followed; connect to that URL, or pass --follow-redirects"
    )


def test_a_followed_redirect_to_an_unreachable_place_says_so(site: Site, tmp_path: Path) -> None:
    # nginx's port-80 server sends clients to https://$host/ (port 443): nothing there.
    plain = f"ws://127.0.0.1:{site.plain_port}/"
    result = client(
        [plain, "--follow-redirects", "--max-attempts", "2"], tmp_path, TLS_CA_FILE=str(site.ca)
    )
    assert result.returncode == 1
    assert re.search(
        rf"redirected \(HTTP 301\) from {re.escape(plain)} to wss://127\.0\.0\.1/", result.stderr
    )
    assert re.search(
        rf"cannot connect \(attempt 1 of 2\): 127\.0\.0\.1:443: .* \(redirected from "
        rf"{re.escape(plain)}\); retrying in",
        result.stderr,
    ), result.stderr
