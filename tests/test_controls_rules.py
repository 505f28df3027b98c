"""Test controls, sans-I/O: the query string becomes a Controls value or a one-line reason.

The behaviour of each control on the wire is in tests/test_controls.py; here are the
parsing rules and every bound of echo.controls.TABLE.
"""

from __future__ import annotations

import re
from dataclasses import fields
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from echo.config import ServerSettings
from echo.controls import (
    MAX_PARAMETERS,
    NO_CONTROLS,
    SPECS,
    TABLE,
    ControlError,
    ControlRules,
    Controls,
    Kind,
    Spec,
    has_query,
)

RULES = ControlRules(enabled=True, max_message_size=1000, push_max_rate=10_000)


def parse(query: str, rules: ControlRules = RULES) -> Controls | None:
    return rules.parse(query)


def reason(query: str, rules: ControlRules = RULES) -> str:
    with pytest.raises(ControlError) as caught:
        rules.parse(query)
    text = str(caught.value)
    assert "\n" not in text
    assert "\r" not in text
    return text


def test_the_table_and_the_value_name_the_same_controls() -> None:
    assert [spec.name for spec in TABLE] == [f.name for f in fields(Controls)]


@pytest.mark.parametrize("query", ["", "&", "&&&"])
def test_no_query_means_no_controls(query: str) -> None:
    assert parse(query) is None
    assert not has_query(query)


def test_has_query_is_true_for_any_parameter() -> None:
    assert has_query("a")
    assert has_query("&x=1")


def test_every_control_is_parsed() -> None:
    controls = parse(
        "delay=10&jitter=5&close_after=3&close_code=4000&close_reason=bye+now"
        "&drop_after_ms=9000&ignore_pings&heartbeat=off&ping_every=100"
        "&push_every=100&push_size=1000&push_type=binary&fragment=7&info=true"
    )
    assert controls == Controls(
        delay=10,
        jitter=5,
        close_after=3,
        close_code=4000,
        close_reason="bye now",
        drop_after_ms=9000,
        ignore_pings=True,
        heartbeat=False,
        ping_every=100,
        push_every=100,
        push_size=1000,
        push_type="binary",
        fragment=7,
        info=True,
    )
    assert controls.holds


def test_the_canonical_form_names_only_what_was_asked() -> None:
    controls = parse("info&close_reason=%C3%A9+x&close_after_ms=5&heartbeat=off")
    assert controls is not None
    assert controls.describe() == "close_after_ms=5&close_reason=%C3%A9%20x&heartbeat=off&info"
    assert parse(controls.describe()) == controls


def test_status_with_retry_after() -> None:
    assert parse("status=503&retry_after=7") == Controls(status=503, retry_after=7)


@pytest.mark.parametrize("query", ["silent=false", "heartbeat=on", "info=0&ignore_pings=no"])
def test_controls_that_ask_for_the_defaults_are_no_controls(query: str) -> None:
    assert parse(query) is None


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("x=1", "unknown control 'x'; known: delay, jitter"),
        ("Delay=1", "unknown control 'Delay'"),
        ("delay=1&delay=2", "control delay given more than once"),
        ("delay=-1", "bad control delay='-1': expected an integer from 0 to 60000 (ms)"),
        ("delay=60001", "bad control delay='60001'"),
        ("delay=", "bad control delay=''"),
        ("delay=1.5", "bad control delay='1.5'"),
        ("delay=%D9%A8", "bad control delay='\\u0668'"),  # an Arabic-Indic eight
        ("delay=99999999999", "bad control delay="),
        ("jitter=60001", "bad control jitter='60001'"),
        ("delay=40000&jitter=20001", "delay + jitter is 60001 ms; a held echo waits at most"),
        ("close_after=1000001", "bad control close_after='1000001'"),
        ("close_after_ms=3600001", "bad control close_after_ms="),
        ("drop_after=1000001", "bad control drop_after="),
        ("drop_after_ms=3600001", "bad control drop_after_ms="),
        ("close_after=1&close_code=999", "expected 1000, 1001, 1003, 1008, 1011-1014 or 3000-4999"),
        ("close_after=1&close_code=1002", "bad control close_code='1002'"),
        ("close_after=1&close_code=1005", "bad control close_code='1005'"),
        ("close_after=1&close_code=1015", "bad control close_code='1015'"),
        ("close_after=1&close_code=5000", "bad control close_code='5000'"),
        ("close_after=1&close_code=2999", "bad control close_code='2999'"),
        ("close_code=4000", "control close_code needs close_after or close_after_ms"),
        ("close_reason=x", "control close_reason needs close_after or close_after_ms"),
        ("close_after=1&close_reason=" + "x" * 124, "expected UTF-8 text of at most 123 bytes"),
        ("close_after=1&close_reason=" + "%C3%A9" * 62, "at most 123 bytes"),  # 124 bytes
        ("close_after=1&close_reason=%FF", "query parameter 'close_reason=%FF' is not UTF-8"),
        ("ignore_pings=maybe", "bad control ignore_pings='maybe': expected no value, or true"),
        ("heartbeat", "bad control heartbeat='': expected on or off"),
        ("heartbeat=sometimes", "expected on or off"),
        ("status=399", "bad control status='399': expected an integer from 400 to 599"),
        ("status=600", "bad control status='600'"),
        ("retry_after=5", "control retry_after needs status"),
        ("status=503&retry_after=3601", "bad control retry_after='3601'"),
        ("status=503&info", "status refuses the handshake; info would have no effect"),
        ("ping_every=9", "bad control ping_every='9': expected an integer from 10 to 3600000"),
        ("ping_every=3600001", "bad control ping_every="),
        ("push_every=9", "bad control push_every='9'"),
        ("push_size=10", "control push_size needs push_every"),
        ("push_type=text", "control push_type needs push_every"),
        ("push_every=100&push_type=json", "expected text or binary"),
        ("push_every=100&push_size=1001", "expected an integer from 0 to 1000 (bytes)"),
        ("fragment=0", "bad control fragment='0': expected an integer from 1 to 1000"),
        ("fragment=1001", "bad control fragment='1001'"),
        ("silent&delay=5", "silent echoes nothing; delay would have no effect"),
        ("silent&fragment=5", "silent echoes nothing; fragment would have no effect"),
        ("a\u0000b=1", "unknown control 'a\\x00b'"),
        ("x=1\r\nSet-Cookie: a", "unknown control 'x'"),
    ],
)
def test_bad_queries_are_refused_with_one_line(query: str, expected: str) -> None:
    assert expected in reason(query)


def test_push_rate_over_the_budget_is_refused_naming_the_limit() -> None:
    assert parse("push_every=100&push_size=1000") == Controls(push_every=100, push_size=1000)
    text = reason("push_every=99&push_size=1000")
    assert text == (
        "push_size=1000 every 99 ms is 10101 bytes/s, over this server's "
        "PUSH_MAX_RATE of 10000 bytes/s"
    )
    # The default push_size counts too.
    assert "16 every 10 ms is 1600 bytes/s" in reason(
        "push_every=10", ControlRules(push_max_rate=1000)
    )


def test_too_many_parameters() -> None:
    assert "too many query parameters (65; at most 64)" in reason("&".join(["x=1"] * 65))
    assert "unknown control" in reason("&".join(["x=1"] * MAX_PARAMETERS))


def test_with_controls_off_a_control_is_refused_and_other_parameters_ignored() -> None:
    off = ControlRules(enabled=False)
    assert reason("close_after=1", off) == (
        "test controls are off on this server (CONTROLS=false): 'close_after' refused"
    )
    assert "CONTROLS=false" in reason("token=abc&info", off)
    assert parse("token=abc&x", off) is None


@pytest.mark.parametrize(
    "spec", [spec for spec in TABLE if spec.kind is Kind.INTEGER], ids=lambda spec: spec.name
)
def test_each_bound_is_inclusive(spec: Spec) -> None:
    """The lowest and highest value of every integer control are accepted, one beyond
    refused (with whatever the control needs alongside it). Flags, choices, close
    codes and reasons are tested above."""
    extra = {
        "close_code": "&close_after=1",
        "retry_after": "&status=503",
        "push_size": "&push_every=1000",
    }.get(spec.name, "")
    high = RULES.max_message_size if spec.high is None else spec.high
    for value in (spec.low, high):
        controls = parse(f"{spec.name}={value}{extra}")
        assert controls is None or getattr(controls, spec.name) == value
    for value in (spec.low - 1, high + 1):
        if value >= 0:
            assert spec.name in reason(f"{spec.name}={value}{extra}")


def test_every_control_is_documented() -> None:
    for spec in TABLE:
        assert spec.what
        assert spec.name in SPECS
    assert NO_CONTROLS.describe() == ""


@settings(max_examples=500, deadline=None)
@given(st.text(max_size=200))
def test_any_query_string_parses_or_gives_one_short_line(query: str) -> None:
    try:
        RULES.parse(query)
    except ControlError as error:
        text = str(error)
        assert text
        assert "\n" not in text
        assert "\r" not in text
        assert text.isprintable()
        assert len(text) <= 300


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from([*SPECS, "x"]),
            st.one_of(st.integers(-5, 5_000_000).map(str), st.sampled_from(["", "off", "text"])),
        ),
        max_size=6,
    )
)
def test_control_shaped_queries_parse_or_give_one_line(pairs: list[tuple[str, str]]) -> None:
    query = "&".join(f"{name}={value}" for name, value in pairs)
    try:
        controls = RULES.parse(query)
    except ControlError as error:
        assert "\n" not in str(error)
        assert str(error).isprintable()
    else:
        if controls is not None:  # what is accepted stays within the table's bounds
            assert controls.delay + controls.jitter <= 60_000
            assert controls.push_size <= RULES.max_message_size
            if controls.push_every is not None:
                assert controls.push_size * 1000 / controls.push_every <= RULES.push_max_rate
            assert RULES.parse(controls.describe()) == controls


def test_settings_defaults_and_rules() -> None:
    settings = ServerSettings.from_env({})
    assert settings.controls is True
    assert settings.push_max_rate == 1_048_576
    off = ServerSettings.from_env({"CONTROLS": "false", "PUSH_MAX_RATE": "5"})
    assert (off.controls, off.push_max_rate) == (False, 5)


def test_the_readme_table_lists_every_control_with_its_range() -> None:
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    section = readme.split("## Test controls", 1)[1].split("\n## ", 1)[0]
    rows = {
        match.group(1): match.group(2)
        for match in re.finditer(r"^\| `(\w+)` \| ([^|]+) \|", section, re.MULTILINE)
    }
    assert list(rows) == [spec.name for spec in TABLE]
    for spec in TABLE:
        if spec.kind is Kind.INTEGER and spec.high is not None:
            assert f"{spec.low}-{spec.high}" in rows[spec.name], spec.name
    assert rows["close_code"].startswith("1000, 1001, 1003, 1008, 1011-1014, 3000-4999")
    assert rows["close_reason"].startswith("UTF-8, at most 123 bytes")
