"""Settings: read from the environment and a ``.env`` file, validated in one place.

Every variable is declared once below (``SERVER_VARIABLES``, ``CLIENT_VARIABLES``: name,
default, help, kind of value, the settings field it fills); ``echo.variables`` turns
the declarations into reading and validation, ``--help``, the effective-settings line
and the warning for a misspelt name in ``.env``. Adding a variable is adding its
declaration and its field in ``ServerSettings`` or ``ClientSettings``, the validated
results that are passed down.

A bad value raises :class:`ConfigError`, whose message is the single line the entry
points print before exiting with status 2. Durations are given in milliseconds (as in
the original Node.js app) and stored in seconds.
"""

from __future__ import annotations

import ipaddress
import os
import re
import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from dotenv import dotenv_values
from yarl import URL

from echo.controls import SILENCE_LIMIT_S
from echo.origins import (
    Origin,
    OriginPattern,
    parse_allowed_origin,
    parse_host_pattern,
    parse_origin,
)
from echo.proxies import Network
from echo.tls import EncryptedKeyError, client_context, server_context
from echo.variables import (
    BOOLEAN,
    BOTH,
    CLIENT,
    MAX_DURATION_MS,
    ConfigError,
    Invalid,
    Kind,
    Variable,
    choice,
    duration,
    effective,
    integer,
    listed,
    read_all,
    unknown_names,
    variable,
)

__all__ = ["MAX_DURATION_MS", "ClientSettings", "ConfigError", "ServerSettings"]

T = TypeVar("T")

LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("text", "json")
ENGINES = ("auto", "plain", "fast")  # echo.engine: which engine moves the frames
MAX_MESSAGE_COUNT = 10**12
MAX_WORKERS = 64
MAX_CLIENT_MESSAGE_SIZE = 1 << 30
_LABEL = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")
# A pod or host name, a container id, host:port: what says which backend answered.
_INSTANCE_NAME = re.compile(r"[A-Za-z0-9]([A-Za-z0-9._:-]{0,252})")
MAX_PUSH_RATE = 1 << 30  # bytes per second a connection's pushes may ask for
MAX_SUBPROTOCOLS = 64
# RFC 6455 4.1: a subprotocol name is an HTTP token (RFC 9110 5.6.2).
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


def read_env_file(env_file: str | Path = ".env") -> dict[str, str]:
    """The variables of ``env_file``, or nothing if there is no such file."""
    path = Path(env_file)
    if not path.is_file():
        return {}
    return {k: v for k, v in dotenv_values(path).items() if v is not None}


def load_environment(
    environ: Mapping[str, str] | None = None, env_file: str | Path = ".env"
) -> dict[str, str]:
    """Merge ``env_file`` (if it exists) under ``environ``; the real environment wins."""
    merged = read_env_file(env_file)
    merged.update(os.environ if environ is None else environ)
    return merged


def env_file_warnings(env_file: str | Path = ".env") -> list[str]:
    """One line per misspelt or unknown ECHO-looking name in ``env_file``."""
    return unknown_names(read_env_file(env_file), (v.name for v in ALL_VARIABLES))


class Reader:
    """Typed reads of single values (the client's flag-only options); ConfigError if bad."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = env

    def raw(self, name: str, default: str) -> str:
        return self.env.get(name, default).strip()

    def kind(self, name: str, default: str, kind: Kind) -> Any:
        return variable(name, default, "", kind).read(self.env)

    def integer(self, name: str, default: int, low: int, high: int, what: str = "") -> int:
        kind = integer(low, high)
        if what:
            kind = Kind(kind.parse, what, kind.show)
        value: int = self.kind(name, str(default), kind)
        return value

    def duration(self, name: str, default_ms: int, low_ms: int = 1) -> float:
        value: float = self.kind(name, str(default_ms), duration(low_ms))
        return value

    def boolean(self, name: str, default: bool) -> bool:
        value: bool = self.kind(name, "true" if default else "false", BOOLEAN)
        return value

    def choice(self, name: str, default: str, choices: tuple[str, ...]) -> str:
        value: str = self.kind(name, default, choice(*choices))
        return value

    def custom(self, name: str, default: str, parse: Callable[[str], T], expected: str) -> T:
        value: T = self.kind(name, default, Kind(parse, expected))
        return value


def parse_host(text: str) -> str:
    """A bind address: an IPv4/IPv6 literal or a DNS name."""
    candidate = text[1:-1] if text.startswith("[") and text.endswith("]") else text
    try:
        return str(ipaddress.ip_address(candidate))
    except ValueError:
        pass
    labels = candidate.removesuffix(".").split(".")
    if len(candidate) <= 253 and all(_LABEL.match(label) for label in labels):
        return candidate
    raise ValueError(text)


def parse_instance_name(text: str) -> str:
    """INSTANCE_NAME: empty (unset), or 1 to 253 letters, digits and ``. _ : -``."""
    if text and not _INSTANCE_NAME.fullmatch(text):
        raise ValueError(text)
    return text


def parse_subprotocols(text: str) -> tuple[str, ...]:
    """SUBPROTOCOLS: comma-separated HTTP tokens, in the server's order; empty = none."""
    names = [item.strip() for item in text.split(",") if item.strip()]
    for position, name in enumerate(names, 1):
        if not _TOKEN.fullmatch(name):
            raise Invalid(SUBPROTOCOL_EXPECTED, (name, position, len(names)))
    if len(names) > MAX_SUBPROTOCOLS:
        raise Invalid(f"at most {MAX_SUBPROTOCOLS} subprotocols")
    return tuple(names)


SUBPROTOCOL_EXPECTED = "a subprotocol name (an HTTP token: letters, digits and !#$%&'*+-.^_`|~)"
ORIGIN_EXPECTED = "scheme://host[:port], where host may start with '*.' (one label)"
OriginRules = tuple[bool, frozenset[Origin], tuple[OriginPattern, ...]]


def parse_origins(text: str) -> OriginRules:
    """``*`` admits any origin; otherwise comma-separated exact origins and patterns."""
    items = [item.strip() for item in text.split(",") if item.strip()]
    if "*" in items:
        return True, frozenset(), ()
    exact: set[Origin] = set()
    patterns: list[OriginPattern] = []
    for position, item in enumerate(items, 1):
        try:
            entry = parse_allowed_origin(item)
        except ValueError:
            raise Invalid(ORIGIN_EXPECTED, (item, position, len(items))) from None
        if isinstance(entry, OriginPattern):
            patterns.append(entry)
        else:
            exact.add(entry)
    return False, frozenset(exact), tuple(patterns)


def show_origins(rules: OriginRules) -> str:
    any_origin, exact, patterns = rules
    if any_origin:
        return "*"
    return ",".join(sorted(str(o) for o in exact) + [str(p) for p in patterns])


def parse_network(text: str) -> Network:
    return ipaddress.ip_network(text, strict=False)


def _path(text: str) -> str:
    return text


SERVER_VARIABLES: tuple[Variable, ...] = (
    variable(
        "HOST",
        "0.0.0.0",
        "bind address (IPv4, IPv6 or host name); 0.0.0.0 or :: for all interfaces",
        Kind(parse_host, "an IP address or host name"),
    ),
    variable("PORT", "8080", "port to listen on (0 picks a free one)", integer(0, 65535)),
    variable(
        "WORKERS",
        "1",
        "processes serving PORT (more than 1: gunicorn, limits per process)",
        integer(1, MAX_WORKERS),
    ),
    variable(
        "ALLOWED_ORIGINS",
        "http://localhost:3000,ws://localhost:8080",
        "origins of browser pages allowed to connect: scheme://host[:port] or "
        "scheme://*.example.com (one label), comma-separated; * for any",
        Kind(
            parse_origins,
            "'*' or a comma-separated list of scheme://host[:port] (the host may start with '*.')",
            show_origins,
        ),
        ("any_origin", "allowed_origins", "origin_patterns"),
    ),
    variable(
        "ALLOW_MISSING_ORIGIN",
        "true",
        "admit handshakes without an Origin header (tools, not browser pages)",
        BOOLEAN,
    ),
    variable(
        "ALLOWED_HOSTS",
        "",
        "host names (or *.example.com) under which a page of this server is admitted "
        "without being in ALLOWED_ORIGINS; IP addresses and localhost always are",
        listed(parse_host_pattern, "a host name or *.name (at least two labels after *.)"),
    ),
    variable("MAX_CONNECTIONS", "100", "WebSocket connections open at once", integer(1, 1_000_000)),
    variable(
        "MAX_CONNECTIONS_PER_IP",
        "0",
        "WebSocket connections per client address; 0 = no limit",
        integer(0, 1_000_000),
    ),
    variable(
        "MAX_MESSAGE_SIZE",
        "1048576",
        "largest message in bytes, after reassembly",
        integer(1, 1 << 30),
    ),
    variable(
        "HEARTBEAT_INTERVAL",
        "30000",
        "ms; a silent peer is pinged, one that does not answer is dropped",
        duration(),
    ),
    variable(
        "HANDSHAKE_TIMEOUT",
        "10000",
        "ms to complete the HTTP upgrade (and idle timeout of plain HTTP keep-alive)",
        duration(),
    ),
    variable(
        "SHUTDOWN_TIMEOUT",
        "10000",
        "ms granted to open connections to close on SIGTERM/SIGINT",
        duration(low_ms=0),
    ),
    variable("COMPRESSION", "true", "offer permessage-deflate", BOOLEAN),
    variable("LOG_LEVEL", "info", "debug, info, warning or error", choice(*LOG_LEVELS), scope=BOTH),
    variable(
        "LOG_FORMAT",
        "text",
        "text (readable lines) or json (one object per line)",
        choice(*LOG_FORMATS),
        scope=BOTH,
    ),
    variable(
        "TLS_CERT_FILE",
        "",
        "PEM certificate (chain allowed); with TLS_KEY_FILE: https:// and wss:// only",
        Kind(_path, "a PEM certificate file"),
    ),
    variable(
        "TLS_KEY_FILE",
        "",
        "PEM private key of TLS_CERT_FILE (unencrypted)",
        Kind(_path, "a PEM private key file"),
    ),
    variable("METRICS", "true", "serve GET /metrics (Prometheus text format)", BOOLEAN),
    variable(
        "TRUSTED_PROXIES",
        "",
        "IP addresses or CIDR networks of reverse proxies whose X-Forwarded-For and "
        "X-Forwarded-Proto are believed, comma-separated",
        listed(parse_network, "an IP address or CIDR network"),
    ),
    variable(
        "ENGINE",
        "auto",
        "what moves the frames: auto (fast where proven for the installed aiohttp, else "
        "plain), plain (aiohttp's public API) or fast",
        choice(*ENGINES),
    ),
    variable(
        "DRAIN_DELAY",
        "0",
        "ms to stay up after SIGTERM, not ready (/readyz 503) and refusing new "
        "handshakes with 503, before closing connections (Kubernetes: 10000)",
        duration(low_ms=0),
    ),
    variable(
        "CONTROLS",
        "true",
        "per-connection test controls in the WebSocket URL's query string; false: a "
        "control is refused with 400",
        BOOLEAN,
    ),
    variable(
        "PUSH_MAX_RATE",
        "1048576",
        "bytes per second a connection's pushes (push_every, push_size) may ask for",
        integer(1, MAX_PUSH_RATE),
    ),
    variable(
        "SUBPROTOCOLS",
        "",
        "subprotocols spoken, comma-separated: the first the client offers that is "
        "listed is selected; empty: the client's first offer is accepted",
        Kind(
            parse_subprotocols,
            f"a comma-separated list of up to {MAX_SUBPROTOCOLS} subprotocol names",
            lambda names: ",".join(names),
        ),
    ),
    variable(
        "TLS_CLIENT_CA_FILE",
        "",
        "PEM CA certificates; with TLS, clients must present a certificate they signed "
        "(mutual TLS)",
        Kind(_path, "a PEM file of CA certificates"),
    ),
    variable(
        "INSTANCE_NAME",
        "",
        "a name for this instance (e.g. the pod name), shown in /healthz, the "
        "connection info and the HTTP echo",
        Kind(
            parse_instance_name,
            "up to 253 letters, digits, '.', '_', ':' or '-', starting with a letter or digit",
        ),
    ),
)


@dataclass(frozen=True, slots=True)
class ServerSettings:
    """Everything the server needs to know, already validated."""

    host: str = "0.0.0.0"
    port: int = 8080
    any_origin: bool = False
    allowed_origins: frozenset[Origin] = frozenset()
    allow_missing_origin: bool = True
    origin_patterns: tuple[OriginPattern, ...] = ()
    allowed_hosts: tuple[str, ...] = ()
    max_connections: int = 100
    max_connections_per_ip: int = 0
    max_message_size: int = 1_048_576
    heartbeat_interval: float = 30.0
    handshake_timeout: float = 10.0
    shutdown_timeout: float = 10.0
    compression: bool = True
    log_level: str = "info"
    tls_cert_file: str = ""
    tls_key_file: str = ""
    log_format: str = "text"
    trusted_proxies: tuple[Network, ...] = ()
    metrics: bool = True
    workers: int = 1
    engine: str = "auto"
    drain_delay: float = 0.0
    instance_name: str = ""
    controls: bool = True
    push_max_rate: int = 1_048_576
    subprotocols: tuple[str, ...] = ()
    tls_client_ca_file: str = ""
    # Not read from the environment: how long a connection with heartbeat=off may hear
    # nothing before it is closed (echo.controls.SILENCE_LIMIT_S; tests shorten it).
    silence_limit: float = SILENCE_LIMIT_S

    @property
    def tls(self) -> bool:
        """Serve https:// and wss:// (both TLS files given)."""
        return bool(self.tls_cert_file)

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> ServerSettings:
        values = read_all(SERVER_VARIABLES, env)
        check_tls_files(values["tls_cert_file"], values["tls_key_file"])
        check_client_ca_file(
            values["tls_client_ca_file"], values["tls_cert_file"], values["tls_key_file"]
        )
        return cls(**values)

    def effective(self) -> list[tuple[str, str]]:
        """``(variable, value)`` pairs as in effect: the start-up line, --check-config."""
        return effective(SERVER_VARIABLES, self)


def _unreadable(path: str) -> str | None:
    """Why ``path`` cannot be read as a file, or None if it can."""
    try:
        with open(path, "rb") as file:
            file.read(1)
    except OSError as error:
        return error.strerror or type(error).__name__
    return None


def check_tls_files(cert: str, key: str) -> None:
    """TLS_CERT_FILE and TLS_KEY_FILE: both or neither, readable, a certificate and its key."""
    if not cert and not key:
        return
    if not key:
        raise ConfigError("TLS_KEY_FILE", key, "a PEM private key file, since TLS_CERT_FILE is set")
    if not cert:
        raise ConfigError(
            "TLS_CERT_FILE", cert, "a PEM certificate file, since TLS_KEY_FILE is set"
        )
    for name, path, what in (("TLS_CERT_FILE", cert, "certificate"), ("TLS_KEY_FILE", key, "key")):
        problem = _unreadable(path)
        if problem is not None:
            raise ConfigError(name, path, f"a readable PEM {what} file ({problem})")
    try:
        server_context(cert, key)
    except EncryptedKeyError:
        raise ConfigError("TLS_KEY_FILE", key, "an unencrypted PEM private key") from None
    except (ssl.SSLError, OSError) as error:
        reason = getattr(error, "reason", None) or str(error)
        try:
            ssl.create_default_context().load_verify_locations(cafile=cert)
        except (ssl.SSLError, OSError):
            raise ConfigError("TLS_CERT_FILE", cert, "a PEM certificate file") from None
        raise ConfigError(
            "TLS_KEY_FILE", key, f"the PEM private key of TLS_CERT_FILE ({reason})"
        ) from None


def check_client_ca_file(path: str, cert: str, key: str) -> None:
    """TLS_CLIENT_CA_FILE: empty (no client certificates asked for), or a readable PEM
    file of the CA certificates that client certificates must verify against (mutual
    TLS), only together with TLS_CERT_FILE and TLS_KEY_FILE."""
    name = "TLS_CLIENT_CA_FILE"
    if not path:
        return
    if not cert:
        raise ConfigError(name, path, "to be empty unless TLS_CERT_FILE and TLS_KEY_FILE are set")
    problem = _unreadable(path)
    if problem is not None:
        raise ConfigError(name, path, f"a readable PEM file of CA certificates ({problem})")
    try:
        server_context(cert, key, path)
    except (ssl.SSLError, OSError):
        raise ConfigError(name, path, "a PEM file of CA certificates") from None


def parse_ca_file(path: str) -> str:
    """TLS_CA_FILE: empty (the system store) or a readable PEM file of CA certificates."""
    if not path:
        return ""
    problem = _unreadable(path)
    if problem is not None:
        raise Invalid(f"a readable PEM file of CA certificates ({problem})")
    try:
        client_context(path)
    except (ssl.SSLError, OSError):
        raise Invalid("a PEM file of CA certificates") from None
    return path


def read_ca_file(r: Reader) -> str:
    """TLS_CA_FILE: empty (the system store) or a readable PEM file of CA certificates."""
    path = r.raw("TLS_CA_FILE", "")
    if not path:
        return ""
    problem = _unreadable(path)
    if problem is not None:
        raise ConfigError(
            "TLS_CA_FILE", path, f"a readable PEM file of CA certificates ({problem})"
        )
    try:
        client_context(path)
    except (ssl.SSLError, OSError):
        raise ConfigError("TLS_CA_FILE", path, "a PEM file of CA certificates") from None
    return path


def parse_ws_url(text: str) -> URL:
    """An absolute ``ws://`` or ``wss://`` URL with a host (path and query allowed)."""
    url = URL(text)
    if url.scheme not in ("ws", "wss") or not url.is_absolute() or not url.host or url.fragment:
        raise ValueError(text)
    parse_origin(str(url.origin()))  # rejects hosts with spaces and other junk yarl lets by
    return url


def url_origin(url: URL) -> str:
    """The Origin a page at ``url`` would send: ``scheme://host[:port]`` (default port omitted)."""
    return str(url.origin())


def _origin_or_empty(text: str) -> str:
    return str(parse_origin(text)) if text else ""


_SHARED = {v.name: v for v in SERVER_VARIABLES if "client" in v.scope}

CLIENT_VARIABLES: tuple[Variable, ...] = (
    variable(
        "WS_URL",
        "ws://localhost:8080/",
        "server to connect to (ws:// or wss://)",
        Kind(lambda text: str(parse_ws_url(text)), "an absolute ws:// or wss:// URL"),
        "url",
        scope=CLIENT,
        flag="--url",
    ),
    variable(
        "ORIGIN",
        "",
        "Origin header to send; empty = scheme://host[:port] of WS_URL",
        Kind(_origin_or_empty, "scheme://host[:port]"),
        scope=CLIENT,
        flag="--origin",
    ),
    variable(
        "RECONNECT_INTERVAL",
        "5000",
        "ms before the first reconnection attempt; doubles after each failure",
        duration(),
        scope=CLIENT,
    ),
    variable(
        "RECONNECT_MAX_INTERVAL",
        "30000",
        "ms, cap of the reconnection back-off (at least RECONNECT_INTERVAL)",
        duration(),
        scope=CLIENT,
    ),
    variable(
        "MESSAGE_INTERVAL",
        "1000",
        "ms between messages",
        duration(),
        scope=CLIENT,
        flag="--interval",
    ),
    variable(
        "MESSAGE_COUNT",
        "0",
        "stop after this many messages were echoed; 0 = run until stopped",
        integer(0, MAX_MESSAGE_COUNT),
        scope=CLIENT,
        flag="--count",
    ),
    variable(
        "CLIENT_HEARTBEAT_INTERVAL",
        "10000",
        "ms of silence before the client pings; no pong within half of it: reconnect",
        duration(),
        "heartbeat_interval",
        scope=CLIENT,
    ),
    _SHARED["LOG_LEVEL"],
    _SHARED["LOG_FORMAT"],
    variable(
        "TLS_CA_FILE",
        "",
        "PEM file of the CAs that wss:// servers are verified against; empty = system store",
        Kind(parse_ca_file, "a PEM file of CA certificates"),
        "ca_file",
        scope=CLIENT,
    ),
)
ALL_VARIABLES: tuple[Variable, ...] = SERVER_VARIABLES + tuple(
    v for v in CLIENT_VARIABLES if v.name not in _SHARED
)


@dataclass(frozen=True, slots=True)
class ClientSettings:
    """Everything the echo client needs to know, already validated (durations in seconds).

    ``size`` None means the original app's payload: a random number as text. An empty
    ``origin`` is filled in from ``url``.
    """

    url: str = "ws://localhost:8080/"
    origin: str = ""
    reconnect_interval: float = 5.0
    reconnect_max_interval: float = 30.0
    message_interval: float = 1.0
    message_count: int = 0
    heartbeat_interval: float = 10.0
    size: int | None = None
    binary: bool = False
    log_level: str = "info"
    ca_file: str = ""
    log_format: str = "text"

    def __post_init__(self) -> None:
        if not self.origin:
            object.__setattr__(self, "origin", url_origin(URL(self.url)))

    @property
    def healthy_after(self) -> float:
        """A connection that stayed up this long resets the back-off to its first step."""
        return self.reconnect_max_interval

    @classmethod
    def from_env(
        cls, env: Mapping[str, str], flags: Mapping[str, str] | None = None
    ) -> ClientSettings:
        """Read the environment, with command-line ``flags`` (keyed ``--url`` etc.) winning.

        A bad value is reported under the name the user typed: the flag if it came from
        the command line, the variable otherwise.
        """
        flags = flags or {}

        def source(variable: str, flag: str | None = None) -> tuple[Reader, str]:
            if flag is not None and flag in flags:
                return Reader(flags), flag
            return Reader(env), variable

        url_expected = "an absolute ws:// or wss:// URL"
        reader, name = source("WS_URL", "--url")
        url = reader.custom(name, "ws://localhost:8080/", parse_ws_url, url_expected)
        reader, name = source("ORIGIN", "--origin")
        origin = reader.custom(
            name, url_origin(url), lambda t: str(parse_origin(t)), "scheme://host[:port]"
        )
        env_reader = Reader(env)
        first = env_reader.duration("RECONNECT_INTERVAL", 5_000)
        cap_text = env_reader.raw("RECONNECT_MAX_INTERVAL", "30000")
        cap = env_reader.duration("RECONNECT_MAX_INTERVAL", 30_000)
        if cap < first:
            raise ConfigError(
                "RECONNECT_MAX_INTERVAL",
                cap_text,
                f"a duration of at least RECONNECT_INTERVAL ({round(first * 1000)} ms)",
            )
        reader, name = source("MESSAGE_INTERVAL", "--interval")
        interval = reader.duration(name, 1_000)
        reader, name = source("MESSAGE_COUNT", "--count")
        count = reader.integer(name, 0, 0, MAX_MESSAGE_COUNT)
        size = None
        if "--size" in flags:
            size = Reader(flags).integer("--size", 0, 1, MAX_CLIENT_MESSAGE_SIZE)
        return cls(
            url=str(url),
            origin=origin,
            reconnect_interval=first,
            reconnect_max_interval=cap,
            message_interval=interval,
            message_count=count,
            heartbeat_interval=env_reader.duration("CLIENT_HEARTBEAT_INTERVAL", 10_000),
            size=size,
            binary=Reader(flags).boolean("--binary", False),
            log_level=env_reader.choice("LOG_LEVEL", "info", LOG_LEVELS),
            ca_file=read_ca_file(env_reader),
            log_format=env_reader.choice("LOG_FORMAT", "text", LOG_FORMATS),
        )
