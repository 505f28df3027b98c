"""HTTP echo on other paths: request line, headers and body back as text, credentials masked."""

from __future__ import annotations

import asyncio
import gzip
import logging
import re
import socket
import struct
import zlib
from collections.abc import Callable, Iterator
from typing import Any

import aiohttp
import pytest

from echo.httpecho import mask_header
from tests.reliability.probes import alarming_lines
from tests.support import ServerFactory, ServerProcess, wait_until

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
        "Set-Cookie": "sid=s3cret-sid; Path=/; HttpOnly",
        "X-Api-Key": "s3cret-key",
        "X-Auth-Token": "s3cret-auth",
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
    assert "\r\nSet-Cookie: sid=[masked]\r\n" in text
    assert "\r\nX-Api-Key: [masked]\r\n" in text
    assert "\r\nX-Auth-Token: [masked]\r\n" in text
    assert "\r\nX-Visible: shown\r\n" in text


def test_mask_header_cases() -> None:
    assert mask_header(b"AUTHORIZATION", b"token-without-scheme") == b"[masked]"
    assert mask_header(b"authorization", b"Digest a=b, c=d") == b"Digest [masked]"
    assert mask_header(b"Cookie", b"junk-without-equals") == b"[masked]"
    assert mask_header(b"Set-Cookie", b"sid=abc; Path=/; HttpOnly") == b"sid=[masked]"
    assert mask_header(b"x-api-key", b"k") == b"[masked]"
    assert mask_header(b"X-Amz-Security-Token", b"t") == b"[masked]"
    assert mask_header(b"X-Client-Secret", b"s") == b"[masked]"
    assert mask_header(b"X-Password", b"p") == b"[masked]"
    assert mask_header(b"X-Session-Id", b"i") == b"[masked]"
    assert mask_header(b"X-Upstream-Signature", b"sig") == b"[masked]"
    assert mask_header(b"Sec-WebSocket-Key", b"dGhl") == b"dGhl"  # a nonce, not a secret
    assert mask_header(b"Keep-Alive", b"timeout=5") == b"timeout=5"


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


async def exchange(port: int, request: bytes, timeout: float = 5.0) -> tuple[bytes, bool]:
    """Send ``request`` on a new connection; everything the server wrote, and whether it
    closed the connection within ``timeout`` (a safety bound, not a speed check)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    received = b""
    try:
        writer.write(request)
        async with asyncio.timeout(timeout):
            while chunk := await reader.read(65536):
                received += chunk
        return received, True
    except TimeoutError:
        return received, False
    finally:
        writer.close()


def echoed(answer: bytes) -> bytes:
    """The echoed request in a 200 answer (its body after the instance line)."""
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 "), answer[:200]
    return echoed_request(body)


@pytest.fixture
def no_alarms(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """Fail the test if any logger wrote a warning or worse (a peer may cause none)."""
    caplog.set_level(logging.DEBUG)
    yield
    alarms = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert alarms == [], [r.getMessage()[:200] for r in alarms]


@pytest.mark.parametrize(
    "target",
    [b"/a%0Ab", b"/%0D%0Ainjected:%20header", b"/x%00y", b"*", b"http://elsewhere.example/p%0A"],
    ids=["lf", "crlf", "nul", "asterisk", "absolute-form"],
)
async def test_every_request_target_is_echoed(
    start_app: ServerFactory, no_alarms: None, target: bytes
) -> None:
    """A ``{tail:.*}`` route does not match a decoded newline (404 before); ``OPTIONS *``
    names no path at all."""
    server = await start_app(max_message_size=LIMIT)
    request = b"OPTIONS " + target + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    answer, _closed = await exchange(server.port, request)
    assert echoed(answer) == request


GZIPPED = gzip.compress(b"hello, gzip")


@pytest.mark.parametrize(
    ("encoding", "body"),
    [
        (b"gzip", GZIPPED),
        (b"deflate", zlib.compress(b"hello, deflate")),
        (b"gzip", b"not gzip at all"),  # 500 before, and an ERROR with two tracebacks
        (b"br", b"\x0b\x02\x80hello"),  # 400 before (no brotli decoder installed)
        (b"x-unknown", b"anything"),
    ],
    ids=["gzip", "deflate", "bad-gzip", "br", "unknown"],
)
async def test_bodies_are_echoed_as_received_never_decoded(
    start_app: ServerFactory, no_alarms: None, encoding: bytes, body: bytes
) -> None:
    server = await start_app(max_message_size=LIMIT)
    request = (
        b"POST /enc HTTP/1.1\r\nHost: x\r\nContent-Encoding: " + encoding + b"\r\n"
        b"Content-Length: " + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n" + body
    )
    answer, _closed = await exchange(server.port, request)
    assert echoed(answer) == request


async def test_a_large_gzip_body_counts_as_sent_not_as_inflated(start_app: ServerFactory) -> None:
    """The limit applies to the bytes on the wire; a small gzip of a big text passes."""
    server = await start_app(max_message_size=LIMIT)
    bomb = gzip.compress(b"a" * 100 * LIMIT)
    assert len(bomb) < LIMIT
    request = (
        b"PUT /bomb HTTP/1.1\r\nHost: x\r\nContent-Encoding: gzip\r\nContent-Length: "
        + str(len(bomb)).encode()
        + b"\r\nConnection: close\r\n\r\n"
        + bomb
    )
    answer, _closed = await exchange(server.port, request)
    assert echoed(answer).endswith(b"\r\n\r\n" + bomb)


async def test_connect_is_refused_not_tunnelled(start_app: ServerFactory, no_alarms: None) -> None:
    """A 2xx answer to CONNECT would mean a tunnel; aiohttp's router answers 404."""
    server = await start_app(max_message_size=LIMIT)
    request = b"CONNECT a.example:443 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    answer, _closed = await exchange(server.port, request)
    assert answer.startswith(b"HTTP/1.1 404 ")


async def test_a_body_that_breaks_off_logs_nothing_alarming(
    server_process: Callable[..., ServerProcess],
) -> None:
    """A POST cut off mid-body (FIN, reset or close) raised ConnectionResetError out of
    request.read(): an ERROR with a traceback per request, caused at will (seen under
    uvloop, as the real server runs; so a real server process here)."""
    proc = server_process(MAX_MESSAGE_SIZE=str(LIMIT), LOG_LEVEL="debug")
    head = b"POST /cut HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nonly part"
    for how in ("fin", "reset", "close"):
        reader, writer = await asyncio.open_connection("127.0.0.1", proc.port)
        writer.write(head)
        await writer.drain()
        await asyncio.sleep(0.2)  # the handler is reading the body now
        if how == "fin":
            writer.write_eof()
            assert await asyncio.wait_for(reader.read(), 5) == b""
        elif how == "reset":
            sock = writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()
        writer.close()
    await asyncio.sleep(0.3)
    answer, _closed = await exchange(proc.port, b"GET /after HTTP/1.1\r\nHost: x\r\n\r\n", 1)
    assert echoed(answer).startswith(b"GET /after HTTP/1.1\r\n")  # still serving
    await wait_until(lambda: proc.log().count("bad request body remote=127.0.0.1") == 3)
    assert alarming_lines(proc.log()) == []


async def test_over_limit_body_gets_413_instead_of_100_continue(
    start_app: ServerFactory, no_alarms: None
) -> None:
    server = await start_app(max_message_size=LIMIT)
    over = b"POST /big HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 5000\r\n\r\n"
    answer, closed = await exchange(server.port, over)
    assert answer.startswith(b"HTTP/1.1 413 "), answer[:100]
    assert b"100 Continue" not in answer
    assert closed, "the client sends no body after a refusal: nothing to wait for"
    reserved = (
        b"POST /healthz HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n"
    )
    answer, closed = await exchange(server.port, reserved)
    assert answer.startswith(b"HTTP/1.1 405 "), answer[:100]
    # Within the limit: 100 Continue, then the echo once the body came.
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(
        b"POST /ok HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n"
    )
    assert (
        await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5) == b"HTTP/1.1 100 Continue\r\n\r\n"
    )
    writer.write(b"hello")
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert head.startswith(b"HTTP/1.1 200 ")
    writer.close()


async def test_unknown_expectation_is_refused_without_quoting_it(
    start_app: ServerFactory, no_alarms: None
) -> None:
    server = await start_app(max_message_size=LIMIT)
    for path in (b"/echo", b"/healthz"):
        request = b"GET " + path + b" HTTP/1.1\r\nHost: x\r\nExpect: s3cret-expectation\r\n"
        request += b"Connection: close\r\n\r\n"
        answer, _closed = await exchange(server.port, request)
        assert answer.startswith(b"HTTP/1.1 417 "), answer[:100]
        assert b"s3cret" not in answer


async def test_slow_body_socket_is_closed_with_the_408(
    start_app: ServerFactory, no_alarms: None
) -> None:
    """aiohttp's lingering close kept reading a slow body for 10 s after the 408."""
    server = await start_app(max_message_size=LIMIT, handshake_timeout=0.3)
    request = b"POST /slow HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc"
    answer, closed = await exchange(server.port, request, timeout=5)
    assert answer.startswith(b"HTTP/1.1 408 ")
    assert closed, "still open 5 s after the 408"


@pytest.mark.only_engine(
    "fast",
    "aiohttp's C parser refuses methods it does not know; only the fast engine's "
    "connection protocol swaps in aiohttp's Python parser (a private attribute)",
)
@pytest.mark.parametrize("method", [b"FOO", b"X-CUSTOM_1", b"PROPFIND", b"BREW"])
async def test_any_token_method_is_echoed(
    start_app: ServerFactory, no_alarms: None, method: bytes
) -> None:
    """aiohttp's C parser refuses methods it does not know with 400; RFC 9110 allows
    any token, and a proxy under test may forward one."""
    server = await start_app(max_message_size=LIMIT)
    request = (
        method + b" /m HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi"
    )
    answer, _closed = await exchange(server.port, request)
    assert echoed(answer) == request


async def test_a_method_that_is_no_token_is_still_refused(start_app: ServerFactory) -> None:
    server = await start_app(max_message_size=LIMIT)
    answer, _closed = await exchange(server.port, b"F(O /m HTTP/1.1\r\nHost: x\r\n\r\n")
    assert answer.startswith(b"HTTP/1.0 400 ")
