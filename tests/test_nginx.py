"""End to end behind nginx: the shipped deploy/nginx/echo.conf in front of two echo-servers.

nginx terminates TLS on 127.0.0.1 and [::1]; the backends listen on 127.0.0.1 with
TRUSTED_PROXIES=127.0.0.1. Clients connect through [::1], so a backend that believes
X-Forwarded-For logs them as ``::1`` while its peer, nginx, is 127.0.0.1. The backends'
ALLOWED_ORIGINS list only https://allowed.example: the page origin https://[::1]:PORT is
admitted only through the same-origin rule with the scheme from X-Forwarded-Proto.
"""

from __future__ import annotations

import io
import json
import os
import re
import signal
import ssl
import subprocess
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from playwright.async_api import async_playwright, expect

from echo.config import ServerSettings
from tests import nginx_support
from tests.client_support import ClientProcess, fast_client_env, parse_summary
from tests.nginx_support import (
    SITE_CONFIG,
    Nginx,
    NginxUnavailable,
    ensure_nginx,
    local_site,
)
from tests.support import ServerProcess
from tests.test_browser import CHROMIUM, CHROMIUM_ARGS

ServerStarter = Callable[..., ServerProcess]
ALLOWED = "https://allowed.example"
MAX_BODY = ServerSettings().max_message_size


def open_connections(backend: ServerProcess) -> int:
    with urllib.request.urlopen(f"{backend.http}/healthz", timeout=5) as response:
        return int(json.load(response)["connections"])


@pytest.fixture(scope="session")
def nginx_binary() -> str:
    try:
        return ensure_nginx()
    except NginxUnavailable as error:
        pytest.fail(f"the nginx tests need nginx: {error}", pytrace=False)


@dataclass
class Deployment:
    """nginx on ``tls_port`` (https) and ``plain_port`` (redirect) before two backends."""

    nginx: Nginx
    backends: list[ServerProcess]
    tls_port: int
    plain_port: int
    ca: Path
    context: ssl.SSLContext

    @property
    def url(self) -> str:
        return f"wss://[::1]:{self.tls_port}/"

    @property
    def page_origin(self) -> str:
        return f"https://[::1]:{self.tls_port}"

    def connections(self) -> list[int]:
        """Open WebSockets per backend, from its /healthz (asked directly, not via nginx)."""
        return [open_connections(backend) for backend in self.backends]

    def backend_logs(self) -> str:
        return "\n".join(backend.log() for backend in self.backends)


@pytest.fixture
def deployment(
    nginx_binary: str, server_process: ServerStarter, tmp_path: Path
) -> Iterator[Deployment]:
    backends = [
        server_process(
            TRUSTED_PROXIES="127.0.0.1", ALLOWED_ORIGINS=ALLOWED, ALLOW_MISSING_ORIGIN="false"
        )
        for _ in range(2)
    ]
    local = local_site(
        [backend.port for backend in backends], tmp_path, ("127.0.0.1", "::1", "localhost")
    )
    nginx = Nginx(nginx_binary, local.prefix, local.config)
    try:
        nginx.start(local.tls_port)
        yield Deployment(
            nginx,
            backends,
            local.tls_port,
            local.plain_port,
            local.ca,
            ssl.create_default_context(cafile=str(local.ca)),
        )
    finally:
        nginx.stop()


async def handshake(
    deployment: Deployment, origin: str, headers: dict[str, str] | None = None
) -> int:
    """Open and close a WebSocket through nginx; the HTTP status of the handshake."""
    async with aiohttp.ClientSession() as session:
        try:
            async with session.ws_connect(
                deployment.url, origin=origin, headers=headers, ssl=deployment.context
            ) as ws:
                await ws.send_str("ping")
                assert (await ws.receive(timeout=5)).data == "ping"
                return 101
        except aiohttp.WSServerHandshakeError as error:
            return error.status


async def test_client_fails_over_to_the_other_backend_through_nginx_and_loses_nothing(
    deployment: Deployment, tmp_path: Path
) -> None:
    env = fast_client_env(
        WS_URL=deployment.url, ORIGIN=deployment.page_origin, TLS_CA_FILE=str(deployment.ca)
    )
    client = ClientProcess([], env, tmp_path)
    try:
        client.wait_for_log(r"echo seq=\d+", count=5)
        assert sorted(deployment.connections()) == [0, 1]
        holder = deployment.connections().index(1)
        first, second = deployment.backends[holder], deployment.backends[1 - holder]
        # Admitted by the same-origin rule, since https came from X-Forwarded-Proto;
        # counted and logged under the client's address from X-Forwarded-For.
        origin = re.escape(deployment.page_origin)
        assert re.search(rf"open id=c1 remote=::1 origin='{origin}'", first.log()), first.log()

        first.signal(signal.SIGKILL)
        first.wait()
        client.wait_for_log(r"connection lost")
        client.wait_for_log(r"connected to .* \(connection 2,")
        before = len(re.findall(r"echo seq=", client.stderr()))
        client.wait_for_log(r"echo seq=\d+", count=before + 5)
        assert re.search(rf"open id=c1 remote=::1 origin='{origin}'", second.log()), second.log()
        assert open_connections(second) == 1

        # The dead backend is skipped on connect: new handshakes go to the live one
        # although least_conn prefers the dead one (no connections) until it is
        # marked failed.
        for _ in range(3):
            assert await handshake(deployment, ALLOWED) == 101
        refused = rf"Connection refused\) while connecting to upstream, .*:{first.port}/"
        assert re.search(refused, deployment.nginx.log()), deployment.nginx.log()
        assert client.stop(signal.SIGINT) == 0, client.stderr()
    finally:
        client.kill()
    summary = parse_summary(client.stdout())
    assert summary["echoed"] == summary["sent"], summary
    assert int(summary["sent"]) >= 10
    assert (summary["mismatched"], summary["reconnects"]) == ("0", "1"), summary
    # nginx never answered the client with an error: its one reconnect went through.
    assert "cannot connect" not in client.stderr(), client.stderr()
    client.assert_no_leaks_reported()


async def test_origin_rules_and_forwarded_headers_hold_through_nginx(
    deployment: Deployment,
) -> None:
    spoof = {"X-Forwarded-For": "198.51.100.7", "X-Forwarded-Proto": "http"}
    # The page's own https origin: nginx overwrites the client's X-Forwarded-Proto.
    assert await handshake(deployment, deployment.page_origin, spoof) == 101
    assert await handshake(deployment, ALLOWED) == 101
    assert await handshake(deployment, "https://evil.example", spoof) == 403
    assert await handshake(deployment, f"http://[::1]:{deployment.tls_port}") == 403
    logs = deployment.backend_logs()
    assert "refused remote=::1 origin='https://evil.example' reason=origin" in logs, logs
    assert "198.51.100.7" not in logs, "a client's own X-Forwarded-For entry is not believed"

    async with aiohttp.ClientSession() as session:
        https = f"https://[::1]:{deployment.tls_port}"
        # The HTTP echo shows what nginx forwarded.
        async with session.get(
            f"{https}/anything", headers=spoof, ssl=deployment.context
        ) as response:
            assert response.status == 200
            seen = await response.text()
        assert f"\r\nHost: [::1]:{deployment.tls_port}\r\n" in seen, seen
        assert "\r\nX-Forwarded-For: 198.51.100.7, ::1\r\n" in seen, seen
        assert "\r\nX-Forwarded-Proto: https\r\n" in seen, seen
        assert "X-Forwarded-Proto: http\r\n" not in seen, seen

        # Bodies: up to MAX_MESSAGE_SIZE reach a backend, one byte more is refused by
        # nginx itself (its own error page), before any backend reads it.
        for size, status in ((MAX_BODY, 200), (MAX_BODY + 1, 413)):
            async with session.post(
                f"{https}/upload", data=io.BytesIO(b"x" * size), ssl=deployment.context
            ) as response:
                assert response.status == status, size
                body = await response.read()
            assert (b"<center>nginx" in body) == (status == 413), body[:200]

        async with session.get(f"{https}/metrics", ssl=deployment.context) as response:
            assert response.status == 403, "metrics are not served to the public"
        async with session.get(
            f"http://127.0.0.1:{deployment.plain_port}/", allow_redirects=False
        ) as response:
            assert response.status == 301
            assert response.headers["Location"].startswith("https://127.0.0.1")


async def test_console_page_served_through_nginx_over_https_connects(
    deployment: Deployment,
) -> None:
    """The case X-Forwarded-Proto exists for: the page at https:// opens its wss:// socket."""
    if not os.access(CHROMIUM, os.X_OK):
        pytest.skip(f"no browser: {CHROMIUM} missing (apt-get install chromium; .ci/run does)")
    url = f"https://127.0.0.1:{deployment.tls_port}/"
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        try:
            context = await browser.new_context(ignore_https_errors=True)  # our throwaway CA
            page = await context.new_page()
            response = await page.goto(url)
            assert response is not None
            assert response.ok
            await expect(page.get_by_role("status")).to_have_text("open", timeout=10_000)
            await page.get_by_role("textbox", name="Message", exact=True).fill("via nginx")
            await page.get_by_role("button", name="Send", exact=True).click()
            received = page.get_by_role("log").locator("li.received")
            await expect(received.filter(has_text="via nginx")).to_have_count(1, timeout=10_000)
            await context.close()
        finally:
            await browser.close()
    page_origin = f"origin='https://127.0.0.1:{deployment.tls_port}'"
    assert page_origin in deployment.backend_logs(), deployment.backend_logs()


def directive(name: str) -> str:
    """The value of a directive that occurs once in the shipped config."""
    values = re.findall(rf"^\s*{name}\s+([^;]+);", SITE_CONFIG.read_text(), re.MULTILINE)
    assert len(values) == 1, (name, values)
    return str(values[0])


def test_config_limits_match_the_server_defaults() -> None:
    defaults = ServerSettings()
    # A silent connection sees the server's ping after at most two heartbeat intervals.
    read_timeout = int(directive("proxy_read_timeout").removesuffix("s"))
    assert read_timeout > 2 * defaults.heartbeat_interval
    assert directive("client_max_body_size") == f"{defaults.max_message_size >> 20}m"
    assert directive("proxy_http_version") == "1.1"


def test_missing_nginx_is_installed_with_apt_get_or_the_test_fails_saying_why(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    commands: list[list[str]] = []
    installed: list[str] = []

    def run(command: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
        commands.append(command)
        if "install" in command:
            installed.append("/usr/sbin/nginx")
        return subprocess.CompletedProcess(command, 0, "", "")

    monkeypatch.setattr(nginx_support, "_find_nginx", lambda: installed[0] if installed else None)
    monkeypatch.setattr(nginx_support, "_run", run)
    assert nginx_support.ensure_nginx() == "/usr/sbin/nginx"
    apt = [command[command.index("apt-get") :] for command in commands[:2]]
    assert apt == [
        ["apt-get", "update", "-q"],
        ["apt-get", "install", "-y", "-q", "--no-install-recommends", "nginx"],
    ]

    def failing(command: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
        return subprocess.CompletedProcess(command, 100, "", "E: Unable to locate package nginx")

    installed.clear()
    monkeypatch.setattr(nginx_support, "_run", failing)
    with pytest.raises(NginxUnavailable, match=r"(?s)apt-get update -q` exited 100.*Unable"):
        nginx_support.ensure_nginx()
