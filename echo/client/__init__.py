"""The echo client: ``echo-client`` and the library behind it.

Modes (one per run, chosen by flags; see :mod:`echo.client.cli`):

- the default, :mod:`~echo.client.stream`: generated messages, every echo checked,
  nothing lost across reconnects (``EchoClient(settings).run()`` in a program);
- interactive (``-i``), :mod:`~echo.client.interactive`: a prompt for a person;
- pipe (``--pipe``), :mod:`~echo.client.pipe`: stdin lines out, answers to stdout;
- load (``--connections N``), :mod:`~echo.client.load`: many checked connections,
  throughput and latency percentiles;
- idle probe (``--probe-idle MAX``), :mod:`~echo.client.probe`: after how long a path
  cuts a silent connection.

Every mode connects through :mod:`~echo.client.dialer` (headers, subprotocols, proxy,
TLS, redirects) and reports through :mod:`~echo.client.events`.
"""

from __future__ import annotations

from echo.client.cli import main
from echo.client.errors import (
    CertificateUntrusted,
    FatalError,
    GaveUp,
    HandshakeRefused,
    OriginRefused,
    RedirectRefused,
)
from echo.client.stream import EchoClient
from echo.client.tracker import Stats

__all__ = [
    "CertificateUntrusted",
    "EchoClient",
    "FatalError",
    "GaveUp",
    "HandshakeRefused",
    "OriginRefused",
    "RedirectRefused",
    "Stats",
    "main",
]
