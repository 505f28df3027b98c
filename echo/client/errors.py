"""Why the client stops for good: each is one line for the user, and exit status 1.

Retrying cannot fix any of these (a refusal the server means, a certificate that is not
trusted, a redirect the client will not follow), except :class:`GaveUp`, which ends the
retries the user limited with RECONNECT_MAX_ATTEMPTS. Passing failures (the server is
down, busy, or the network broke) are not exceptions here: the client logs them and
tries again.
"""

from __future__ import annotations

from echo.text import preview


class FatalError(Exception):
    """The client cannot go on; ``str()`` is the line printed after ``echo-client: ``."""


class HandshakeRefused(FatalError):
    """The server answered the handshake with a 4xx status that retrying cannot change.

    ``reason`` is what the server said in the response body (escaped and cut), or ''.
    """

    def __init__(self, status: int, url: str, reason: str, origin: str | None) -> None:
        self.status = status
        self.url = url
        self.reason = reason
        self.origin = origin
        sent = f"Origin {preview(origin)}" if origin else "no Origin"
        said = f": {reason}" if reason else " (no reason given)"
        super().__init__(
            f"the server at {preview(url)} refused the handshake with HTTP {status}{said}; "
            f"sent {sent}{self.hint()}"
        )

    def hint(self) -> str:
        return ""


class OriginRefused(HandshakeRefused):
    """HTTP 403: the server does not admit this client, usually for its Origin."""

    def hint(self) -> str:
        if self.origin:
            return "; set ORIGIN or --origin to an origin it allows, or leave it unset"
        return "; set ORIGIN or --origin to an origin it allows"


class CertificateUntrusted(FatalError):
    """The server's TLS certificate failed verification: retrying cannot make it trusted."""

    def __init__(self, url: str, reason: str) -> None:
        self.url = url
        self.reason = reason
        super().__init__(
            f"cannot trust the TLS certificate of {preview(url)}: {preview(reason)}; "
            "set TLS_CA_FILE to the CA that signed it"
        )


class RedirectRefused(FatalError):
    """A redirect the client does not follow: not asked to, a downgrade, or too many."""

    def __init__(self, url: str, status: int, location: str, why: str) -> None:
        self.url = url
        self.status = status
        self.location = location
        self.why = why
        super().__init__(
            f"the server at {preview(url)} redirects (HTTP {status}) to {preview(location)}: {why}"
        )


class GaveUp(FatalError):
    """RECONNECT_MAX_ATTEMPTS attempts in a row failed."""

    def __init__(self, attempts: int, url: str, reason: str) -> None:
        self.attempts = attempts
        self.url = url
        self.reason = reason
        super().__init__(
            f"gave up after {attempts} failed attempt(s) to connect to {preview(url)}: {reason}"
        )
