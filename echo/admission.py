"""Which pages may open a WebSocket: the Origin rules, and why a handshake is refused.

Origin checks exist to stop cross-site WebSocket hijacking: a page of another site
that the user visits opening a connection with the user's network position. Browsers
always send ``Origin`` on a WebSocket handshake, so:

- **No Origin** is not a browser page (wscat, websocat, curl, this project's client):
  admitted by default (ALLOW_MISSING_ORIGIN=true); refusing it protects nothing.
- **An Origin in ALLOWED_ORIGINS** (exact, or a ``scheme://*.name`` pattern; ``*``
  for any) is admitted.
- **The server's own page** (Origin equal to ``scheme://Host``) is admitted when the
  Host is one the server knows it is reached by: an IP address, ``localhost`` (and
  ``*.localhost``), or a name in ALLOWED_HOSTS. Without that condition a DNS-rebinding
  page (``evil.example`` made to resolve to this server's address) would be admitted,
  since its Origin and Host agree.
- More than one Origin header is a malformed request (400): which one a proxy or the
  server would believe is not defined, so neither is.
"""

from __future__ import annotations

from collections.abc import Callable

from echo.config import ServerSettings
from echo.origins import Origin, host_matches, is_local_name, parse_origin

MISSING = "no Origin header, and ALLOW_MISSING_ORIGIN=false"
NOT_LISTED = "not in ALLOWED_ORIGINS"
HOST_NOT_LISTED = "not in ALLOWED_ORIGINS, and its host is not in ALLOWED_HOSTS"
DUPLICATE = "more than one Origin header"


class OriginPolicy:
    """ALLOWED_ORIGINS, ALLOW_MISSING_ORIGIN and ALLOWED_HOSTS, applied to one handshake."""

    def __init__(self, settings: ServerSettings) -> None:
        self.any_origin = settings.any_origin
        self.allowed = settings.allowed_origins
        self.patterns = settings.origin_patterns
        self.allow_missing = settings.allow_missing_origin
        self.hosts = settings.allowed_hosts

    def refusal(self, origin: str | None, page_origin: Callable[[], Origin | None]) -> str | None:
        """None if ``origin`` is admitted, otherwise why not (one line, no peer bytes).

        ``page_origin`` gives this server's own origin as the client addressed it
        (scheme and Host header); it is asked only when the lists do not decide.
        """
        if origin is None:
            return None if self.allow_missing else MISSING
        if self.any_origin:
            return None
        try:
            parsed = parse_origin(origin)
        except ValueError:
            return NOT_LISTED
        if parsed in self.allowed or any(p.matches(parsed) for p in self.patterns):
            return None
        if parsed != page_origin():
            return NOT_LISTED
        return None if self.host_known(parsed.host) else HOST_NOT_LISTED

    def host_known(self, host: str) -> bool:
        """``host`` (lower case, from the Host header) is one this server is reached by."""
        return is_local_name(host) or any(host_matches(host, entry) for entry in self.hosts)
