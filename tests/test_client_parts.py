"""The client's sans-I/O parts: settings, back-off, Retry-After, echo tracking, summary."""

from __future__ import annotations

import math
import random
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path

import pytest

from echo.backoff import RETRY_AFTER_CAP, Backoff, parse_retry_after
from echo.config import ClientSettings, ConfigError, load_environment
from echo.payloads import Payloads
from echo.tracker import EchoTracker, Kind, Match, Reservoir, Stats
from tests.client_support import SUMMARY

# -- settings -------------------------------------------------------------------------


def test_client_defaults_match_the_documented_table() -> None:
    assert ClientSettings.from_env({}) == ClientSettings(
        url="ws://localhost:8080/",
        origin="ws://localhost:8080",
        reconnect_interval=5.0,
        reconnect_max_interval=30.0,
        message_interval=1.0,
        message_count=0,
        heartbeat_interval=10.0,
        size=None,
        binary=False,
        log_level="info",
    )


def test_origin_defaults_to_the_urls_scheme_host_and_port() -> None:
    def origin(url: str) -> str:
        return ClientSettings.from_env({"WS_URL": url}).origin

    assert origin("ws://127.0.0.1:9001/echo?x=1") == "ws://127.0.0.1:9001"
    assert origin("wss://Echo.Example/") == "wss://echo.example"
    assert origin("ws://[::1]:8080/") == "ws://[::1]:8080"


def test_flags_win_over_the_environment() -> None:
    env = {
        "WS_URL": "ws://env.example/",
        "MESSAGE_INTERVAL": "250",
        "MESSAGE_COUNT": "9",
        "ORIGIN": "http://env.example",
        "RECONNECT_INTERVAL": "100",
        "RECONNECT_MAX_INTERVAL": "800",
        "CLIENT_HEARTBEAT_INTERVAL": "1500",
    }
    flags = {
        "--url": "wss://flag.example:9443/x",
        "--interval": "20",
        "--count": "3",
        "--size": "512",
        "--binary": "true",
    }
    settings = ClientSettings.from_env(env, flags)
    assert settings.url == "wss://flag.example:9443/x"
    assert settings.origin == "http://env.example"
    assert (settings.message_interval, settings.message_count) == (0.02, 3)
    assert (settings.size, settings.binary) == (512, True)
    assert (settings.reconnect_interval, settings.reconnect_max_interval) == (0.1, 0.8)
    assert settings.heartbeat_interval == 1.5
    assert settings.healthy_after == 0.8


def test_env_file_is_read_for_the_client(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("WS_URL=ws://127.0.0.1:7000/\nMESSAGE_COUNT=4\n")
    settings = ClientSettings.from_env(load_environment({"MESSAGE_COUNT": "6"}, tmp_path / ".env"))
    assert settings.url == "ws://127.0.0.1:7000/"
    assert settings.message_count == 6


@pytest.mark.parametrize(
    ("env", "flags", "name"),
    [
        ({"WS_URL": "http://localhost:8080/"}, {}, "WS_URL"),
        ({"WS_URL": "ws://"}, {}, "WS_URL"),
        ({"WS_URL": "ws://bad host/"}, {}, "WS_URL"),
        ({"WS_URL": "ws://h:70000/"}, {}, "WS_URL"),
        ({}, {"--url": "ws://h/#frag"}, "--url"),
        ({"MESSAGE_INTERVAL": "-1"}, {}, "MESSAGE_INTERVAL"),
        ({"MESSAGE_INTERVAL": "0"}, {}, "MESSAGE_INTERVAL"),
        ({}, {"--interval": "1.5"}, "--interval"),
        ({"RECONNECT_INTERVAL": "x"}, {}, "RECONNECT_INTERVAL"),
        ({"RECONNECT_MAX_INTERVAL": "4999"}, {}, "RECONNECT_MAX_INTERVAL"),
        ({"MESSAGE_COUNT": "-3"}, {}, "MESSAGE_COUNT"),
        ({"ORIGIN": "localhost"}, {}, "ORIGIN"),
        ({"CLIENT_HEARTBEAT_INTERVAL": "0"}, {}, "CLIENT_HEARTBEAT_INTERVAL"),
        ({}, {"--size": "0"}, "--size"),
        ({}, {"--size": "big"}, "--size"),
        ({"LOG_LEVEL": "loud"}, {}, "LOG_LEVEL"),
    ],
)
def test_bad_client_value_names_what_was_typed(
    env: dict[str, str], flags: dict[str, str], name: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        ClientSettings.from_env(env, flags)
    assert caught.value.name == name
    assert str(caught.value).startswith(f"invalid {name}=")
    assert "expected" in str(caught.value)


# -- back-off and Retry-After ---------------------------------------------------------


def test_backoff_doubles_to_the_cap_with_jitter_and_resets() -> None:
    backoff = Backoff(1.0, 8.0, random.Random(1))
    steps, delays = [], []
    for _ in range(6):
        steps.append(backoff.step)
        delays.append(backoff.next_delay())
    assert steps == [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    assert all(step / 2 <= delay <= step for step, delay in zip(steps, delays, strict=True))
    assert len(set(delays)) == len(delays), "jittered"
    backoff.reset()
    assert backoff.step == 1.0


def test_jitter_spreads_clients_that_failed_together() -> None:
    delays = [Backoff(5.0, 30.0, random.Random(seed)).next_delay() for seed in range(50)]
    assert min(delays) >= 2.5
    assert max(delays) <= 5.0
    assert max(delays) - min(delays) > 1.0


def test_backoff_rejects_nonsense() -> None:
    with pytest.raises(ValueError, match="first"):
        Backoff(2.0, 1.0)


def test_retry_after_seconds_and_dates() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    assert parse_retry_after("1") == 1.0
    assert parse_retry_after(" 120 ") == 120.0
    assert parse_retry_after("999999") == RETRY_AFTER_CAP
    assert parse_retry_after(format_datetime(now + timedelta(seconds=30), usegmt=True), now) == 30
    assert parse_retry_after(format_datetime(now - timedelta(seconds=30), usegmt=True), now) == 0
    for junk in (None, "", "soon", "-1", "1.5", "\u00b2"):
        assert parse_retry_after(junk) is None


# -- echo tracking --------------------------------------------------------------------


def test_echoes_match_in_order_and_measure_rtt() -> None:
    tracker = EchoTracker()
    tracker.produce(Kind.TEXT, b"a", now=1.0)
    tracker.produce(Kind.TEXT, b"b", now=1.5)
    first = tracker.receive(Kind.TEXT, b"a", now=1.25)
    second = tracker.receive(Kind.TEXT, b"b", now=2.0)
    assert (first.match, first.rtt) == (Match.ECHOED, 0.25)
    assert (second.match, second.rtt) == (Match.ECHOED, 0.5)
    assert (tracker.stats.sent, tracker.stats.echoed, tracker.stats.mismatched) == (2, 2, 0)


def test_unanswered_messages_are_resent_oldest_first_and_counted_once() -> None:
    tracker = EchoTracker()
    for payload in (b"1", b"2", b"3"):
        tracker.produce(Kind.BINARY, payload, now=0.0)
    # "1" was echoed before the connection dropped; "2" and "3" were not.
    assert tracker.receive(Kind.BINARY, b"1", now=0.1).match is Match.ECHOED
    again = tracker.to_resend()
    assert [m.payload for m in again] == [b"2", b"3"]
    for message in again:
        tracker.resending(message, now=5.0)
    assert tracker.receive(Kind.BINARY, b"2", now=5.5).rtt == 0.5, "RTT from the re-send"
    assert tracker.receive(Kind.BINARY, b"3", now=5.5).match is Match.ECHOED
    stats = tracker.stats
    assert (stats.sent, stats.echoed, stats.resent, stats.mismatched) == (3, 3, 2, 0)
    assert not tracker.pending
    # A stray extra copy of an already answered message is not counted as an echo.
    assert tracker.receive(Kind.BINARY, b"3", now=6.0).match is Match.UNEXPECTED
    assert (stats.echoed, stats.mismatched) == (3, 1)


def test_wrong_bytes_or_kind_are_mismatches() -> None:
    tracker = EchoTracker()
    tracker.produce(Kind.TEXT, b"x", now=0.0)
    tracker.produce(Kind.TEXT, b"y", now=0.0)
    assert tracker.receive(Kind.BINARY, b"x", now=0.1).match is Match.MISMATCHED
    assert tracker.receive(Kind.TEXT, b"z", now=0.1).match is Match.MISMATCHED
    assert (tracker.stats.echoed, tracker.stats.mismatched) == (0, 2)
    assert not tracker.pending


def test_reservoir_percentiles_and_bounded_memory() -> None:
    reservoir = Reservoir(capacity=1000, rng=random.Random(0))
    assert math.isnan(reservoir.percentile(50))
    for value in range(1, 101):
        reservoir.add(value / 1000)
    assert reservoir.percentile(50) == 0.05
    assert reservoir.percentile(99) == 0.099
    for _ in range(10_000):
        reservoir.add(1.0)
    assert len(reservoir.samples) == 1000
    assert reservoir.seen == 10_100


def test_summary_line_format() -> None:
    stats = Stats(sent=3, echoed=3, resent=1, mismatched=0, reconnects=2)
    for value in (0.001, 0.002, 0.0035):
        stats.rtt.add(value)
    line = stats.summary()
    assert line == (
        "summary sent=3 echoed=3 resent=1 mismatched=0 reconnects=2 "
        "rtt_p50_ms=2.000 rtt_p99_ms=3.500"
    )
    assert SUMMARY.match(line)
    assert Stats().summary().endswith("rtt_p50_ms=nan rtt_p99_ms=nan")


# -- payloads -------------------------------------------------------------------------


def test_payloads() -> None:
    numbers = Payloads(None, binary=False, rng=random.Random(0))
    first = numbers.make()
    assert 0 <= float(first.decode()) < 1
    assert numbers.make() != first
    text = Payloads(300, binary=False, rng=random.Random(0)).make()
    assert len(text) == 300
    assert text.decode("ascii").isprintable()
    assert len(Payloads(7, binary=True).make()) == 7
    assert Payloads(7, binary=True).kind is Kind.BINARY


def test_library_settings_derive_the_origin_from_the_url() -> None:
    assert ClientSettings().origin == "ws://localhost:8080"
    assert ClientSettings(url="ws://127.0.0.1:9/").origin == "ws://127.0.0.1:9"
    assert ClientSettings(url="ws://127.0.0.1:9/", origin="http://a.example").origin == (
        "http://a.example"
    )
