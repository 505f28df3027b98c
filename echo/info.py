"""Connection info: what reached this server, as it saw it, for people testing proxies.

The same fields serve two ways: the first message of a WebSocket opened with the
``info`` control, and the answer to a plain HTTP request on an echo path (or ``/``)
that asks for JSON (``Accept: application/json`` or ``?format=json``). They say which
instance answered (host name, process, worker, INSTANCE_NAME), who the server believes
the client is (after TRUSTED_PROXIES) and who the peer is, what the request looked like
(headers in order and spelling, credentials masked as the HTTP echo masks them), what
was negotiated (subprotocol, extensions) and, over TLS, the protocol version, cipher,
the server name the client asked for (SNI), ALPN and the client certificate (mTLS).

Everything here reads public API: the request, the response's headers and the
transport's ``get_extra_info``.
"""

from __future__ import annotations

import os
import socket
import ssl
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from aiohttp import hdrs, web

from echo.httpecho import mask_header
from echo.logs import clip
from echo.tls import EchoSSLObject

MAX_HEADERS = 100  # headers shown; the count of the rest is given
MAX_VALUE = 1024  # characters of a header value shown
# Short names of the attributes in certificate names, as OpenSSL prints them.
_NAME_ATTRIBUTES = {
    "commonName": "CN",
    "countryName": "C",
    "stateOrProvinceName": "ST",
    "localityName": "L",
    "organizationName": "O",
    "organizationalUnitName": "OU",
    "emailAddress": "emailAddress",
    "domainComponent": "DC",
}


@dataclass(frozen=True, slots=True)
class Instance:
    """Which server process answers: told to clients so they can see which backend
    a proxy chose. The process id is read when asked (a worker forks after start-up)."""

    host: str
    name: str  # INSTANCE_NAME, or empty
    workers: int

    @classmethod
    def here(cls, name: str, workers: int) -> Instance:
        return cls(host=socket.gethostname(), name=name, workers=workers)

    def as_json(self) -> dict[str, Any]:
        pid = os.getpid()
        return {
            "host": self.host,
            "name": self.name or None,
            "pid": pid,
            # Connection ids carry the same prefix (w1234-c1) with several workers.
            "worker": f"w{pid}" if self.workers > 1 else None,
            "workers": self.workers,
        }

    def line(self) -> str:
        """One line for the text HTTP echo."""
        named = f" name={self.name}" if self.name else ""
        return f"# instance host={self.host}{named} pid={os.getpid()} workers={self.workers}"


def headers_as_received(raw_headers: Iterable[tuple[bytes, bytes]]) -> tuple[list[Any], int]:
    """The request's headers as ``[name, value]`` pairs in order, credentials masked
    (echo.httpecho's rule), values cut to MAX_VALUE characters; and how many more
    there were than MAX_HEADERS."""
    shown: list[Any] = []
    omitted = 0
    for name, value in raw_headers:
        if len(shown) == MAX_HEADERS:
            omitted += 1
            continue
        masked = mask_header(name, value)
        shown.append([_text(name), clip(_text(masked), MAX_VALUE)])
    return shown, omitted


def tls_details(ssl_object: ssl.SSLObject | None) -> dict[str, Any] | None:
    """Version, cipher, SNI, ALPN and the client certificate of a TLS connection."""
    if ssl_object is None:
        return None
    cipher = ssl_object.cipher()
    peer = ssl_object.getpeercert()
    certificate = None
    if peer:
        certificate = {
            "subject": distinguished_name(peer.get("subject", ())),
            "issuer": distinguished_name(peer.get("issuer", ())),
        }
    return {
        "version": ssl_object.version(),
        "cipher": cipher[0] if cipher else None,
        "sni": ssl_object.server_name if isinstance(ssl_object, EchoSSLObject) else None,
        "alpn": ssl_object.selected_alpn_protocol(),
        "client_certificate": certificate,
    }


def distinguished_name(name: Any) -> str:
    """A certificate name from ``getpeercert()``, as ``O=Example, CN=client``."""
    parts = []
    for rdn in name:
        parts.append("+".join(f"{_NAME_ATTRIBUTES.get(key, key)}={value}" for key, value in rdn))
    return ", ".join(parts)


def _text(value: bytes) -> str:
    """Header bytes as text: UTF-8, other bytes as ``\\xNN``."""
    return value.decode("utf-8", "backslashreplace")


@dataclass(frozen=True, slots=True)
class InfoBuilder:
    """Builds the info of a request; ``remote`` is the server's own idea of the client
    address (echo.server's, after TRUSTED_PROXIES)."""

    instance: Instance
    remote: Callable[[web.BaseRequest], str]

    def describe(
        self,
        request: web.BaseRequest,
        *,
        connection: str | None = None,
        response: web.WebSocketResponse | None = None,
        controls: str | None = None,
    ) -> dict[str, Any]:
        """The fields of the info; ``response`` is the upgraded WebSocket, if any."""
        transport = request.transport
        peername = transport.get_extra_info("peername") if transport is not None else None
        ssl_object = transport.get_extra_info("ssl_object") if transport is not None else None
        headers, omitted = headers_as_received(request.raw_headers)
        version = request.version
        info: dict[str, Any] = {
            "connection": connection,
            "instance": self.instance.as_json(),
            "remote": self.remote(request),
            "peer": _peer(peername),
            "method": request.method,
            "path": request.rel_url.raw_path,
            "query": request.rel_url.raw_query_string,
            "http_version": f"{version.major}.{version.minor}",
            "headers": headers,
        }
        if omitted:
            info["headers_omitted"] = omitted
        info["subprotocol"] = response.ws_protocol if response is not None else None
        info["extensions"] = (
            response.headers.get(hdrs.SEC_WEBSOCKET_EXTENSIONS) if response is not None else None
        )
        if response is not None:
            info["controls"] = controls
        info["tls"] = tls_details(ssl_object)
        return info


def _peer(peername: Any) -> dict[str, Any] | None:
    """The TCP peer's address and port (IPv6 scope and flow info left out)."""
    if isinstance(peername, tuple) and len(peername) >= 2:
        return {"address": str(peername[0]), "port": int(peername[1])}
    return None
