"""Settings: read from the environment and a ``.env`` file, validated in one place.

Every value is checked at start-up. A bad one raises :class:`ConfigError`, whose
message is the single line the entry points print before exiting with status 2.
Durations are given in milliseconds (as in the original Node.js app) and stored
in seconds.
"""

from __future__ import annotations

import ipaddress
import os
import re
import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from dotenv import dotenv_values
from yarl import URL

from echo.origins import Origin, parse_origin
from echo.proxies import Network, parse_trusted_proxies
from echo.text import preview
from echo.tls import EncryptedKeyError, client_context, server_context

T = TypeVar("T")

MAX_DURATION_MS = 86_400_000  # one day: longer waits are a typo, not a wish
LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("text", "json")
ENGINES = ("auto", "plain", "fast")  # echo.engine: which engine moves the frames
MAX_MESSAGE_COUNT = 10**12
MAX_WORKERS = 64
MAX_CLIENT_MESSAGE_SIZE = 1 << 30
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})
_LABEL = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")


class ConfigError(ValueError):
    """A configuration value that cannot be used; ``str()`` is one printable line."""

    def __init__(self, name: str, value: str, expected: str) -> None:
        self.name = name
        self.value = value
        self.expected = expected
        super().__init__(f"invalid {name}={preview(value, 80)}: expected {expected}")


def load_environment(
    environ: Mapping[str, str] | None = None, env_file: str | Path = ".env"
) -> dict[str, str]:
    """Merge ``env_file`` (if it exists) under ``environ``; the real environment wins."""
    merged: dict[str, str] = {}
    path = Path(env_file)
    if path.is_file():
        merged.update({k: v for k, v in dotenv_values(path).items() if v is not None})
    merged.update(os.environ if environ is None else environ)
    return merged


class Reader:
    """Typed accessors over an environment mapping; each raises ConfigError on bad input."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = env

    def raw(self, name: str, default: str) -> str:
        return self.env.get(name, default).strip()

    def integer(self, name: str, default: int, low: int, high: int, what: str = "") -> int:
        text = self.raw(name, str(default))
        expected = what or f"an integer from {low} to {high}"
        if not re.fullmatch(r"[+-]?[0-9]{1,19}", text):  # \d would take other scripts' digits
            raise ConfigError(name, text, expected)
        value = int(text)
        if not low <= value <= high:
            raise ConfigError(name, text, expected)
        return value

    def duration(self, name: str, default_ms: int, low_ms: int = 1) -> float:
        """Milliseconds in the environment, seconds in the program."""
        expected = f"a duration in milliseconds from {low_ms} to {MAX_DURATION_MS}"
        return self.integer(name, default_ms, low_ms, MAX_DURATION_MS, expected) / 1000

    def boolean(self, name: str, default: bool) -> bool:
        text = self.raw(name, "true" if default else "false").lower()
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
        raise ConfigError(name, text, "true or false")

    def choice(self, name: str, default: str, choices: tuple[str, ...]) -> str:
        text = self.raw(name, default).lower()
        if text not in choices:
            raise ConfigError(name, text, "one of " + ", ".join(choices))
        return text

    def custom(self, name: str, default: str, parse: Callable[[str], T], expected: str) -> T:
        text = self.raw(name, default)
        try:
            return parse(text)
        except ValueError:
            raise ConfigError(name, text, expected) from None


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


def parse_origins(text: str) -> tuple[bool, frozenset[Origin]]:
    """``*`` admits any origin; otherwise a comma-separated list of exact origins."""
    items = [item.strip() for item in text.split(",") if item.strip()]
    if "*" in items:
        return True, frozenset()
    return False, frozenset(parse_origin(item) for item in items)


@dataclass(frozen=True, slots=True)
class ServerSettings:
    """Everything the server needs to know, already validated."""

    host: str = "0.0.0.0"
    port: int = 8080
    any_origin: bool = False
    allowed_origins: frozenset[Origin] = frozenset()
    allow_missing_origin: bool = False
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

    @property
    def tls(self) -> bool:
        """Serve https:// and wss:// (both TLS files given)."""
        return bool(self.tls_cert_file)

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> ServerSettings:
        r = Reader(env)
        cert_file, key_file = read_tls_files(r)
        any_origin, origins = r.custom(
            "ALLOWED_ORIGINS",
            "http://localhost:3000,ws://localhost:8080",
            parse_origins,
            "'*' or a comma-separated list of scheme://host[:port]",
        )
        return cls(
            host=r.custom("HOST", "0.0.0.0", parse_host, "an IP address or host name"),
            port=r.integer("PORT", 8080, 0, 65535),
            any_origin=any_origin,
            allowed_origins=origins,
            allow_missing_origin=r.boolean("ALLOW_MISSING_ORIGIN", False),
            max_connections=r.integer("MAX_CONNECTIONS", 100, 1, 1_000_000),
            max_connections_per_ip=r.integer("MAX_CONNECTIONS_PER_IP", 0, 0, 1_000_000),
            max_message_size=r.integer("MAX_MESSAGE_SIZE", 1_048_576, 1, 1 << 30),
            heartbeat_interval=r.duration("HEARTBEAT_INTERVAL", 30_000),
            handshake_timeout=r.duration("HANDSHAKE_TIMEOUT", 10_000),
            shutdown_timeout=r.duration("SHUTDOWN_TIMEOUT", 10_000, low_ms=0),
            compression=r.boolean("COMPRESSION", True),
            log_level=r.choice("LOG_LEVEL", "info", LOG_LEVELS),
            tls_cert_file=cert_file,
            tls_key_file=key_file,
            log_format=r.choice("LOG_FORMAT", "text", LOG_FORMATS),
            trusted_proxies=r.custom(
                "TRUSTED_PROXIES",
                "",
                parse_trusted_proxies,
                "a comma-separated list of IP addresses or CIDR networks",
            ),
            metrics=r.boolean("METRICS", True),
            workers=r.integer("WORKERS", 1, 1, MAX_WORKERS),
            engine=r.choice("ENGINE", "auto", ENGINES),
        )


def _unreadable(path: str) -> str | None:
    """Why ``path`` cannot be read as a file, or None if it can."""
    try:
        with open(path, "rb") as file:
            file.read(1)
    except OSError as error:
        return error.strerror or type(error).__name__
    return None


def read_tls_files(r: Reader) -> tuple[str, str]:
    """TLS_CERT_FILE and TLS_KEY_FILE: both or neither, readable, a certificate and its key."""
    cert = r.raw("TLS_CERT_FILE", "")
    key = r.raw("TLS_KEY_FILE", "")
    if not cert and not key:
        return "", ""
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
    return cert, key


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
