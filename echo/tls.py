"""TLS contexts for the server (certificate and key) and the client (trusted CAs).

Both are built once at start-up from the validated settings; loading them here is also
how the settings are validated (see echo.config), so a file that cannot be read or a
certificate that does not match its key stops the program before it listens.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable
from typing import ClassVar


class EncryptedKeyError(ValueError):
    """The private key is encrypted; the server takes unencrypted keys only."""


def _refuse_password() -> str:
    # Without a callback OpenSSL would prompt on the terminal and block start-up.
    raise EncryptedKeyError("the private key is encrypted")


# OpenSSL's reasons for a server handshake that failed on the client's certificate.
CERTIFICATE_REASONS = frozenset(
    {"CERTIFICATE_VERIFY_FAILED", "PEER_DID_NOT_RETURN_A_CERTIFICATE", "NO_CERTIFICATE_RETURNED"}
)


class EchoSSLObject(ssl.SSLObject):
    """The TLS state of one server connection, with the server name the client asked
    for (SNI), which Python's SSLObject does not keep on the server side.

    Installed through ``SSLContext.sslobject_class``, the documented way to have
    ``wrap_bio`` (what asyncio's and uvloop's TLS transports call) return a subclass.
    """

    server_name: str | None = None
    # Told the reason when a handshake fails on the client's certificate (mTLS; set on
    # a subclass per context by watch_client_certificates).
    refused: ClassVar[tuple[Callable[[str], None], ...]] = ()

    def do_handshake(self) -> None:
        """The TLS handshake step the transport drives; a failure on the client's
        certificate (the client gets its alert from OpenSSL) is also reported."""
        try:
            super().do_handshake()
        except ssl.SSLError as error:
            reason = getattr(error, "reason", None)
            if reason in CERTIFICATE_REASONS:
                for report in type(self).refused:
                    report(reason)
            raise


def watch_client_certificates(context: ssl.SSLContext, report: Callable[[str], None]) -> None:
    """Have ``report`` told OpenSSL's reason whenever a TLS handshake on ``context``
    fails on the client's certificate. asyncio's and uvloop's listeners end such a
    connection without telling the application; the handshake itself is ours to see,
    through the SSLObject class the context creates."""

    class Watched(EchoSSLObject):
        refused = (report,)

    context.sslobject_class = Watched


def _note_server_name(
    ssl_object: ssl.SSLObject | ssl.SSLSocket, server_name: str | None, _context: ssl.SSLContext
) -> None:
    """``sni_callback``: keep the requested name for the connection info."""
    if isinstance(ssl_object, EchoSSLObject):
        ssl_object.server_name = server_name


def server_context(cert_file: str, key_file: str, client_ca_file: str = "") -> ssl.SSLContext:
    """A server context with ``cert_file`` (PEM, chain allowed) and its ``key_file``.

    With ``client_ca_file`` (PEM CA certificates) the server asks every client for a
    certificate and completes the handshake only with one that verifies against it
    (mutual TLS); anything else ends in a TLS alert. ALPN offers ``http/1.1``, the only
    protocol served, so clients that offer it see it selected. The SNI name a client
    sends is kept on the connection's :class:`EchoSSLObject`.

    Raises OSError if a file cannot be read, ssl.SSLError if they are not a PEM
    certificate and the matching private key (or ``client_ca_file`` holds no CA
    certificate), EncryptedKeyError if the key is encrypted.
    """
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert_file, key_file, password=_refuse_password)
    context.set_alpn_protocols(["http/1.1"])
    context.sslobject_class = EchoSSLObject
    context.sni_callback = _note_server_name
    if client_ca_file:
        context.load_verify_locations(cafile=client_ca_file)
        if not context.get_ca_certs():
            raise ssl.SSLError(f"no CA certificate in {client_ca_file}")
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def client_context(ca_file: str = "") -> ssl.SSLContext:
    """A client context that verifies servers against ``ca_file`` (PEM) or the system store.

    Host names are checked. Raises OSError or ssl.SSLError if ``ca_file`` is unusable.
    """
    context = ssl.create_default_context(cafile=ca_file or None)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context
