"""LOG_FORMAT=json: one JSON object per line with fixed field names, server and client."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client import generate_latest

from echo.config import ClientSettings, ConfigError, ServerSettings
from echo.logs import JsonFormatter, clip, event
from echo.metrics import METRICS_KEY
from echo.server import SERVER_KEY
from tests.client_support import run_client
from tests.support import FAULT, ServerFactory, ServerProcess, inject_fault, wait_until
from tests.test_metrics import by_label, parse
from tests.wsraw import OP_CLOSE, OP_TEXT, RawWebSocket, close_payload

ServerStarter = Callable[..., ServerProcess]
TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


def json_lines(text: str) -> list[dict[str, Any]]:
    """Every line of ``text`` parsed as a JSON object with time, level and event first."""
    records = []
    for line in text.splitlines():
        record = json.loads(line)
        assert isinstance(record, dict), line
        assert list(record)[:3] == ["time", "level", "event"], line
        assert TIME.match(record["time"]), line
        assert record["level"] in ("debug", "info", "warning", "error"), line
        records.append(record)
    return records


def only(records: list[dict[str, Any]], name: str, **match: Any) -> dict[str, Any]:
    found = [r for r in records if r["event"] == name and match.items() <= r.items()]
    assert len(found) == 1, (name, match, records)
    return found[0]


async def test_server_json_log_of_open_close_and_refusals(server_process: ServerStarter) -> None:
    server = server_process(
        LOG_FORMAT="json",
        ALLOWED_ORIGINS="http://good.example",
        ALLOW_MISSING_ORIGIN="false",
        MAX_CONNECTIONS_PER_IP="1",
    )
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(server.url, origin="http://good.example") as ws:
            await ws.send_str("hi")
            assert (await ws.receive_str(timeout=5)) == "hi"
            with pytest.raises(aiohttp.WSServerHandshakeError):  # the address's one slot is taken
                await session.ws_connect(server.url, origin="http://good.example")
        with pytest.raises(aiohttp.WSServerHandshakeError):
            await session.ws_connect(server.url, origin='http://evil"}{"event":"x')
    server.signal(signal.SIGTERM)
    assert server.wait() == 0
    records = json_lines(server.log())

    listening = only(records, "listening")
    assert listening["url"] == f"http://127.0.0.1:{server.port}/"
    opened = only(records, "open")
    assert list(opened)[3:5] == ["conn", "remote"]
    assert opened["conn"] == "c1"
    assert opened["remote"] == "127.0.0.1"
    assert opened["origin"] == "http://good.example"
    assert opened["level"] == "info"
    closed = only(records, "close")
    assert list(closed)[3:5] == ["conn", "remote"]
    assert (closed["conn"], closed["remote"], closed["code"]) == ("c1", "127.0.0.1", 1000)
    assert isinstance(closed["duration"], float)
    assert 0 <= closed["duration"] < 60
    assert (closed["messages_in"], closed["bytes_in"]) == (1, 2)
    assert (closed["messages_out"], closed["bytes_out"]) == (1, 2)
    limited = only(records, "refused", reason="per_ip_limit")
    assert (limited["remote"], limited["origin"]) == ("127.0.0.1", "http://good.example")
    refused = only(records, "refused", reason="origin")
    assert refused["origin"] == 'http://evil"}{"event":"x'  # escaped by JSON: no forged record
    only(records, "signal")


def test_client_json_log(server_process: ServerStarter, tmp_path: Path) -> None:
    server = server_process()
    result = run_client(
        ["--url", server.url, "--count", "3"], tmp_path, timeout=30, env={"LOG_FORMAT": "json"}
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("summary sent=3 echoed=3 "), "the summary stays text"
    records = json_lines(result.stderr)
    assert only(records, "start")["url"] == server.url
    assert only(records, "connected")["connection"] == 1
    echoes = [r for r in records if r["event"] == "echo"]
    assert [r["seq"] for r in echoes] == [1, 2, 3]
    assert all(r["kind"] == "text" and r["size"] > 0 for r in echoes)


def test_text_format_is_the_default_and_unchanged(server_process: ServerStarter) -> None:
    server = server_process()
    settings, listening = server.log().splitlines()[:2]
    stamp = r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} INFO echo\.server: "
    assert re.match(stamp + "settings HOST=127.0.0.1 PORT=", settings), settings
    assert re.match(stamp + "listening on http://", listening), listening


def test_formatter_puts_records_without_an_event_under_log() -> None:
    formatter = JsonFormatter()
    plain = logging.LogRecord("aiohttp.server", logging.ERROR, __file__, 1, "bad %s", ("x",), None)
    assert json.loads(formatter.format(plain))["event"] == "log"
    assert json.loads(formatter.format(plain))["message"] == "bad x"
    assert json.loads(formatter.format(plain))["logger"] == "aiohttp.server"
    evented = logging.LogRecord("echo.server", logging.INFO, __file__, 1, "open", (), None)
    evented.__dict__.update(event("open", origin="o", remote="r", conn="c9"))
    assert list(json.loads(formatter.format(evented))) == [
        "time",
        "level",
        "event",
        "conn",
        "remote",
        "origin",
    ]
    assert clip("a" * 200, 10) == "a" * 10 + "..."


def test_log_format_is_validated() -> None:
    assert ServerSettings.from_env({"LOG_FORMAT": "JSON"}).log_format == "json"
    assert ClientSettings.from_env({"LOG_FORMAT": "json"}).log_format == "json"
    assert ServerSettings.from_env({}).log_format == "text"
    with pytest.raises(ConfigError, match=r"LOG_FORMAT='yaml': expected one of text, json"):
        ServerSettings.from_env({"LOG_FORMAT": "yaml"})


async def test_error_event_carries_the_connection_and_the_traceback(
    start_app: ServerFactory, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    caplog.set_level(logging.INFO, "echo.server")
    inject_fault(monkeypatch)
    server = await start_app()
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(server.make_url("/")) as ws:
            await ws.send_frame(FAULT, aiohttp.WSMsgType.TEXT)
            assert (await ws.receive(timeout=5)).data == 1011
    errors = [r for r in caplog.records if getattr(r, "event", None) == "error"]
    assert len(errors) == 1
    record = json.loads(JsonFormatter().format(errors[0]))
    assert (record["event"], record["level"], record["conn"]) == ("error", "error", "c1")
    assert record["remote"] == "127.0.0.1"
    assert "RuntimeError: injected fault" in record["exception"]


@pytest.mark.parametrize("code", [1000, 4001])
async def test_the_close_line_carries_the_peers_code(
    start_app: ServerFactory, caplog: pytest.LogCaptureFixture, code: int
) -> None:
    caplog.set_level(logging.INFO, "echo.server")
    server = await start_app()
    raw = await RawWebSocket.connect("127.0.0.1", server.port)
    await raw.send(OP_CLOSE, close_payload(code, b"bye"))
    assert (await raw.recv_data()).close_code == code
    await wait_until(lambda: "close id=c1" in caplog.text, timeout=5)
    assert f"close id=c1 code={code} " in caplog.text
    await raw.aclose()


async def closing_with(server: Any, how: str) -> None:
    """One connection to ``server`` that ends ``how``."""
    raw = await RawWebSocket.connect("127.0.0.1", server.port)
    await raw.send(OP_TEXT, b"one")
    assert (await raw.recv_data()).payload == b"one"
    if how == "peer-1000":
        await raw.send(OP_CLOSE, close_payload(1000))
        assert (await raw.recv_data()).close_code == 1000
    elif how == "peer-no-code":
        await raw.send(OP_CLOSE, b"")
        assert (await raw.recv_data()).close_code == 1000  # what a code-less close gets
    elif how == "shutdown":
        closing = asyncio.ensure_future(server.app[SERVER_KEY].shutdown())
        assert (await raw.recv_data()).close_code == 1001
        await raw.send(OP_CLOSE, close_payload(1001))
        await asyncio.wait_for(closing, 10)
    elif how == "vanished":
        raw.abort()
        return
    assert await raw.eof()


@pytest.mark.parametrize(
    ("how", "code", "sent", "received"),
    [
        ("peer-1000", 1000, 1000, 1000),
        ("peer-no-code", 1005, 1000, 1005),
        ("shutdown", 1001, 1001, 1001),
        ("vanished", 1006, None, None),
    ],
)
async def test_the_close_line_shows_the_codes_sent_and_received_as_metrics_count_them(
    start_app: ServerFactory,
    caplog: pytest.LogCaptureFixture,
    how: str,
    code: int,
    sent: int | None,
    received: int | None,
) -> None:
    """``code`` is the first close frame's, whoever sent it (1006: none); ``sent`` and
    ``received`` each side's (1005: a frame without a code; none: ``-``, JSON null)."""
    caplog.set_level(logging.INFO, "echo.server")
    server = await start_app()
    await closing_with(server, how)
    await wait_until(lambda: "close id=c1" in caplog.text, timeout=8)
    shown = [str(v) if v is not None else "-" for v in (code, sent, received)]
    assert f"close id=c1 code={shown[0]} sent={shown[1]} received={shown[2]} " in caplog.text
    (record,) = [r for r in caplog.records if getattr(r, "event", None) == "close"]
    fields = json.loads(JsonFormatter().format(record))
    assert (fields["code"], fields["sent"], fields["received"]) == (code, sent, received)
    samples = parse(generate_latest(server.app[METRICS_KEY].registry).decode())
    expected_sent = {} if sent is None else {str(sent): 1}
    expected_received = {} if received is None else {str(received): 1}
    assert by_label(samples, "echo_close_codes_sent_total", "code") == expected_sent
    assert by_label(samples, "echo_close_codes_received_total", "code") == expected_received
