"""HTTP echo on other paths: request line, headers and body back as text, credentials masked."""

from __future__ import annotations

import asyncio
import re
from typing import Any

import aiohttp
import pytest

from echo.httpecho import mask_header
from tests.support import ServerFactory

LIMIT = 1000
INSTANCE_LINE = re.compile(rb"# instance host=\S+ pid=[0-9]+ workers=1\r\n")


def echoed_request(body: bytes) -> bytes:
    """The echoed request: what follows the instance line the text echo starts with."""
    match = INSTANCE_LINE.match(body)
    assert match is not None, body[:200]
    return body[match.end() :]


async def raw_request(port: int, request: bytes, timeout: float = 10.0) -> tuple[int, bytes]:
    """Send ``request`` as is on a new connection; the status and the body of the answer."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        async with asyncio.timeout(timeout):
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head.split(b" ", 2)[1])
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            body = await reader.readexactly(length)
        return status, body
    finally:
        writer.close()
        await writer.wait_closed()


async def test_request_line_headers_and_body_come_back_as_sent(start_app: ServerFactory) -> None:
    server = await start_app(max_message_size=LIMIT)
    request = (
        b"POST /some/path?a=1&b=%20 HTTP/1.1\r\n"
        b"Host: echo.test\r\n"
        b"X-Forwarded-For: 203.0.113.7\r\n"
        b"x-MiXeD-Case: kept as sent\r\n"
        b"X-Twice: one\r\n"
        b"X-Twice: two\r\n"
        b"Content-Length: 11\r\n"
        b"Connection: close\r\n"
        b"\r\n"
        b"hello\x00world"
    )
    status, body = await raw_request(server.port, request)
    assert status == 200
    assert echoed_request(body) == (
        b"POST /some/path?a=1&b=%20 HTTP/1.1\r\n"
        b"Host: echo.test\r\n"
        b"X-Forwarded-For: 203.0.113.7\r\n"
        b"x-MiXeD-Case: kept as sent\r\n"
        b"X-Twice: one\r\n"
        b"X-Twice: two\r\n"
        b"Content-Length: 11\r\n"
        b"Connection: close\r\n"
        b"\r\n"
        b"hello\x00world"
    )


@pytest.mark.parametrize("method", ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "PURGE"])
async def test_any_method_is_echoed(start_app: ServerFactory, method: str) -> None:
    server = await start_app(max_message_size=LIMIT)
    async with aiohttp.ClientSession() as session:
        async with session.request(method, server.make_url("/x"), data=b"payload") as response:
            assert response.status == 200
            assert response.content_type == "text/plain"
            assert response.headers["X-Content-Type-Options"] == "nosniff"
            text = await response.read()
    assert echoed_request(text).startswith(f"{method} /x HTTP/1.1\r\n".encode())
    assert text.endswith(b"\r\n\r\npayload")


async def test_credentials_are_masked(start_app: ServerFactory) -> None:
    server = await start_app(max_message_size=LIMIT)
    headers = {
        "Authorization": "Bearer s3cret-token",
        "Proxy-Authorization": "Basic dXNlcjpzM2NyZXQ=",
        "Cookie": "session=s3cret-session; theme=dark",
        "X-Visible": "shown",
    }
    async with aiohttp.ClientSession() as session:
        async with session.get(server.make_url("/echo"), headers=headers) as response:
            assert response.status == 200
            text = (await response.read()).decode()
    assert "s3cret" not in text
    assert "dXNlcjpzM2NyZXQ" not in text
    assert "dark" not in text
    assert "\r\nAuthorization: Bearer [masked]\r\n" in text
    assert "\r\nProxy-Authorization: Basic [masked]\r\n" in text
    assert "\r\nCookie: session=[masked]; theme=[masked]\r\n" in text
    assert "\r\nX-Visible: shown\r\n" in text


def test_mask_header_cases() -> None:
    assert mask_header(b"AUTHORIZATION", b"token-without-scheme") == b"[masked]"
    assert mask_header(b"authorization", b"Digest a=b, c=d") == b"Digest [masked]"
    assert mask_header(b"Cookie", b"junk-without-equals") == b"[masked]"
    assert mask_header(b"Set-Cookie", b"a=b") == b"a=b"  # a response header; not a secret here


async def test_body_at_the_limit_is_echoed_and_beyond_is_413(start_app: ServerFactory) -> None:
    server = await start_app(max_message_size=LIMIT)
    async with aiohttp.ClientSession() as session:
        async with session.put(server.make_url("/up"), data=b"a" * LIMIT) as response:
            assert response.status == 200
            assert (await response.read()).endswith(b"\r\n\r\n" + b"a" * LIMIT)
        async with session.put(server.make_url("/up"), data=b"a" * (LIMIT + 1)) as response:
            assert response.status == 413

        async def chunks() -> Any:  # no Content-Length: the limit holds while reading
            for _ in range(LIMIT // 100 + 1):
                yield b"b" * 100

        async with session.post(server.make_url("/up"), data=chunks()) as response:
            assert response.status == 413


async def test_slow_body_is_cut_off_with_408(start_app: ServerFactory) -> None:
    server = await start_app(max_message_size=LIMIT, handshake_timeout=0.3)
    request = b"POST /slow HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc"
    status, body = await raw_request(server.port, request)
    assert status == 408
    assert b"too slow" in body


async def test_served_paths_keep_their_handlers(start_app: ServerFactory) -> None:
    server = await start_app(max_message_size=LIMIT)
    async with aiohttp.ClientSession() as session:
        async with session.get(server.make_url("/healthz")) as response:
            assert (await response.json())["status"] == "ok"
        async with session.get(server.make_url("/")) as response:
            assert response.content_type == "text/html"
        async with session.get(server.make_url("/page.js")) as response:
            assert response.content_type == "text/javascript"
        for path in ("/", "/healthz", "/page.css", "/metrics"):
            async with session.post(server.make_url(path), data=b"x") as response:
                assert response.status == 405, path
                assert "GET" in response.headers["Allow"]
        async with session.get(server.make_url("/metrics")) as response:
            assert response.status == 200  # METRICS=false: 404 (tests/test_metrics.py)
            assert b"echo_connections_open" in await response.read()
        async with session.get(server.make_url("/healthz/extra")) as response:
            assert response.status == 200
            echoed = echoed_request(await response.read())
            assert echoed.startswith(b"GET /healthz/extra HTTP/1.1\r\n")
