"""``echo-healthcheck``: exit 0 if the server on this host answers ``GET /healthz``.

For a container's HEALTHCHECK, where no curl is installed: it reads HOST, PORT and the
TLS files as the server does and asks the server in the same container (a wildcard
HOST is reached on loopback). A TLS certificate is not verified: the check asks
whether the process is alive, not who it is, and the name it was issued for is rarely
``127.0.0.1``. Exit 0 when the answer is 200 with ``"status": "ok"``; otherwise one
line on stderr and exit 1 (2 for bad configuration, as the server).
"""

from __future__ import annotations

import argparse
import json
import ssl
import sys
import urllib.request

from echo.config import ConfigError, ServerSettings, load_environment
from echo.text import preview

TIMEOUT = 4.0  # seconds; below the Dockerfile's HEALTHCHECK --timeout

_LOOPBACK = {"0.0.0.0": "127.0.0.1", "::": "::1"}


def healthz_url(settings: ServerSettings) -> str:
    """The /healthz URL of the server these settings describe, seen from its own host."""
    host = _LOOPBACK.get(settings.host, settings.host)
    shown = f"[{host}]" if ":" in host else host
    scheme = "https" if settings.tls else "http"
    return f"{scheme}://{shown}:{settings.port}/healthz"


def check(url: str, timeout: float = TIMEOUT) -> str | None:
    """None if ``url`` answers 200 with status ok, else why not (one line)."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    try:
        with urllib.request.urlopen(url, timeout=timeout, context=context) as response:
            body = json.loads(response.read(65536))
    except (OSError, ValueError) as error:  # URLError and HTTPError are OSErrors
        return f"{url}: {preview(str(error))}"
    if not isinstance(body, dict) or body.get("status") != "ok":
        return f"{url}: unexpected answer"
    return None


def main(argv: list[str] | None = None) -> None:
    """Console script ``echo-healthcheck``."""
    argparse.ArgumentParser(
        prog="echo-healthcheck",
        description="Exit 0 if the echo server configured by this environment answers "
        "GET /healthz on this host (for a container HEALTHCHECK).",
    ).parse_args(argv)
    try:
        settings = ServerSettings.from_env(load_environment())
    except ConfigError as error:
        print(f"echo-healthcheck: {error}", file=sys.stderr)
        sys.exit(2)
    if settings.port == 0:
        print("echo-healthcheck: PORT=0 picks a port at start; set PORT", file=sys.stderr)
        sys.exit(2)
    problem = check(healthz_url(settings))
    if problem is not None:
        print(f"echo-healthcheck: {problem}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
