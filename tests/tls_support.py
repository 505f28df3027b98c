"""TLS helpers for tests: a throwaway CA (trustme) and TLS server subprocesses."""

from __future__ import annotations

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
    wait_tls_ready(server, ssl.create_default_context(cafile=str(pki.ca)))
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
