"""GET /metrics: exact figures after known exchanges, on the fast path and the slow one."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import aiohttp
import prometheus_client
import pytest
from aiohttp import WSMsgType
from prometheus_client.parser import text_string_to_metric_families

from echo.engine import Connection
from echo.metrics import METRICS_KEY, Metrics, code_label, size_buckets
from echo.origins import parse_origin
from echo.server import SERVER_KEY
from tests.reliability.test_floods import drip
from tests.support import FAULT, ServerFactory, ServerProcess, inject_fault, wait_until
from tests.test_echo import record_served
from tests.wsraw import OP_BINARY, OP_CLOSE, OP_TEXT, RawWebSocket, close_payload, encode_frame

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]

ZERO_REFUSALS = {
    "origin": 0,
    "limit": 0,
    "per_ip_limit": 0,
    "controls": 0,
    "status_control": 0,
    "client_certificate": 0,
    "duplicate_origin": 0,
    "draining": 0,
    "handshake_timeout": 0,
}
INVALID_UTF8 = b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xed\xa0\x80"


def parse(text: str) -> Samples:
    """Every sample of a scrape, keyed by name and sorted labels."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


async def scrape(base: str) -> Samples:
    async with aiohttp.ClientSession() as session, session.get(f"{base}/metrics") as response:
        assert response.status == 200
        assert response.headers["Content-Type"] == prometheus_client.CONTENT_TYPE_LATEST
        assert response.headers["Cache-Control"] == "no-store"
        return parse(await response.text())


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def by_label(samples: Samples, name: str, label: str) -> dict[str, float]:
    """``{label value: sample value}`` for the samples of ``name``."""
    return {dict(key)[label]: v for (n, key), v in samples.items() if n == name}


def base_url(server: Any) -> str:
    return str(server.make_url("")).rstrip("/")


async def closed_all(server: Any) -> None:
    echo = server.app[SERVER_KEY]
    await wait_until(lambda: not echo.connections and echo.limiter.open == 0)


TEXTS = ["hi", "x" * 60, "é" * 200]  # 2, 60 and 400 bytes of UTF-8
BINARIES = [b"\x00" * 17, b"\xff" * 70_000]


@pytest.mark.parametrize("compression", [False, True], ids=["fast-path", "deflate"])
async def test_an_exchange_is_counted_by_direction_type_and_size(
    start_app: ServerFactory, compression: bool
) -> None:
    server = await start_app(compression=compression)
    base = base_url(server)
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(server.make_url("/"), compress=15) as ws:
            assert bool(ws.compress) == compression
            for text in TEXTS:
                await ws.send_str(text)
                assert (await ws.receive(timeout=5)).data == text
            for blob in BINARIES:
                await ws.send_bytes(blob)
                assert (await ws.receive(timeout=5)).data == blob
            during = await scrape(base)
    await closed_all(server)
    after = await scrape(base)

    text_bytes = sum(len(t.encode()) for t in TEXTS)
    binary_bytes = sum(len(b) for b in BINARIES)
    for samples in (during, after):  # live counters, then the closed connection's totals
        assert by_label(samples, "echo_messages_total", "type") == {"text": 3, "binary": 2}
        for way in ("in", "out"):
            assert value(samples, "echo_messages_total", direction=way, type="text") == 3
            assert value(samples, "echo_messages_total", direction=way, type="binary") == 2
            assert value(samples, "echo_message_bytes_total", direction=way, type="text") == (
                text_bytes
            )
            assert (
                value(samples, "echo_message_bytes_total", direction=way, type="binary")
                == binary_bytes
            )
        buckets = by_label(samples, "echo_message_size_bytes_bucket", "le")
        # sizes 2, 17, 60, 400, 70000 against 16, 64, 256, 1024, ... 1 MiB, +Inf
        assert buckets == {
            "16.0": 1,
            "64.0": 3,
            "256.0": 3,
            "1024.0": 4,
            "4096.0": 4,
            "16384.0": 4,
            "65536.0": 4,
            "262144.0": 5,
            "1.048576e+06": 5,
            "+Inf": 5,
        }
        assert value(samples, "echo_message_size_bytes_count") == 5
        assert value(samples, "echo_message_size_bytes_sum") == text_bytes + binary_bytes
        assert value(samples, "echo_connections_total") == 1
    assert value(during, "echo_connections_open") == 1
    assert value(after, "echo_connections_open") == 0
    assert by_label(after, "echo_close_codes_received_total", "code") == {"1000": 1}
    assert by_label(after, "echo_close_codes_sent_total", "code") == {"1000": 1}
    assert by_label(after, "echo_handshakes_refused_total", "reason") == ZERO_REFUSALS


@pytest.mark.parametrize("compression", [False, True], ids=["plain-frames", "deflate"])
async def test_every_echo_is_counted_whichever_path_it_takes(
    start_app: ServerFactory, monkeypatch: pytest.MonkeyPatch, compression: bool
) -> None:
    """Echoes from the fast path's parser callback (its queue never served), from its
    queue, and from the plain engine's loop are counted alike."""
    server = await start_app(compression=compression)
    served = record_served(monkeypatch)
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(server.make_url("/")) as ws:
            for item in ("abc", b"\x01" * 300, "defg", "x" * 40):
                await (ws.send_str(item) if isinstance(item, str) else ws.send_bytes(item))
                assert (await ws.receive(timeout=5)).data == item
            samples = await scrape(base_url(server))
            assert served == [] or server.engine == "plain"
    assert by_label(samples, "echo_message_bytes_total", "type") == {"text": 47, "binary": 300}
    assert value(samples, "echo_messages_total", direction="out", type="text") == 3
    assert value(samples, "echo_message_size_bytes_bucket", le="16.0") == 2
    assert value(samples, "echo_message_size_bytes_bucket", le="64.0") == 3
    assert value(samples, "echo_message_size_bytes_bucket", le="256.0") == 3
    assert value(samples, "echo_message_size_bytes_bucket", le="1024.0") == 4


@pytest.mark.parametrize(
    ("limit", "sizes", "buckets"),
    [
        (16, [0, 16], {"16.0": 2, "+Inf": 2}),
        (40, [16, 17, 40], {"16.0": 1, "64.0": 3, "+Inf": 3}),
        (100, [64, 65, 100], {"16.0": 0, "64.0": 1, "256.0": 3, "+Inf": 3}),
    ],
)
async def test_histogram_buckets_end_at_the_size_limit(
    start_app: ServerFactory, limit: int, sizes: list[int], buckets: dict[str, int]
) -> None:
    server = await start_app(compression=False, max_message_size=limit)
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(server.make_url("/")) as ws:
            for size in sizes:
                await ws.send_bytes(b"b" * size)
                assert len((await ws.receive(timeout=5)).data) == size
    await closed_all(server)
    samples = await scrape(base_url(server))
    assert by_label(samples, "echo_message_size_bytes_bucket", "le") == buckets


async def test_connections_open_and_total(start_app: ServerFactory) -> None:
    server = await start_app()
    base = base_url(server)
    raws = [await RawWebSocket.connect("127.0.0.1", server.port) for _ in range(3)]
    samples = await scrape(base)
    assert value(samples, "echo_connections_open") == 3
    assert value(samples, "echo_connections_total") == 3
    for raw in raws[:2]:
        raw.abort()  # no close frame: nothing sent or received, the connection still ends
    await wait_until(lambda: len(server.app[SERVER_KEY].connections) == 1)
    samples = await scrape(base)
    assert value(samples, "echo_connections_open") == 1
    assert value(samples, "echo_connections_total") == 3
    assert by_label(samples, "echo_close_codes_sent_total", "code") == {}
    assert by_label(samples, "echo_close_codes_received_total", "code") == {}
    await raws[2].aclose()


async def refused_status(url: Any, origin: str | None = None) -> int:
    headers = {} if origin is None else {"Origin": origin}
    async with aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await session.ws_connect(url, headers=headers)
    return refused.value.status


async def test_refusals_are_counted_by_reason(start_app: ServerFactory) -> None:
    allowed = frozenset({parse_origin("http://ok.example")})
    server = await start_app(any_origin=False, allowed_origins=allowed, max_connections=1)
    url = server.make_url("/")
    assert await refused_status(url, "http://evil.example") == 403
    assert await refused_status(url, "http://evil.example") == 403
    async with aiohttp.ClientSession() as session:
        held = await session.ws_connect(url, headers={"Origin": "http://ok.example"})
        assert await refused_status(url, "http://ok.example") == 503
        await held.close()
    limited = await start_app(max_connections=10, max_connections_per_ip=1)
    async with aiohttp.ClientSession() as session:
        held = await session.ws_connect(limited.make_url("/"))
        assert await refused_status(limited.make_url("/")) == 429
        await held.close()

    refusals = by_label(await scrape(base_url(server)), "echo_handshakes_refused_total", "reason")
    assert refusals == {**ZERO_REFUSALS, "origin": 2, "limit": 1}
    refusals = by_label(await scrape(base_url(limited)), "echo_handshakes_refused_total", "reason")
    assert refusals == {**ZERO_REFUSALS, "per_ip_limit": 1}


async def test_handshake_timeouts_are_counted_but_not_idle_keep_alive(
    server_process: Callable[..., ServerProcess],
) -> None:
    proc = server_process(HANDSHAKE_TIMEOUT="700")
    # A client that completed a request and then idles is closed by the same timer
    # (keep-alive): that is no handshake timeout.
    reader, writer = await asyncio.open_connection("127.0.0.1", proc.port)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    silent = await asyncio.open_connection("127.0.0.1", proc.port)  # never sends a byte
    cut = await asyncio.gather(drip(proc.port, 0.2, budget=10), drip(proc.port, 0.2, budget=10))
    assert all(t is not None for t in cut), "dripping clients must be cut off"
    assert await asyncio.wait_for(silent[0].read(), 5) == b""  # cut off too
    silent[1].close()
    assert (await asyncio.wait_for(reader.read(), 5)).startswith(b"HTTP/1.1 200")
    writer.close()
    samples = await scrape(proc.http)
    refusals = by_label(samples, "echo_handshakes_refused_total", "reason")
    assert refusals == {**ZERO_REFUSALS, "handshake_timeout": 3}
    assert value(samples, "echo_connections_total") == 0


async def raw_close_exchange(
    server: Any, frames: list[bytes], reply: int | None
) -> tuple[int | None, bool]:
    """Send ``frames``, read the server's close, answer with ``reply`` (None: nothing).

    Returns the server's close code and whether it then dropped the connection.
    """
    raw = await RawWebSocket.connect("127.0.0.1", server.port)
    for frame in frames:
        await raw.send_raw(frame)
    closing = await raw.recv_data()
    assert closing.opcode == OP_CLOSE
    if reply is not None:
        await raw.send(OP_CLOSE, close_payload(reply))
    return closing.close_code, await raw.eof(timeout=7)


@pytest.mark.parametrize(
    ("frames", "reply", "sent", "received"),
    [
        ([encode_frame(OP_CLOSE, close_payload(1000))], None, 1000, 1000),
        ([encode_frame(OP_CLOSE, close_payload(1001))], None, 1001, 1001),
        ([encode_frame(OP_CLOSE, b"")], None, 1000, 1005),  # no code: reported as 1005
        ([encode_frame(OP_CLOSE, close_payload(4321))], None, 4321, 4321),
        ([encode_frame(OP_CLOSE, close_payload(2999))], None, 1002, None),  # invalid code
        ([encode_frame(OP_TEXT, INVALID_UTF8)], 1007, 1007, 1007),
        ([encode_frame(OP_CLOSE, close_payload(1000, b"\xff"))], None, 1007, None),
        ([encode_frame(OP_BINARY, b"z" * 101)], 1000, 1009, None),
        ([encode_frame(OP_TEXT, b"unmasked", mask=False)], 1000, 1002, None),
    ],
    ids=["1000", "1001", "no-code", "4xxx", "invalid", "1007", "bad-reason", "1009", "unmasked"],
)
async def test_close_codes_sent_and_received(
    start_app: ServerFactory,
    frames: list[bytes],
    reply: int | None,
    sent: int,
    received: int | None,
) -> None:
    """Peer-initiated closes are answered; after protocol errors (1009 at the frame's
    header, 1002, 1007 for a close reason that is not UTF-8) the connection is failed:
    the server stops reading, so a peer's answer to them is never seen."""
    server = await start_app(max_message_size=100)
    code, dropped = await raw_close_exchange(server, frames, reply)
    assert code == sent
    assert dropped
    await closed_all(server)
    samples = await scrape(base_url(server))
    assert by_label(samples, "echo_close_codes_sent_total", "code") == {code_label(sent): 1}
    expected = {} if received is None else {code_label(received): 1}
    assert by_label(samples, "echo_close_codes_received_total", "code") == expected


async def test_close_codes_on_the_slow_path(start_app: ServerFactory) -> None:
    """With permessage-deflate every message goes through the echo loop."""
    server = await start_app(compression=True, max_message_size=100)
    url = server.make_url("/")
    async with aiohttp.ClientSession() as session:
        ws = await session.ws_connect(url, compress=15)
        await ws.send_bytes(b"z" * 100)  # at the limit: echoed
        assert (await ws.receive(timeout=5)).data == b"z" * 100
        await ws.close(code=4000)
        too_big = await session.ws_connect(url, compress=15, max_msg_size=0)
        await too_big.send_bytes(b"z" * 101)
        msg = await too_big.receive(timeout=5)
        assert (msg.type, msg.data) == (WSMsgType.CLOSE, 1009)
        await too_big.close()
        # aiohttp's client only sends valid UTF-8; the deflate path takes bytes as they come.
        bad = await session.ws_connect(url, compress=15)
        await bad._writer.send_frame(INVALID_UTF8, WSMsgType.TEXT, compress=15)
        msg = await bad.receive(timeout=5)
        assert (msg.type, msg.data) == (WSMsgType.CLOSE, 1007)
        await bad.close()
    await closed_all(server)
    samples = await scrape(base_url(server))
    # The server's 1009 and 1007 come from the echo loop, after decompression; aiohttp's
    # client answers a close with its own 1000.
    assert by_label(samples, "echo_close_codes_sent_total", "code") == {
        "4xxx": 1,
        "1009": 1,
        "1007": 1,
    }
    assert by_label(samples, "echo_close_codes_received_total", "code") == {
        "4xxx": 1,
        "1000": 2,
    }
    assert value(samples, "echo_messages_total", direction="in", type="binary") == 1


async def test_error_while_serving_is_counted_as_1011(
    start_app: ServerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    inject_fault(monkeypatch)
    server = await start_app()
    async with aiohttp.ClientSession() as session:
        ws = await session.ws_connect(server.make_url("/"))
        await ws.send_frame(FAULT, WSMsgType.TEXT)
        msg = await ws.receive(timeout=5)
        assert (msg.type, msg.data) == (WSMsgType.CLOSE, 1011)
        await ws.close()
    await closed_all(server)
    samples = await scrape(base_url(server))
    assert by_label(samples, "echo_close_codes_sent_total", "code") == {"1011": 1}
    assert by_label(samples, "echo_close_codes_received_total", "code") == {"1000": 1}


async def test_shutdown_counts_1001_sent(start_app: ServerFactory) -> None:
    """SIGTERM's path: the app's shutdown closes every connection with 1001.

    aiohttp closes the transport right after sending it (the handler was waiting in
    receive()), so the peers' answers are not read.
    """
    server = await start_app(shutdown_timeout=2.0)
    metrics = server.app[METRICS_KEY]
    raws = [await RawWebSocket.connect("127.0.0.1", server.port) for _ in range(2)]
    await server.app.shutdown()
    for raw in raws:
        frame = await raw.recv_data()
        assert (frame.opcode, frame.close_code) == (OP_CLOSE, 1001)
        await raw.send(OP_CLOSE, close_payload(1001))
        assert await raw.eof()
    await closed_all(server)
    samples = parse(prometheus_client.generate_latest(metrics.registry).decode())
    assert by_label(samples, "echo_close_codes_sent_total", "code") == {"1001": 2}
    assert value(samples, "echo_connections_open") == 0
    assert value(samples, "echo_connections_total") == 2


async def test_process_metrics_are_in_the_same_registry(start_app: ServerFactory) -> None:
    samples = await scrape(base_url(await start_app()))
    assert value(samples, "process_resident_memory_bytes") > 0
    assert value(samples, "process_open_fds") > 0
    assert ("process_cpu_seconds_total", ()) in samples


async def test_each_app_has_its_own_registry(start_app: ServerFactory) -> None:
    first, second = await start_app(), await start_app()
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(first.make_url("/")) as ws:
            await ws.send_str("only here")
            await ws.receive(timeout=5)
    await closed_all(first)
    assert value(await scrape(base_url(first)), "echo_connections_total") == 1
    assert value(await scrape(base_url(second)), "echo_connections_total") == 0
    assert first.app[METRICS_KEY].registry is not second.app[METRICS_KEY].registry
    global_names = {m.name for m in prometheus_client.REGISTRY.collect()}
    assert not any(name.startswith("echo_") for name in global_names)


async def test_metrics_false_serves_404_and_counts_nothing_extra(
    start_app: ServerFactory,
) -> None:
    server = await start_app(metrics=False)
    echo = server.app[SERVER_KEY]
    assert echo.metrics is None
    assert METRICS_KEY not in server.app
    async with aiohttp.ClientSession() as session:
        async with session.get(server.make_url("/metrics")) as response:
            assert response.status == 404
        async with session.ws_connect(server.make_url("/"), compress=0) as ws:
            await ws.send_bytes(b"abc")
            assert (await ws.receive(timeout=5)).data == b"abc"
            (conn,) = echo.connections.values()
            assert (conn.messages_in, conn.bytes_in) == (1, 3)  # the close log's counters
            assert (conn.binary_in, conn.binary_bytes_in) == (0, 0)


async def test_metrics_setting_in_a_real_process(
    server_process: Callable[..., ServerProcess],
) -> None:
    on = server_process()
    off = server_process(METRICS="off")
    samples = await scrape(on.http)
    assert value(samples, "echo_connections_open") == 0
    async with aiohttp.ClientSession() as session, session.get(f"{off.http}/metrics") as r:
        assert r.status == 404


def test_size_buckets_hold_the_largest_message() -> None:
    assert size_buckets(1) == (16,)
    assert size_buckets(16) == (16,)
    assert size_buckets(17) == (16, 64)
    assert size_buckets(1 << 20)[-1] == 1 << 20
    assert size_buckets(1 << 30)[-1] == 1 << 30


def test_application_close_codes_are_grouped() -> None:
    assert [code_label(c) for c in (0, 1000, 1011, 3000, 3999, 4000, 4999)] == [
        "1005",
        "1000",
        "1011",
        "3xxx",
        "3xxx",
        "4xxx",
        "4xxx",
    ]


def test_a_scrape_adds_open_connections_to_closed_totals() -> None:
    def record() -> Connection:
        conn = Connection(id="c", remote="r", messages_in=10, bytes_in=10, messages_out=10)
        conn.bytes_out = 10
        conn.binary_in = conn.binary_bytes_in = conn.binary_out = conn.binary_bytes_out = 4
        return conn

    live = [record(), record()]
    metrics = Metrics(lambda: live, 1024)
    metrics.connection_closed(record())
    totals = metrics.totals()
    assert totals["messages_in"] == 30
    assert totals["binary_bytes_out"] == 12
    live.clear()
    assert metrics.totals()["messages_in"] == 10
