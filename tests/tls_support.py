"""TLS helpers for tests: a throwaway CA (trustme) and TLS server subprocesses."""

from __future__ import annotations

import asyncio
import http.client
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import trustme
from cryptography.hazmat.primitives import serialization

from tests.support import ServerProcess

ServerStarter = Callable[..., ServerProcess]


@dataclass(frozen=True)
class Pki:
    """PEM files of a throwaway CA and a server certificate for 127.0.0.1 and localhost."""

    ca: Path
    cert: Path
    key: Path
    other_key: Path  # the key of a different certificate
    encrypted_key: Path  # ``key``, encrypted with a passphrase
    client: Path  # a client certificate issued by ``ca`` and its key, one PEM file
    stranger: Path  # a client certificate and key from another CA


async def let_tls_close() -> None:
    """Give closing TLS connections of aiohttp's client time for their close_notify
    exchange, which asyncio finishes in the background: a test's loop that ends first
    leaves the socket to the garbage collector, reported unclosed in a later test."""
    await asyncio.sleep(0.1)


def client_cert_context(pki: Pki, certificate: Path | None = None) -> ssl.SSLContext:
    """A client context trusting ``pki.ca`` that presents ``certificate`` (cert and key)."""
    context = ssl.create_default_context(cafile=str(pki.ca))
    if certificate is not None:
        context.load_cert_chain(str(certificate))
    return context


def make_pki(tmp_path: Path) -> Pki:
    ca = trustme.CA()
    issued = ca.issue_cert("127.0.0.1", "localhost")
    other = ca.issue_cert("127.0.0.1")
    files = Pki(
        ca=tmp_path / "ca.pem",
        cert=tmp_path / "cert.pem",
        key=tmp_path / "key.pem",
        other_key=tmp_path / "other-key.pem",
        encrypted_key=tmp_path / "encrypted-key.pem",
        client=tmp_path / "client.pem",
        stranger=tmp_path / "stranger.pem",
    )
    ca.issue_cert(
        "client@example.test", common_name="echo test client"
    ).private_key_and_cert_chain_pem.write_to_path(str(files.client))
    trustme.CA().issue_cert("client@example.test").private_key_and_cert_chain_pem.write_to_path(
        str(files.stranger)
    )
    ca.cert_pem.write_to_path(str(files.ca))
    issued.cert_chain_pems[0].write_to_path(str(files.cert))
    issued.private_key_pem.write_to_path(str(files.key))
    other.private_key_pem.write_to_path(str(files.other_key))
    key = serialization.load_pem_private_key(issued.private_key_pem.bytes(), None)
    files.encrypted_key.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"passphrase"),
        )
    )
    return files


def start_tls_server(start: ServerStarter, pki: Pki, **variables: str) -> ServerProcess:
    """A server subprocess with the ``pki`` certificate, ready once https://…/healthz answers."""
    server = start(ready=False, TLS_CERT_FILE=str(pki.cert), TLS_KEY_FILE=str(pki.key), **variables)
    wait_tls_ready(server, client_cert_context(pki))
    return server


def start_mtls_server(start: ServerStarter, pki: Pki, **variables: str) -> ServerProcess:
    """A TLS server subprocess that asks for client certificates issued by ``pki.ca``
    (TLS_CLIENT_CA_FILE), ready once it answers a client presenting ``pki.client``."""
    server = start(
        ready=False,
        TLS_CERT_FILE=str(pki.cert),
        TLS_KEY_FILE=str(pki.key),
        TLS_CLIENT_CA_FILE=str(pki.ca),
        **variables,
    )
    wait_tls_ready(server, client_cert_context(pki, pki.client))
    return server


def wait_tls_ready(server: ServerProcess, context: ssl.SSLContext) -> None:
    """Poll https://127.0.0.1:port/healthz until it answers 200 (15 s at most)."""
    deadline = time.monotonic() + 15
    while True:
        if server.proc.poll() is not None:
            raise RuntimeError(f"server exited with {server.proc.returncode}: {server.log()}")
        # http.client rather than urllib: its close() also closes a socket whose TLS
        # handshake failed, which urllib would leave to the garbage collector.
        connection = http.client.HTTPSConnection(
            "127.0.0.1", server.port, timeout=2, context=context
        )
        try:
            connection.request("GET", "/healthz")
            if connection.getresponse().status == 200:
                return
        except OSError:
            pass
        finally:
            connection.close()
        if time.monotonic() > deadline:
            raise TimeoutError(f"TLS server not ready: {server.log()}")
        time.sleep(0.05)
