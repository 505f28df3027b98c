"""Configuration fuzz: any string in any variable parses or gives the one-line error.

Property-based (hypothesis) on ``ServerSettings.from_env``, plus real ``echo-server``
runs with hostile values: exit status 2, one line on stderr, never a traceback.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from echo.config import ConfigError, ServerSettings
from tests.reliability.conftest import record, scale
from tests.support import SERVER_VARIABLES, clean_env

pytestmark = pytest.mark.soak

EXAMPLES = scale(400, 10_000)
_OUTCOMES = {"parsed": 0, "config_error": 0}

# Arbitrary text, and text near the valid shapes so the parsers' inner paths are reached.
values = st.one_of(
    st.text(),
    st.text(alphabet=st.characters(codec="ascii"), max_size=30),
    st.integers().map(str),
    st.from_regex(r"\s*[+-]?\d{0,25}\s*", fullmatch=True),
    st.sampled_from(["true", "FALSE", "yes", "0", "on", "*", "debug", "ERROR", "::1", "[::1]"]),
    st.lists(
        st.from_regex(
            r"(https?|wss?|ftp)://[a-zA-Z0-9.\-\[\]:]{0,20}(:\d{0,6})?/?", fullmatch=True
        ),
        max_size=4,
    ).map(",".join),
)


def check_one_line(error: ConfigError, name: str) -> None:
    line = str(error)
    assert line.startswith((f"invalid {name}=", f"invalid {name} entry ")), line
    assert line.isprintable(), repr(line)
    assert len(line) < 300, len(line)


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(name=st.sampled_from(SERVER_VARIABLES), value=values)
@example(name="HOST", value="\U0001d47b" * 60)  # short, but ten times longer escaped
def test_any_value_parses_or_gives_a_one_line_error(name: str, value: str) -> None:
    try:
        ServerSettings.from_env({name: value})
    except ConfigError as error:
        _OUTCOMES["config_error"] += 1
        check_one_line(error, name)
    else:
        _OUTCOMES["parsed"] += 1
    record("config_fuzz", examples_per_property=EXAMPLES, single_variable=dict(_OUTCOMES))


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    env=st.dictionaries(st.sampled_from(SERVER_VARIABLES), values, max_size=len(SERVER_VARIABLES))
)
def test_any_environment_parses_or_names_one_bad_variable(env: dict[str, str]) -> None:
    try:
        ServerSettings.from_env(env)
    except ConfigError as error:
        assert error.name in env
        check_one_line(error, error.name)


HOSTILE = [
    ("PORT", "\x1b[31m8080\x1b[0m"),
    ("MAX_CONNECTIONS", "9" * 5000),
    ("HEARTBEAT_INTERVAL", "1e3"),
    ("ALLOWED_ORIGINS", "https://ok.example,\u202ejavascript://x"),
    ("HOST", "exa mple.com\nINFO forged line"),
    ("LOG_LEVEL", "verbose\r\x07"),
    ("COMPRESSION", "\t"),
]


@pytest.mark.parametrize(("name", "value"), HOSTILE)
def test_hostile_value_exits_2_with_one_line(tmp_path: Path, name: str, value: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "echo.server"],
        env=clean_env(**{name: value}),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith(
        (f"echo-server: invalid {name}=", f"echo-server: invalid {name} entry ")
    )
    assert lines[0].isprintable()
    assert result.stdout == ""
