"""The console page in a real browser: Debian's Chromium driven by Playwright.

Every server here is a real ``echo.server`` subprocess, so the browser and the server
share nothing but loopback sockets. One browser serves the whole module (launching one
takes about a second); each test gets a fresh context, so pages share no state.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from urllib.parse import quote

import pytest
import pytest_asyncio
from playwright.async_api import Browser, FilePayload, Page, async_playwright, expect

from tests.support import ServerProcess, answers, clean_env, free_port, wait_until
from tests.tls_support import make_pki, start_tls_server

pytestmark = pytest.mark.asyncio(loop_scope="module")

CHROMIUM = Path(os.environ.get("CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--no-sandbox",  # CI runs as root, where Chromium's sandbox cannot start
    "--disable-gpu",
    "--disable-quic",
    # Nothing but loopback: no lookups of Google's update and account hosts.
    "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1 , EXCLUDE localhost",
]
ROOT = Path(__file__).resolve().parent.parent
REPORTS = ROOT / "reports"
# The servers' default origin list, which never names the loopback ports used here:
# the page is admitted by the same-origin rule alone.
DEFAULT_ORIGINS = {"ALLOWED_ORIGINS": "http://localhost:3000", "ALLOW_MISSING_ORIGIN": "false"}

expect.set_options(timeout=10_000)

StartServer = Callable[..., ServerProcess]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def browser() -> AsyncIterator[Browser]:
    if not os.access(CHROMIUM, os.X_OK):
        pytest.skip(f"no browser: {CHROMIUM} missing (apt-get install chromium; .ci/run does)")
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        yield browser
        await browser.close()


@pytest_asyncio.fixture(loop_scope="module")
async def page(browser: Browser) -> AsyncIterator[Page]:
    context = await browser.new_context(viewport={"width": 900, "height": 900})
    page = await context.new_page()
    page.set_default_timeout(10_000)
    yield page
    await context.close()


async def open_console(page: Page, url: str) -> None:
    response = await page.goto(url)
    assert response is not None
    assert response.ok
    assert "content-security-policy" in response.headers


async def test_page_echoes_text_and_binary(page: Page, server_process: StartServer) -> None:
    server = server_process(**DEFAULT_ORIGINS)
    await open_console(page, server.http + "/")
    log = page.get_by_role("log")
    state = page.get_by_role("status")
    await expect(state).to_have_text("open")
    received = log.locator("li.received")

    await page.get_by_role("textbox", name="Message", exact=True).fill("hello, browser")
    await page.get_by_role("button", name="Send", exact=True).click()
    await expect(received.filter(has_text="hello, browser")).to_have_count(1)
    await expect(received.first).to_contain_text("text 14 B")
    await expect(received.first).to_contain_text("rtt")

    await page.get_by_label("Binary (hex)").check()
    await page.get_by_role("textbox", name="Message", exact=True).fill("00 f")
    await page.get_by_role("button", name="Send", exact=True).click()
    await expect(page.get_by_role("alert")).to_contain_text("Not hex")
    await page.get_by_role("textbox", name="Message", exact=True).fill("00 ff 10 80")
    await page.get_by_role("button", name="Send", exact=True).click()
    await expect(received.filter(has_text="binary 4 B")).to_contain_text("00 ff 10 80")
    await expect(page.get_by_role("alert")).to_be_hidden()

    five = FilePayload(name="five.bin", mimeType="application/octet-stream", buffer=bytes(5))
    await page.get_by_label("Binary from a file").set_input_files(files=[five])
    await page.get_by_role("button", name="Send file", exact=True).click()
    await expect(received.filter(has_text="binary 5 B")).to_contain_text("00 00 00 00 00")
    await expect(log.locator("li.sent")).to_have_count(3)
    await expect(received).to_have_count(3)

    await page.get_by_role("button", name="Disconnect", exact=True).click()
    await expect(log.locator("li.event").last).to_contain_text("code 1000 normal closure")
    await expect(state).to_have_text("closed")
    assert f"origin='http://127.0.0.1:{server.port}'" in server.log()
    await wait_until(lambda: "close id=c1 code=1000" in server.log())

    await page.get_by_role("button", name="Connect", exact=True).click()
    await expect(state).to_have_text("open")
    REPORTS.mkdir(exist_ok=True)
    await page.screenshot(path=REPORTS / "browser.png", full_page=True)


async def test_page_reconnects_after_the_server_comes_back(
    page: Page, server_process: StartServer
) -> None:
    first = server_process(**DEFAULT_ORIGINS)
    await open_console(page, first.http + "/")
    state = page.get_by_role("status")
    connected = page.get_by_role("log").locator("li.event", has_text="connected")
    await expect(state).to_have_text("open")
    await expect(connected).to_have_count(1)

    first.stop()  # SIGKILL: no close frame, the page sees 1006
    await expect(page.get_by_role("log")).to_contain_text("code 1006")
    await expect(state).to_contain_text("reconnecting")
    await expect(page.get_by_role("alert")).to_contain_text("Cannot reach the server")

    second = server_process(PORT=str(first.port), **DEFAULT_ORIGINS)
    await expect(connected).to_have_count(2, timeout=20_000)
    await expect(state).to_have_text("open")
    await expect(page.get_by_role("alert")).to_be_hidden()
    await page.get_by_role("textbox", name="Message", exact=True).fill("again")
    await page.get_by_role("button", name="Send", exact=True).click()
    await expect(page.get_by_role("log").locator("li.received")).to_contain_text("again")
    assert "open id=c1" in second.log()


async def test_reconnection_can_be_turned_off(page: Page, server_process: StartServer) -> None:
    server = server_process(**DEFAULT_ORIGINS)
    await open_console(page, server.http + "/")
    state = page.get_by_role("status")
    await expect(state).to_have_text("open")
    await page.get_by_label("Reconnect automatically").uncheck()
    server.stop()
    await expect(page.get_by_role("log")).to_contain_text("code 1006")
    await expect(state).to_have_text("closed")
    await expect(page.get_by_role("button", name="Connect", exact=True)).to_be_enabled()


async def test_page_from_another_origin_is_refused_and_says_why(
    page: Page, server_process: StartServer
) -> None:
    target = server_process(**DEFAULT_ORIGINS)
    other = server_process(**DEFAULT_ORIGINS)
    await open_console(page, f"{other.http}/?url={quote(target.url, safe='')}")
    alert = page.get_by_role("alert")
    await expect(alert).to_contain_text(f"Refused by the server at {target.url}")
    await expect(alert).to_contain_text(f"origin {other.http} is not in its ALLOWED_ORIGINS")
    await expect(page.get_by_role("status")).not_to_have_text("open")
    # The server turned it away, not the page's own Content-Security-Policy.
    await wait_until(lambda: f"origin='{other.http}' reason=origin" in target.log())
    assert "open id=" not in target.log()
    REPORTS.mkdir(exist_ok=True)
    await page.screenshot(path=REPORTS / "browser-refused.png", full_page=True)


async def test_page_says_when_the_server_is_full(page: Page, server_process: StartServer) -> None:
    server = server_process(MAX_CONNECTIONS="1", **DEFAULT_ORIGINS)
    await open_console(page, server.http + "/")
    await expect(page.get_by_role("status")).to_have_text("open")
    second = await page.context.new_page()
    await open_console(second, server.http + "/")
    await expect(second.get_by_role("alert")).to_contain_text(
        "Refused: the server is full (1 of 1 connections open)"
    )
    await wait_until(lambda: "reason=limit" in server.log())


async def test_page_pointed_at_a_server_that_lists_its_origin_connects(
    page: Page, server_process: StartServer
) -> None:
    other = server_process(**DEFAULT_ORIGINS)
    target = server_process(ALLOWED_ORIGINS=other.http, ALLOW_MISSING_ORIGIN="false")
    await open_console(page, f"{other.http}/?url={quote(target.url, safe='')}")
    await expect(page.get_by_role("status")).to_have_text("open")
    await expect(page.locator("#target")).to_have_text(target.url)
    await page.get_by_role("textbox", name="Message", exact=True).fill("over there")
    await page.get_by_role("button", name="Send", exact=True).click()
    await expect(page.get_by_role("log").locator("li.received")).to_contain_text("over there")
    assert f"origin='{other.http}'" in target.log()
    assert "open id=" not in other.log()


async def test_page_over_https_connects_with_wss(
    browser: Browser, server_process: StartServer, tmp_path: Path
) -> None:
    pki = make_pki(tmp_path)
    server = start_tls_server(server_process, pki, **DEFAULT_ORIGINS)
    origin = f"https://127.0.0.1:{server.port}"
    # The throwaway CA is not in Chromium's store; the context accepts its certificate.
    context = await browser.new_context(ignore_https_errors=True)
    try:
        page = await context.new_page()
        await open_console(page, origin + "/")
        await expect(page.get_by_role("status")).to_have_text("open")
        await page.get_by_role("textbox", name="Message", exact=True).fill("over wss")
        await page.get_by_role("button", name="Send", exact=True).click()
        received = page.get_by_role("log").locator("li.received")
        await expect(received.filter(has_text="over wss")).to_have_count(1)
    finally:
        await context.close()
    # Admitted by the same-origin rule, with the https origin of the page.
    assert f"origin='{origin}'" in server.log()


async def test_behaviour_panel_builds_the_url_and_offers_a_subprotocol(
    page: Page, server_process: StartServer
) -> None:
    server = server_process(**DEFAULT_ORIGINS)
    await open_console(page, server.http + "/")
    await expect(page.get_by_role("status")).to_have_text("open")
    panel = page.get_by_role("region", name="Behaviour")
    await panel.locator("summary").click()  # the panel starts folded
    await panel.get_by_label("Close after (messages)").fill("3")
    await panel.get_by_label("Close reason").fill("see you")
    await panel.get_by_label("Info as the first message").check()
    await panel.get_by_label("Subprotocol").fill("chat.v1")
    url = page.locator("#control-url")
    await expect(url).to_have_text(
        f"ws://127.0.0.1:{server.port}/?close_after=3&close_reason=see+you&info"
        "  (subprotocol chat.v1)"
    )
    await panel.get_by_label("Close after (messages)").fill("")
    await panel.get_by_label("Close reason").fill("")
    await panel.get_by_label("Info as the first message").uncheck()
    await expect(url).to_have_text(f"ws://127.0.0.1:{server.port}/  (subprotocol chat.v1)")
    await panel.get_by_role("button", name="Connect with these").click()
    connected = page.get_by_role("log").locator("li.event", has_text="connected")
    await expect(connected).to_have_count(2)
    await expect(connected.last).to_contain_text("subprotocol chat.v1")
    await expect(page.get_by_role("status")).to_have_text("open")


async def test_console_keeps_its_header_in_view(
    browser: Browser, server_process: StartServer
) -> None:
    """A growing log scrolls itself, never the page: the title stays where it was."""
    server = server_process(**DEFAULT_ORIGINS)
    context = await browser.new_context(viewport={"width": 800, "height": 600})
    try:
        page = await context.new_page()
        await open_console(page, server.http + "/")
        await expect(page.get_by_role("status")).to_have_text("open")
        message = page.get_by_role("textbox", name="Message", exact=True)
        received = page.get_by_role("log").locator("li.received")
        for n in range(40):
            await message.fill(f"line {n}")
            await page.get_by_role("button", name="Send", exact=True).click()
        await expect(received).to_have_count(40)
        assert await page.evaluate("window.scrollY") == 0
        await expect(page.get_by_role("heading", name="echo", exact=True)).to_be_in_viewport()
        # The log itself follows its newest entry.
        at_end = "(l) => l.scrollHeight - l.scrollTop - l.clientHeight < 8"
        assert await page.get_by_role("log").evaluate(at_end)
        assert await page.get_by_role("log").evaluate("(l) => l.scrollHeight > l.clientHeight")
    finally:
        await context.close()


def documented_adev_command() -> list[str]:
    """The ``adev runserver ...`` command exactly as README.md gives it."""
    readme = (ROOT / "README.md").read_text()
    match = re.search(r"^(?:\.venv/bin/)?adev runserver [^\n#]*", readme, re.MULTILINE)
    assert match is not None, "README.md documents no adev runserver command"
    words = shlex.split(match[0])
    return [str(Path(sys.executable).with_name("adev")), *words[1:]]


async def test_adev_runserver_as_documented_serves_the_page_with_live_reload(
    browser: Browser, tmp_path: Path
) -> None:
    """With adev's own --port and --aux-port: the page's policy admits that live reload."""
    port, aux_port = free_port(), free_port()
    command = [*documented_adev_command(), "--port", str(port), "--aux-port", str(aux_port)]
    log_path = tmp_path / "adev.log"
    adev = start_process(command, log_path, clean_env(ALLOWED_ORIGINS="http://localhost:3000"))
    context = await browser.new_context()
    try:
        await wait_until(lambda: answers(f"http://127.0.0.1:{port}/healthz"), timeout=30)
        page = await context.new_page()
        problems: list[str] = []
        page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
        sockets: list[str] = []
        page.on("websocket", lambda ws: sockets.append(ws.url))
        styles: list[str] = []
        page.on("request", lambda r: styles.append(r.url) if "page.css" in r.url else None)
        await open_console(page, f"http://127.0.0.1:{port}/")
        await expect(page.get_by_role("status")).to_have_text("open")
        live = f"127.0.0.1:{aux_port}"
        await wait_until(lambda: f"ws://{live}/livereload" in sockets, timeout=10)
        assert await page.evaluate("typeof window.LiveReload") == "object"
        # A change in the page's folder restyles the open page through adev's socket.
        os.utime(ROOT / "echo" / "page" / "page.css")
        await wait_until(lambda: any("livereload=" in url for url in styles), timeout=15)
        assert problems == [], problems
    finally:
        await context.close()
        stop_group(adev)
    assert "Content-Security-Policy" not in log_path.read_text(errors="replace")


def start_process(
    command: list[str], log_path: Path, env: dict[str, str]
) -> subprocess.Popen[bytes]:
    """``command`` in the repository, in a session of its own (its children included)."""
    with log_path.open("wb") as log_file:
        return subprocess.Popen(
            command,
            cwd=ROOT,
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def stop_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGINT to ``proc`` (adev stops the app process it started), then nothing left."""
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(20)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)


async def test_a_control_set_from_the_panel_shows_its_effect(
    page: Page, server_process: StartServer
) -> None:
    """close_after=2 with code 4000 and a reason, set in the panel: after two echoes the
    server closes, and the log says so; the info control's JSON comes first."""
    server = server_process(**DEFAULT_ORIGINS)
    await open_console(page, server.http + "/")
    await expect(page.get_by_role("status")).to_have_text("open")
    await page.get_by_label("Reconnect automatically").uncheck()
    panel = page.get_by_role("region", name="Behaviour")
    await panel.locator("summary").click()  # the panel starts folded
    await panel.get_by_label("Close after (messages)").fill("2")
    await panel.get_by_label("Close code").fill("4000")
    await panel.get_by_label("Close reason").fill("test over")
    await panel.get_by_label("Info as the first message").check()
    await panel.get_by_role("button", name="Connect with these").click()
    log = page.get_by_role("log")
    received = log.locator("li.received")
    await expect(received.first).to_contain_text('"connection": "c2"')
    await expect(received.first).to_contain_text('"query": "close_after=2&close_code=4000')
    for text in ("one", "two"):
        await page.get_by_role("textbox", name="Message", exact=True).fill(text)
        await page.get_by_role("button", name="Send", exact=True).click()
        await expect(received.filter(has_text=text)).to_have_count(1)
    await expect(log.locator("li.event").last).to_contain_text("code 4000 “test over”")
    await expect(page.get_by_role("status")).to_have_text("closed")
    await wait_until(lambda: "controls=close_after=2&close_code=4000" in server.log())
    REPORTS.mkdir(exist_ok=True)
    await page.screenshot(path=REPORTS / "browser-controls.png", full_page=True)
