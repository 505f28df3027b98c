"""The console page over plain HTTP: what GET / serves and the policy that guards it."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from aiohttp_devtools.runserver.config import Config
from aiohttp_devtools.runserver.serve import modify_main_app

import echo.dev
from echo.listeners import runner_options
from echo.page import development_options
from echo.server import create_app
from tests.support import TEST_SETTINGS, ServerFactory


def directives(policy: str) -> dict[str, str]:
    return dict(part.strip().split(" ", 1) for part in policy.split(";"))


async def get(server: TestServer, path: str) -> tuple[aiohttp.ClientResponse, bytes]:
    async with aiohttp.ClientSession() as session, session.get(server.make_url(path)) as reply:
        return reply, await reply.read()


async def test_root_serves_the_console_with_a_strict_policy(start_app: ServerFactory) -> None:
    server = await start_app()
    reply, body = await get(server, "/")
    assert reply.status == 200
    assert reply.content_type == "text/html"
    assert b'role="log"' in body
    assert b'src="/page.js"' in body
    policy = directives(reply.headers["Content-Security-Policy"])
    assert policy["default-src"] == "'none'"
    assert policy["script-src"] == "'self'"
    assert policy["style-src"] == "'self'"
    assert policy["connect-src"] == "'self'"
    assert policy["frame-ancestors"] == "'none'"
    assert reply.headers["X-Content-Type-Options"] == "nosniff"


@pytest.mark.parametrize(
    ("path", "content_type", "marker"),
    [("/page.js", "text/javascript", b"new WebSocket("), ("/page.css", "text/css", b"#log")],
)
async def test_assets_are_served_from_the_package(
    start_app: ServerFactory, path: str, content_type: str, marker: bytes
) -> None:
    server = await start_app()
    reply, body = await get(server, path)
    assert reply.status == 200
    assert reply.content_type == content_type
    assert marker in body


@pytest.mark.parametrize(
    ("url", "extra"),
    [
        ("ws://127.0.0.1:9001/", "ws://127.0.0.1:9001 http://127.0.0.1:9001"),
        ("wss://echo.example:443/", "wss://echo.example:443 https://echo.example:443"),
        ("ws://localhost/", "ws://localhost:80 http://localhost:80"),
    ],
)
async def test_url_parameter_admits_that_one_server(
    start_app: ServerFactory, url: str, extra: str
) -> None:
    server = await start_app()
    reply, _ = await get(server, f"/?url={url}")
    assert directives(reply.headers["Content-Security-Policy"])["connect-src"] == f"'self' {extra}"


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:9001/",
        "javascript:alert(1)",
        "ws://[::1]:9001/",
        "ws://evil%3B%20script-src%20*:1/",
        "ws:///nohost",
        "not a url",
    ],
)
async def test_url_parameter_that_is_not_a_plain_ws_url_adds_nothing(
    start_app: ServerFactory, url: str
) -> None:
    server = await start_app()
    async with aiohttp.ClientSession() as session:
        async with session.get(server.make_url("/"), params={"url": url}) as reply:
            policy = directives(reply.headers["Content-Security-Policy"])
    assert policy["connect-src"] == "'self'"
    assert policy["script-src"] == "'self'"


def adev_app(aux_port: int) -> web.Application:
    """The development app as ``adev runserver --aux-port AUX_PORT`` modifies it."""
    app = create_app(TEST_SETTINGS, development_options())
    config = Config(app_path=str(Path(echo.dev.__file__)), main_port=8080, aux_port=aux_port)
    modify_main_app(app, config)  # adev's own code: appends its live-reload tag to HTML
    return app


async def test_development_page_admits_the_live_reload_adev_appends(
    aiohttp_server: ServerFactory,
) -> None:
    server: TestServer = await aiohttp_server(adev_app(43210), **runner_options(TEST_SETTINGS))
    reply, body = await get(server, "/")
    assert b'<script src="http://127.0.0.1:43210/livereload.js"></script>' in body
    policy = directives(reply.headers["Content-Security-Policy"])
    assert policy["script-src"] == "'self' http://127.0.0.1:43210"
    assert policy["connect-src"] == "'self' ws://127.0.0.1:43210"
    reply, _ = await get(server, "/page.js")  # not HTML: nothing appended, no policy
    assert "Content-Security-Policy" not in reply.headers


async def test_development_page_without_live_reload_admits_nothing_more(
    aiohttp_server: ServerFactory,
) -> None:
    app = create_app(TEST_SETTINGS, development_options())  # adev absent: nothing appended
    server: TestServer = await aiohttp_server(app, **runner_options(TEST_SETTINGS))
    reply, _ = await get(server, "/")
    policy = directives(reply.headers["Content-Security-Policy"])
    assert (policy["script-src"], policy["connect-src"]) == ("'self'", "'self'")


async def test_development_page_ignores_a_hostile_host_in_the_appended_tag(
    aiohttp_server: ServerFactory,
) -> None:
    server: TestServer = await aiohttp_server(adev_app(43210), **runner_options(TEST_SETTINGS))
    async with aiohttp.ClientSession() as session:
        headers = {"Host": "x; script-src *"}  # adev copies the Host into its tag
        async with session.get(server.make_url("/"), headers=headers) as reply:
            policy = directives(reply.headers["Content-Security-Policy"])
    assert policy["script-src"] == "'self'"
    assert policy["connect-src"] == "'self'"
