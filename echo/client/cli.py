"""``echo-client``: the command line and the mode it picks.

The settings come from the environment, ``.env`` and the flags (flags win), validated
by :class:`echo.config.ClientSettings`; the exit status is described in
:mod:`echo.client.running`.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import NoReturn

from echo.cli import command_line
from echo.client.errors import FatalError
from echo.client.events import configure_output, emit
from echo.client.running import (
    EXIT_CONFIG,
    EXIT_LOST,
    EXIT_OK,
    report_fatal,
    run_until_signal,
)
from echo.client.stream import EchoClient
from echo.client.tracker import Stats
from echo.config import (
    CLIENT_VARIABLES,
    ClientSettings,
    ConfigError,
    env_file_warnings,
    load_environment,
)
from echo.eventloop import loop_factory

EPILOG = """\
examples:
  echo-client ws://localhost:8080/                   generated messages, every echo checked
  echo-client -i wss://echo.example.com/            type messages, see what comes back
  printf 'a\\nb\\n' | echo-client --pipe ws://h/     one message per line, answers on stdout
  echo-client --connections 200 --rate 2000 --duration 10000 ws://h/   load test
  echo-client --probe-idle 120000 'wss://h/?heartbeat=off'             a path's idle timeout

exit status: 0 nothing lost or mismatched; 1 refused, untrusted certificate, redirect not
followed or RECONNECT_MAX_ATTEMPTS used up; 2 bad setting; 3 messages lost or mismatched.
"""


class _Parser(argparse.ArgumentParser):
    """argparse with its errors as one line and exit status 2, like bad settings."""

    def error(self, message: str) -> NoReturn:
        print(f"echo-client: {message}", file=sys.stderr)
        sys.exit(EXIT_CONFIG)


def build_parser() -> argparse.ArgumentParser:
    parser = command_line(
        "echo-client",
        "WebSocket client: checks an echo server, talks to any WebSocket server by hand or "
        "from a script, load-tests a path, probes its idle timeout. Configured by "
        "environment variables, also read from a .env file in the working directory (the "
        "environment wins), overridden by these flags. Durations are in milliseconds.",
        CLIENT_VARIABLES,
        check_config=False,
        notes=EPILOG,
        parser_class=_Parser,
    )
    parser.add_argument("url", nargs="?", help="ws:// or wss:// URL (or --url; WS_URL)")
    modes = parser.add_argument_group(
        "modes (at most one; none: a stream of generated messages, every echo checked)"
    )
    modes.add_argument("-i", "--interactive", action="store_true", help="type messages")
    modes.add_argument("--pipe", action="store_true", help="one message per line of stdin")
    modes.add_argument("--connections", metavar="N", help="load mode: N connections at once")
    modes.add_argument(
        "--probe-idle", metavar="MAX_MS", help="find after how long a silent connection is cut"
    )
    stream = parser.add_argument_group("messages (default and load mode)")
    stream.add_argument("--interval", metavar="MS", help="time between messages (MESSAGE_INTERVAL)")
    stream.add_argument(
        "--count",
        metavar="N",
        help="stop after N messages were answered, 0 = never (MESSAGE_COUNT)",
    )
    stream.add_argument("--size", metavar="N", help="send N-byte payloads, not random numbers")
    stream.add_argument("--binary", action="store_true", help="binary frames (pipe mode too)")
    stream.add_argument("--duration", metavar="MS", help="stop sending after this long")
    load = parser.add_argument_group("load mode")
    load.add_argument("--rate", metavar="N", help="messages per second, all connections together")
    load.add_argument(
        "--in-flight", metavar="K", help="keep K messages unanswered per connection, no pause"
    )
    pipe = parser.add_argument_group("pipe mode")
    pipe.add_argument("--base64", action="store_true", help="lines are base64 binary messages")
    pipe.add_argument("--hex", action="store_true", help="lines are hex binary messages")
    pipe.add_argument(
        "--wait", metavar="MS", help="after the input ends, wait at most this for answers (5000)"
    )
    connection = parser.add_argument_group("connection (every mode)")
    connection.add_argument("--url", dest="url_flag", metavar="URL", help="server URL (WS_URL)")
    connection.add_argument("--origin", help="Origin header to send; none by default (ORIGIN)")
    connection.add_argument(
        "-H", "--header", action="append", metavar="NAME:VALUE", help="extra header (repeatable)"
    )
    connection.add_argument(
        "--subprotocol", action="append", metavar="NAME", help="subprotocol to offer (repeatable)"
    )
    connection.add_argument(
        "--proxy", metavar="URL", help="http://host:port (CONNECT) or socks5[h]://host:port"
    )
    connection.add_argument("--cert", metavar="FILE", help="client certificate (PEM)")
    connection.add_argument("--key", metavar="FILE", help="its private key (PEM)")
    connection.add_argument(
        "--insecure", action="store_true", help="do not verify the server's certificate"
    )
    connection.add_argument(
        "--no-compression", action="store_true", help="do not offer permessage-deflate"
    )
    connection.add_argument(
        "--show-handshake", action="store_true", help="print the handshake's headers"
    )
    connection.add_argument(
        "--follow-redirects", action="store_true", help="follow redirects (never wss -> ws)"
    )
    connection.add_argument(
        "--max-attempts",
        metavar="N",
        help="give up after N failed attempts in a row, 0 = never (RECONNECT_MAX_ATTEMPTS)",
    )
    parser.add_argument("--json", action="store_true", help="events as JSON lines on stdout")
    return parser


_LISTS = {"header": "--header", "subprotocol": "--subprotocol"}


def parse_flags(argv: list[str] | None) -> dict[str, str | list[str]]:
    """The given flags as raw strings keyed by flag name, for ClientSettings.from_env;
    repeatable flags as lists, switches as ``"true"``."""
    parser = build_parser()
    args = vars(parser.parse_args(argv))
    positional, named = args.pop("url"), args.pop("url_flag")
    if positional is not None and named is not None and positional != named:
        parser.error("give the URL once: as an argument or with --url")
    flags: dict[str, str | list[str]] = {}
    url = named if named is not None else positional
    if url is not None:
        flags["--url"] = url
    for name, value in args.items():
        flag = "--" + name.replace("_", "-")
        if value is None or value is False:
            continue
        if value is True:
            flags[flag] = "true"
        elif name in _LISTS:
            flags[_LISTS[name]] = list(value)
        else:
            flags[flag] = value
    return flags


def report_summary(stats: Stats, settings: ClientSettings, line: str | None = None) -> None:
    """The summary: one text line on stdout, or the ``summary`` event with --json."""
    if settings.json:
        emit("summary", line or stats.summary(), **stats.fields())
    else:
        print(line or stats.summary(), flush=True)


def _run_stream(settings: ClientSettings) -> int:
    client = EchoClient(settings)

    def stop(drain: bool) -> None:
        client.stop(drain=drain)

    try:
        with asyncio.Runner(loop_factory=loop_factory()) as runner:
            stats = runner.run(run_until_signal(client.run(), stop, lambda: client.stopping))
    except FatalError as error:
        if client.stats.sent:
            report_summary(client.stats, settings)
        return report_fatal(error)
    report_summary(stats, settings)
    return EXIT_OK if stats.clean else EXIT_LOST


def main(argv: list[str] | None = None) -> None:
    """Console script ``echo-client``; the exit status is in the module docstring."""
    flags = parse_flags(argv)
    for warning in env_file_warnings():
        print(f"echo-client: warning: {warning}", file=sys.stderr)
    try:
        settings = ClientSettings.from_env(load_environment(), flags)
    except ConfigError as error:
        print(f"echo-client: {error}", file=sys.stderr)
        sys.exit(EXIT_CONFIG)
    mode = settings.mode
    if mode == "interactive":
        from echo.client.interactive import run_interactive

        sys.exit(run_interactive(settings))
    configure_output(settings)
    if mode == "pipe":
        from echo.client.pipe import run_pipe

        sys.exit(run_pipe(settings))
    if mode == "load":
        from echo.client.load import run_load

        sys.exit(run_load(settings))
    if mode == "probe":
        from echo.client.probe import run_probe

        sys.exit(run_probe(settings))
    sys.exit(_run_stream(settings))
