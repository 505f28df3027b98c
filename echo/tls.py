"""TLS contexts for the server (certificate and key) and the client (trusted CAs).

Both are built once at start-up from the validated settings; loading them here is also
how the settings are validated (see echo.config), so a file that cannot be read or a
certificate that does not match its key stops the program before it listens.
"""

from __future__ import annotations

import ssl


class EncryptedKeyError(ValueError):
    """The private key is encrypted; the server takes unencrypted keys only."""


def _refuse_password() -> str:
    # Without a callback OpenSSL would prompt on the terminal and block start-up.
    raise EncryptedKeyError("the private key is encrypted")


def server_context(cert_file: str, key_file: str) -> ssl.SSLContext:
    """A server context with ``cert_file`` (PEM, chain allowed) and its ``key_file``.

    Raises OSError if a file cannot be read, ssl.SSLError if they are not a PEM
    certificate and the matching private key, EncryptedKeyError if the key is encrypted.
    """
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert_file, key_file, password=_refuse_password)
    return context


def client_context(ca_file: str = "") -> ssl.SSLContext:
    """A client context that verifies servers against ``ca_file`` (PEM) or the system store.

    Host names are checked. Raises OSError or ssl.SSLError if ``ca_file`` is unusable.
    """
    context = ssl.create_default_context(cafile=ca_file or None)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context
