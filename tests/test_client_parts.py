"""The client's sans-I/O parts: settings, back-off, Retry-After, echo tracking, summary."""

from __future__ import annotations

import math
import random
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path

import pytest

from echo.client.backoff import RETRY_AFTER_CAP, Attempts, Backoff, parse_retry_after
from echo.client.cli import parse_flags
from echo.client.histogram import BUCKETS, Histogram, bucket_of, bucket_range
from echo.client.payloads import Payloads
from echo.client.tracker import EchoTracker, Kind, Match, Stats
from echo.config import ClientSettings, ConfigError, LoadOptions, PipeOptions, load_environment
from tests.client_support import SUMMARY

# -- settings -------------------------------------------------------------------------


def test_client_defaults_match_the_documented_table() -> None:
    assert ClientSettings.from_env({}) == ClientSettings(
        url="ws://localhost:8080/",
        origin=None,
        reconnect_interval=5.0,
        reconnect_max_interval=30.0,
        message_interval=1.0,
        message_count=0,
        heartbeat_interval=10.0,
        size=None,
        binary=False,
        log_level="info",
    )


def test_no_origin_unless_one_is_set() -> None:
    assert ClientSettings.from_env({"WS_URL": "ws://127.0.0.1:9001/echo?x=1"}).origin is None
    assert ClientSettings.from_env({"ORIGIN": "HTTP://Page.Example"}).origin == (
        "http://page.example"
    )
    assert ClientSettings.from_env({}, {"--origin": "ws://[::1]:8080"}).origin == (
        "ws://[::1]:8080"
    )


def test_ws_url_defaults_to_the_port_of_the_environment() -> None:
    assert ClientSettings.from_env({"PORT": "8097"}).url == "ws://localhost:8097/"
    assert ClientSettings.from_env({"PORT": "8097", "WS_URL": "ws://h:1/"}).url == "ws://h:1/"
    with pytest.raises(ConfigError) as caught:
        ClientSettings.from_env({"PORT": "0"})  # the server's "any free port" means nothing here
    assert caught.value.name == "PORT"
    assert "or set WS_URL" in str(caught.value)


def test_env_file_port_moves_the_clients_default_url(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("PORT=8097\n")
    settings = ClientSettings.from_env(load_environment({}, tmp_path / ".env"))
    assert settings.url == "ws://localhost:8097/"


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


def test_modes_and_connection_options_from_the_command_line() -> None:
    def settings(*argv: str) -> ClientSettings:
        return ClientSettings.from_env({}, parse_flags(list(argv)))

    default = settings("ws://h/")
    assert (default.url, default.mode, default.compression, default.headers) == (
        "ws://h/",
        "stream",
        True,
        (),
    )
    load = settings("ws://h/", "--connections", "200", "--rate", "2000", "--duration", "10000")
    assert load.load == LoadOptions(connections=200, rate=2000, in_flight=None)
    assert (load.mode, load.duration) == ("load", 10.0)
    assert settings("--url", "ws://h/", "--pipe", "--hex", "--wait", "0").pipe == PipeOptions(
        encoding="hex", wait=0.0
    )
    assert settings("ws://h/", "--pipe", "--binary").pipe == PipeOptions(encoding="raw")
    assert settings("ws://h/", "--probe-idle", "120000").probe_idle == 120.0
    assert settings("ws://h/", "-i").mode == "interactive"
    options = settings(
        "wss://h/",
        "-H",
        "X-A: 1",
        "--header",
        "X-B:two words ",
        "--subprotocol",
        "v2",
        "--subprotocol",
        "chat",
        "--proxy",
        "socks5h://u:p@127.0.0.1:1080",
        "--insecure",
        "--no-compression",
        "--show-handshake",
        "--follow-redirects",
        "--max-attempts",
        "5",
        "--json",
    )
    assert options.headers == (("X-A", "1"), ("X-B", "two words"))
    assert options.subprotocols == ("v2", "chat")
    assert options.proxy == "socks5h://u:p@127.0.0.1:1080"
    assert (options.insecure, options.compression, options.show_handshake) == (True, False, True)
    assert (options.follow_redirects, options.max_attempts, options.json) == (True, 5, True)
    assert ClientSettings.from_env({"RECONNECT_MAX_ATTEMPTS": "7"}).max_attempts == 7


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


def test_histogram_percentiles_within_half_a_percent_in_fixed_memory() -> None:
    histogram = Histogram()
    assert math.isnan(histogram.percentile(50))
    rng = random.Random(0)
    values = [rng.lognormvariate(-7, 1.5) for _ in range(50_000)]  # around 1 ms, long tail
    for value in values:
        histogram.add(value)
    ordered = sorted(values)
    for p in (50, 90, 99, 99.9):
        exact = ordered[math.ceil(p / 100 * len(ordered)) - 1]
        assert histogram.percentile(p) == pytest.approx(exact, rel=0.005, abs=1e-6), p
    assert histogram.percentile(100) == pytest.approx(max(values), abs=1e-6), "max is exact"
    assert histogram.mean == pytest.approx(sum(values) / len(values), rel=1e-3)
    assert len(histogram.counts) == BUCKETS == 4096, "whatever the number of samples"
    for _ in range(10_000):
        histogram.add(3600.0)
    assert len(histogram.counts) == BUCKETS
    assert histogram.percentile(100) == 3600.0


def test_histogram_buckets_are_contiguous_and_narrow() -> None:
    previous = -1
    for us in [*range(3000), *(2**k + d for k in range(12, 38) for d in (-1, 0, 1))]:
        index = bucket_of(us)
        low, high = bucket_range(index)
        assert low <= us <= high
        assert index >= previous
        assert (high - low) / 2 <= 0.004 * low + 0.5
        previous = index


def test_histograms_merge_and_subtract() -> None:
    first, second = Histogram(), Histogram()
    for ms in (1, 2, 3):
        first.add(ms / 1000)
    before = first.copy()
    for ms in (10, 20):
        first.add(ms / 1000)
        second.add(ms / 1000)
    window = first.since(before)
    assert window.count == 2
    assert window.percentile(50) == pytest.approx(0.010, rel=0.005)
    merged = Histogram()
    merged.merge(before)
    merged.merge(second)
    assert (merged.count, merged.min_us, merged.max_us) == (5, 1000, 20_000)
    assert merged.percentile(80) == pytest.approx(0.010, rel=0.005)


def test_attempts_count_until_healthy_and_give_up_at_the_limit() -> None:
    attempts = Attempts(Backoff(1.0, 8.0, random.Random(2)), limit=3)
    assert attempts.start() == 1
    assert attempts.label() == "1 of 3"
    assert not attempts.exhausted
    assert 0.5 <= attempts.next_delay() <= 1.0
    attempts.start()
    assert 1.0 <= attempts.next_delay(retry_after=None) <= 2.0
    assert attempts.next_delay(retry_after=30.0) >= 30.0, "never before Retry-After"
    attempts.start()
    assert attempts.exhausted
    attempts.healthy()
    assert (attempts.number, attempts.backoff.step) == (0, 1.0)
    assert Attempts(Backoff(1.0, 1.0), limit=0).label() == "0"


def test_summary_line_format() -> None:
    stats = Stats(sent=4, echoed=3, resent=1, mismatched=0, reconnects=2, unanswered=1)
    for value in (0.001, 0.002, 0.0035):
        stats.rtt.add(value)
    line = stats.summary()
    assert line.startswith("summary sent=4 echoed=3 lost=1 resent=1 mismatched=0 reconnects=2 ")
    match = SUMMARY.match(line)
    assert match is not None
    assert float(match["p50"]) == pytest.approx(2.0, rel=0.005)
    assert float(match["p99"]) == pytest.approx(3.5, rel=0.005)
    assert not stats.clean
    assert Stats(sent=1, echoed=1).clean
    assert not Stats(sent=1, echoed=0, mismatched=1).clean
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


def test_library_settings_send_no_origin_unless_given() -> None:
    assert ClientSettings().origin is None
    assert ClientSettings(url="ws://127.0.0.1:9/", origin="http://a.example").origin == (
        "http://a.example"
    )
