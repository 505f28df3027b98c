"""Configuration: defaults, validation with one-line errors (exit 2), and .env precedence."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import urllib.request
from dataclasses import replace
from importlib import metadata
from pathlib import Path

import pytest

from echo.config import (
    ALL_VARIABLES,
    CLIENT_VARIABLES,
    SERVER_VARIABLES,
    ClientSettings,
    ConfigError,
    ServerSettings,
    load_environment,
)
from echo.origins import parse_origin
from echo.variables import TEXT, Variable, unknown_names, variable
from tests.support import (
    CONFIG_VARIABLES,
    ServerProcess,
    clean_env,
    free_port,
    run_server_briefly,
)


def test_defaults_match_the_documented_table() -> None:
    settings = ServerSettings.from_env({})
    assert settings == ServerSettings(
        host="0.0.0.0",
        port=8080,
        any_origin=False,
        allowed_origins=frozenset(
            {parse_origin("http://localhost:3000"), parse_origin("ws://localhost:8080")}
        ),
        allow_missing_origin=True,
        origin_patterns=(),
        allowed_hosts=(),
        max_connections=100,
        max_connections_per_ip=0,
        max_message_size=1_048_576,
        heartbeat_interval=30.0,
        handshake_timeout=10.0,
        shutdown_timeout=10.0,
        compression=True,
        log_level="info",
        tls_cert_file="",
        tls_key_file="",
        log_format="text",
        trusted_proxies=(),
    )


def test_values_are_parsed_and_durations_converted_from_ms() -> None:
    settings = ServerSettings.from_env(
        {
            "HOST": "::1",
            "PORT": "9001",
            "ALLOWED_ORIGINS": " https://A.example , http://b.example:8000 ",
            "ALLOW_MISSING_ORIGIN": "yes",
            "MAX_CONNECTIONS": "5",
            "MAX_CONNECTIONS_PER_IP": "2",
            "MAX_MESSAGE_SIZE": "1024",
            "HEARTBEAT_INTERVAL": "1500",
            "HANDSHAKE_TIMEOUT": "250",
            "SHUTDOWN_TIMEOUT": "0",
            "COMPRESSION": "off",
            "LOG_LEVEL": "DEBUG",
        }
    )
    assert settings.host == "::1"
    assert settings.port == 9001
    assert settings.allowed_origins == {
        parse_origin("https://a.example:443"),
        parse_origin("http://b.example:8000"),
    }
    assert settings.allow_missing_origin is True
    assert (settings.max_connections, settings.max_connections_per_ip) == (5, 2)
    assert settings.max_message_size == 1024
    assert settings.heartbeat_interval == 1.5
    assert settings.handshake_timeout == 0.25
    assert settings.shutdown_timeout == 0
    assert settings.compression is False
    assert settings.log_level == "debug"


def test_drain_delay_and_instance_name() -> None:
    defaults = ServerSettings.from_env({})
    assert (defaults.drain_delay, defaults.instance_name) == (0, "")
    name = "echo-6f7d9c-x2k4p.eu_west:8080"
    settings = ServerSettings.from_env({"DRAIN_DELAY": "10000", "INSTANCE_NAME": name})
    assert (settings.drain_delay, settings.instance_name) == (10.0, name)
    assert ServerSettings.from_env({"INSTANCE_NAME": "x" * 253}).instance_name == "x" * 253
    with pytest.raises(ConfigError, match=r"^invalid INSTANCE_NAME=.*\(254 total\): expected up"):
        ServerSettings.from_env({"INSTANCE_NAME": "x" * 254})


def test_star_means_any_origin() -> None:
    assert ServerSettings.from_env({"ALLOWED_ORIGINS": "*"}).any_origin is True


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("PORT", "abc"),
        ("PORT", "70000"),
        ("PORT", "-1"),
        ("PORT", "80.5"),
        ("PORT", "\u0668\u0660\u0668\u0660"),  # Arabic-Indic digits, which int() would take
        ("WORKERS", "\uff12"),  # a fullwidth 2
        ("HOST", "not a host!"),
        ("MAX_CONNECTIONS", "-1"),
        ("MAX_CONNECTIONS", "0"),
        ("MAX_CONNECTIONS_PER_IP", "many"),
        ("MAX_MESSAGE_SIZE", "0"),
        ("HEARTBEAT_INTERVAL", "0"),
        ("HEARTBEAT_INTERVAL", "1s"),
        ("HANDSHAKE_TIMEOUT", "-5"),
        ("SHUTDOWN_TIMEOUT", "forever"),
        ("COMPRESSION", "maybe"),
        ("ALLOW_MISSING_ORIGIN", "2"),
        ("LOG_LEVEL", "verbose"),
        ("ALLOWED_ORIGINS", "localhost:3000"),
        ("ALLOWED_ORIGINS", "http://localhost:3000/"),
        ("ALLOWED_ORIGINS", "http://user@host.example"),
        ("ALLOWED_ORIGINS", "https://*.com"),
        ("ALLOWED_ORIGINS", "https://a*.example.com"),
        ("ALLOWED_HOSTS", "not a host"),
        ("ALLOWED_HOSTS", "*.com"),
        ("DRAIN_DELAY", "-1"),
        ("DRAIN_DELAY", "10s"),
        ("INSTANCE_NAME", "pod name"),
        ("INSTANCE_NAME", "-leading-dash"),
        ("INSTANCE_NAME", "line\nbreak"),
    ],
)
def test_bad_value_names_variable_value_and_expectation(name: str, value: str) -> None:
    with pytest.raises(ConfigError) as caught:
        ServerSettings.from_env({name: value})
    message = str(caught.value)
    assert name in message
    shown = value.strip()
    assert repr(shown) in message or shown in message or ascii(shown) in message
    assert "expected" in message
    assert "\n" not in message


@pytest.mark.parametrize(
    ("name", "value"),
    [("PORT", "abc"), ("MAX_CONNECTIONS", "-1"), ("ALLOWED_ORIGINS", "localhost\x1b[31m")],
)
def test_entry_point_exits_2_with_one_line_and_no_traceback(
    tmp_path: Path, name: str, value: str
) -> None:
    result = run_server_briefly(clean_env(**{name: value}), tmp_path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"echo-server: invalid {name}")
    assert "Traceback" not in result.stderr
    assert "\x1b" not in result.stderr, "control characters must be escaped"


def test_console_script_is_installed_and_validates(tmp_path: Path) -> None:
    script = Path(sys.executable).with_name("echo-server")
    result = subprocess.run(
        [str(script)],
        env=clean_env(PORT="x"),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2
    assert "PORT" in result.stderr


def test_env_file_is_loaded_and_the_environment_wins(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("PORT=1234\nMAX_CONNECTIONS=7\n# comment\nLOG_LEVEL=debug\n")
    merged = load_environment({"PORT": "4321"}, tmp_path / ".env")
    settings = ServerSettings.from_env(merged)
    assert settings.port == 4321, "the real environment wins over .env"
    assert settings.max_connections == 7
    assert settings.log_level == "debug"


def test_missing_env_file_is_fine(tmp_path: Path) -> None:
    assert load_environment({"A": "1"}, tmp_path / "absent.env") == {"A": "1"}


def test_running_server_reads_env_file_from_working_directory(tmp_path: Path) -> None:
    port = free_port()
    (tmp_path / ".env").write_text(f"PORT={port}\nMAX_CONNECTIONS=3\n")
    env = clean_env(HOST="127.0.0.1", ALLOW_MISSING_ORIGIN="true")
    proc = ServerProcess(env, tmp_path, tmp_path / "dotenv-server.log", port=port)
    try:
        proc.wait_ready()
        with urllib.request.urlopen(f"{proc.http}/healthz", timeout=5) as response:
            assert json.load(response)["max_connections"] == 3
    finally:
        proc.stop()


def test_bad_value_in_env_file_exits_2(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("HEARTBEAT_INTERVAL=soon\n")
    result = run_server_briefly(clean_env(), tmp_path)
    assert result.returncode == 2
    assert "HEARTBEAT_INTERVAL" in result.stderr


def run_script(
    name: str, args: list[str], tmp_path: Path, **env: str
) -> subprocess.CompletedProcess[str]:
    """An installed console script (echo-server, echo-client) run in ``tmp_path``."""
    return subprocess.run(
        [str(Path(sys.executable).with_name(name)), *args],
        env=clean_env(**env),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


@pytest.mark.parametrize(
    ("script", "variables"), [("echo-server", SERVER_VARIABLES), ("echo-client", CLIENT_VARIABLES)]
)
def test_help_lists_every_variable_with_its_default(
    tmp_path: Path, script: str, variables: tuple[Variable, ...]
) -> None:
    result = run_script(script, ["--help"], tmp_path)
    assert result.returncode == 0, result.stderr
    for var in variables:
        assert f"  {var.name}={var.default}" in result.stdout, var.name
    assert "README" not in result.stdout, "an installed copy has no README to point to"


@pytest.mark.parametrize("script", ["echo-server", "echo-client"])
def test_version(tmp_path: Path, script: str) -> None:
    result = run_script(script, ["--version"], tmp_path)
    assert (result.returncode, result.stdout) == (0, f"{script} {metadata.version('echo')}\n")


def test_check_config_prints_the_effective_settings_and_exits_0(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("PORT=8097\nHEARTBEAT_INTERVAL=1500\n")
    result = run_script(
        "echo-server",
        ["--check-config"],
        tmp_path,
        ALLOWED_ORIGINS="HTTPS://App.Example.com:443, https://*.example.org",
        COMPRESSION="off",
    )
    assert result.returncode == 0, result.stderr
    shown = dict(line.split("=", 1) for line in result.stdout.splitlines())
    assert list(shown) == [var.name for var in SERVER_VARIABLES]
    assert shown["PORT"] == "8097"  # from .env
    assert shown["HEARTBEAT_INTERVAL"] == "1500"
    assert shown["ALLOWED_ORIGINS"] == "https://app.example.com,https://*.example.org"
    assert shown["COMPRESSION"] == "false"
    assert shown["ALLOW_MISSING_ORIGIN"] == "true"
    assert "listening" not in result.stderr, "it only checks"


def test_check_config_exits_2_with_one_line(tmp_path: Path) -> None:
    result = run_script(
        "echo-server", ["--check-config"], tmp_path, ALLOWED_ORIGINS="https://ok.example,*.bad"
    )
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr == (
        "echo-server: invalid ALLOWED_ORIGINS entry '*.bad' (2 of 2): expected "
        "scheme://host[:port], where host may start with '*.' (one label)\n"
    )


def test_misspelt_names_in_env_file_are_warned_with_the_closest_name(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text(
        "ALLOWED_ORIGN=https://a.example\n"
        "ALLOW_MISSING_ORIGINS=false\n"
        "port=9000\n"
        "ECHO_DEBUG=1\n"
        "COMPOSE_PROJECT_NAME=echo\n"  # another tool's: left alone
        "MAX_CONNECTIONS=5\n"
    )
    result = run_script("echo-server", ["--check-config"], tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stderr.splitlines() == [
        "echo-server: warning: unknown setting 'ALLOWED_ORIGN' in .env: "
        "did you mean ALLOWED_ORIGINS?",
        "echo-server: warning: unknown setting 'ALLOW_MISSING_ORIGINS' in .env: "
        "did you mean ALLOW_MISSING_ORIGIN?",
        "echo-server: warning: unknown setting 'port' in .env: did you mean PORT?",
        "echo-server: warning: unknown setting 'ECHO_DEBUG' in .env: no such variable",
    ]
    assert "MAX_CONNECTIONS=5\n" in result.stdout


def test_misspelt_name_is_a_warning_in_the_running_servers_log(tmp_path: Path) -> None:
    port = free_port()
    (tmp_path / ".env").write_text(f"PORT={port}\nALLOWED_ORIGN=https://a.example\n")
    proc = ServerProcess(clean_env(HOST="127.0.0.1"), tmp_path, tmp_path / "s.log", port=port)
    try:
        proc.wait_ready()
        lines = proc.log().splitlines()
    finally:
        proc.stop()
    warning = next(line for line in lines if " WARNING " in line)
    assert warning.endswith(
        "echo.server: unknown setting 'ALLOWED_ORIGN' in .env: did you mean ALLOWED_ORIGINS?"
    )
    settings = next(line for line in lines if " echo.server: settings " in line)
    assert f" PORT={port} " in settings
    assert " ALLOWED_ORIGINS=http://localhost:3000,ws://localhost:8080 " in settings


def test_start_up_line_shows_every_setting_but_no_secret_and_no_file_contents() -> None:
    settings = ServerSettings.from_env({"PORT": "9001", "TRUSTED_PROXIES": "10.0.0.0/8"})
    assert [name for name, _ in settings.effective()] == [v.name for v in SERVER_VARIABLES]
    assert dict(settings.effective())["TRUSTED_PROXIES"] == "10.0.0.0/8"
    token = variable("CONTROL_TOKEN", "", "a secret", TEXT, "tls_key_file", secret=True)
    assert token.shown(replace(settings, tls_key_file="hunter2")) == "(set)"
    assert token.shown(settings) == "(unset)"
    odd = replace(settings, tls_cert_file="/tmp/a b\x1b.pem")
    assert dict(odd.effective())["TLS_CERT_FILE"] == "'/tmp/a b\\x1b.pem'"


def test_every_variable_is_documented_and_known_to_the_tests() -> None:
    root = Path(__file__).resolve().parent.parent
    readme = (root / "README.md").read_text()
    example = (root / ".env.example").read_text()
    names = {var.name for var in ALL_VARIABLES}
    assert names == set(CONFIG_VARIABLES), "tests/support.py's lists"
    for var in ALL_VARIABLES:
        assert f"| {var.name} " in readme or f"| {var.name} /" in readme, var.name
        assert re.search(rf"^#? ?{var.name}=", example, re.MULTILINE), var.name


def test_unknown_names_are_judged_by_closeness() -> None:
    known = [var.name for var in ALL_VARIABLES]
    assert unknown_names(["HOST", "PORT", "PATH", "HOSTNAME", "LANG"], known) == []
    assert unknown_names(["MAX_CONECTIONS"], known) == [
        "unknown setting 'MAX_CONECTIONS' in .env: did you mean MAX_CONNECTIONS?"
    ]


def test_client_declarations_agree_with_what_the_client_reads() -> None:
    """``--help`` and the warnings use the declarations; the client must read the same."""
    declared = {var.name: var for var in CLIENT_VARIABLES}
    env = {
        "WS_URL": "ws://h.example:1/",
        "RECONNECT_INTERVAL": "700",
        "RECONNECT_MAX_INTERVAL": "9000",
        "RECONNECT_MAX_ATTEMPTS": "4",
        "MESSAGE_INTERVAL": "250",
        "MESSAGE_COUNT": "9",
        "CLIENT_HEARTBEAT_INTERVAL": "3000",
        "LOG_LEVEL": "debug",
        "LOG_FORMAT": "json",
    }
    for source in ({}, env):
        settings = ClientSettings.from_env(source)
        for var in CLIENT_VARIABLES:
            if var.name == "ORIGIN":  # its default is derived (checked by the client tests)
                continue
            assert getattr(settings, var.fields[0]) == var.read(source), var.name
    assert set(env) | {"ORIGIN", "TLS_CA_FILE"} == set(declared)
