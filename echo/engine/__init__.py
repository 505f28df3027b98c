"""The seam between the application and the engines that move WebSocket frames.

::

    echo.server: the application            echo.listeners: our listening sockets,
    admission, echo policy, counting,        a Gate in front of every connection
    logging, shutdown                        (handshake deadline, unmasked frames)
            |
            |  engine.accept(request, conn, app) after admission;
            |  engine.runner(app, ...) at start-up
            v
    +----------------------------+   +-------------------------------------------+
    | plain (echo/engine/plain)  |   | fast (echo/engine/fast/)                  |
    | WebSocketResponse with     |   | echoes from inside aiohttp's frame parser; |
    | autoping and heartbeat, a  |   | aiohttp 3.14.5 internals only here; hands |
    | receive() loop; public API |   | a connection to plain when plain_reason() |
    | only; any allowed aiohttp  |   | names one (compression, debug logging)    |
    +----------------------------+   +-------------------------------------------+

What an engine is given and reports, both ways through this module only:

- a :class:`Connection` record per WebSocket, created by the application: the
  engine adds its traffic (:class:`Traffic`, the one counters type that the close log
  line and /metrics read) and the close codes it sent and received;
- an :class:`App`: ``opened(handle, conn)`` once upgraded, ``ended(handle, conn)`` once
  over (its slot is given back, it is counted and logged there), ``peer_error`` for the
  peer's protocol violations (logged at INFO), ``internal_error`` for everything else
  (our bug: ERROR with its traceback; the engine closes with 1011);
- a handle per connection (:class:`Handle`) the application closes it with (shutdown).

At start-up :func:`choose` picks the engine: ``ENGINE=fast`` or ``auto`` take the fast
engine only where it is proven (:func:`echo.engine.fast.unavailable`: a tested aiohttp
release and passing self-checks); otherwise ``auto`` serves on the plain engine with
one warning line, and ``fast`` is a configuration error. :func:`build` makes the
chosen engine for one app.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from aiohttp import hdrs, web

from echo.config import ServerSettings
from echo.controls import Controls
from echo.protocol import select_subprotocol

log = logging.getLogger("echo.server")

NO_STATUS_CODE = 1005  # RFC 6455 7.1.5: how a close frame without a code is reported


@dataclass(slots=True)
class Traffic:
    """A connection's counters: every data message each way, and binary ones apart
    (text is the difference). The echo paths add to them; the close log line and
    /metrics read them."""

    messages_in: int = 0
    bytes_in: int = 0
    messages_out: int = 0
    bytes_out: int = 0
    binary_in: int = 0
    binary_bytes_in: int = 0
    binary_out: int = 0
    binary_bytes_out: int = 0


@dataclass(slots=True, kw_only=True)
class Connection(Traffic):
    """One WebSocket, from its upgrade to its end.

    ``close_sent`` is the code of the close frame the server sent and
    ``close_received`` that of the peer's (1005 for a frame without a code); None when
    there was none. ``close_code`` is the first of the two: the one that ended it.
    """

    id: str
    remote: str
    origin: str | None = None
    opened: float = field(default_factory=time.monotonic)
    upgraded: bool = False  # set by App.opened
    controls: Controls | None = None  # the test controls it asked for (echo.controls)
    close_sent: int | None = None
    close_received: int | None = None
    close_code: int | None = None

    def sent_close(self, code: int) -> None:
        """The server sent a close frame with ``code`` (only its first counts)."""
        if self.close_sent is None:
            self.close_sent = code
            if self.close_code is None:
                self.close_code = code

    def received_close(self, code: int) -> None:
        """The peer's close frame carried ``code`` (0: none, as aiohttp reports it)."""
        if self.close_received is None:
            self.close_received = code or NO_STATUS_CODE
            if self.close_code is None:
                self.close_code = self.close_received


class Handle(Protocol):
    """What the application may do with an open connection (engine-specific)."""

    async def close(self, *, code: int, message: bytes) -> Any:
        """Close with ``code``; return once the closing handshake is over."""


class Sizes(Protocol):
    """The message-size histogram (echo.metrics): bucket ``bounds`` and ``sizes``
    (counts per bucket, last +Inf), which the fast path updates inline."""

    bounds: tuple[int, ...]
    sizes: list[int]

    def observe(self, size: int) -> None: ...


class App(Protocol):
    """What engines ask of the application."""

    @property
    def settings(self) -> ServerSettings: ...

    @property
    def sizes(self) -> Sizes | None:
        """The message-size histogram; None with METRICS=false."""

    def opened(self, handle: Handle, conn: Connection) -> None:
        """The connection is upgraded; ``handle`` closes it."""

    def ended(self, handle: Handle, conn: Connection) -> None:
        """The connection is over (called once, whatever ended it)."""

    def peer_error(self, conn: Connection, what: str) -> None:
        """The peer broke the protocol (the engine has closed with the code for it)."""

    def internal_error(self, conn: Connection, error: BaseException) -> None:
        """Our bug while serving ``conn``; the engine closes with 1011."""

    def describe(
        self, request: web.BaseRequest, conn: Connection, response: web.WebSocketResponse
    ) -> dict[str, Any]:
        """The connection info (echo.info) of an upgraded connection: the ``info``
        control's first message."""


class Engine(Protocol):
    """Moves frames for the connections the application admits."""

    name: str

    def install(self, app: web.Application) -> None:
        """Hook what the engine needs into ``app``'s life (before it is frozen)."""

    def runner(self, app: web.Application, **options: Any) -> web.AppRunner:
        """The runner every process serves ``app`` with (aiohttp keyword ``options``)."""

    def protocols(
        self, runner: web.BaseRunner, options: dict[str, Any]
    ) -> Callable[[], asyncio.Protocol]:
        """The connection protocol factory echo.listeners serves ``runner``'s app with
        (``options``: aiohttp's RequestHandler keyword arguments)."""

    def listening(self, runner: web.BaseRunner) -> None:
        """echo.listeners now serve ``runner`` (TCP_NODELAY is set on their sockets)."""

    async def accept(self, request: web.Request, conn: Connection, app: App) -> web.StreamResponse:
        """Upgrade ``request`` and serve it; return the response for aiohttp (the
        plain engine returns once the connection is over, the fast one may earlier)."""


ENGINE_KEY = web.AppKey("echo_engine", Engine)  # the app's engine (set by echo.server)


def plain_reason(request: web.Request, conn: Connection, settings: ServerSettings) -> str | None:
    """Why a connection must run on the plain path even under the fast engine, or None.

    The one place that decides what a connection asks for: test controls (the plain
    engine's loop carries them out; the application parsed them from the query string
    before, a check that costs connections without a query string nothing), compression
    offered (the compressor is shared with the replies), debug logging (every message
    is logged). (The fast engine also hands on what it technically cannot serve: a
    runner it cannot detach from, as adev's.)
    """
    if conn.controls is not None:
        return "controls"
    if (
        settings.compression
        and "permessage-deflate" in request.headers.get(hdrs.SEC_WEBSOCKET_EXTENSIONS, "").lower()
    ):
        return "compression"
    if log.isEnabledFor(logging.DEBUG):
        return "debug"
    return None


def subprotocols(request: web.BaseRequest, settings: ServerSettings) -> tuple[str, ...]:
    """The ``protocols`` both engines give aiohttp's WebSocketResponse: the one the
    upgrade selects under SUBPROTOCOLS (echo.protocol.select_subprotocol), or none."""
    offered = request.headers.get(hdrs.SEC_WEBSOCKET_PROTOCOL)
    return () if offered is None else select_subprotocol(offered, settings.subprotocols)


class EngineUnavailable(RuntimeError):
    """ENGINE=fast where the fast engine is not proven; ``str()`` is one line."""


def choose(wanted: str, warn: Callable[[str], None] | None = None) -> str:
    """The engine (``plain`` or ``fast``) for ENGINE=``wanted`` (auto, plain or fast).

    ``auto`` takes the fast engine where :func:`echo.engine.fast.unavailable` finds
    nothing wrong, else the plain one, calling ``warn`` with one line saying why.
    Raises EngineUnavailable for ``fast`` where it is not proven.
    """
    if wanted == "plain":
        return "plain"
    from echo.engine import fast

    reason = fast.unavailable()
    if reason is None:
        return "fast"
    if wanted == "fast":
        raise EngineUnavailable(f"ENGINE=fast is not available: {reason}")
    if warn is not None:
        warn(f"fast engine not used: {reason}; serving on the plain engine")
    return "plain"


def build(name: str, settings: ServerSettings) -> Engine:
    """The engine ``name`` (as :func:`choose` returns it) for one app."""
    from echo.engine.plain import PlainEngine

    plain = PlainEngine()
    if name == "plain":
        return plain
    from echo.engine.fast.engine import FastEngine

    return FastEngine(plain, settings.heartbeat_interval)
