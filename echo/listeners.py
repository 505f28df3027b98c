"""The listening sockets, and the gate every accepted connection passes through.

The server opens its own listeners with ``loop.create_server`` (public asyncio API)
instead of aiohttp's sites; the protocol factory wraps aiohttp's ``web.Server``, which
aiohttp documents as a protocol factory for ``loop.create_server``. That gives every
engine, on every aiohttp release the dependency range allows, the same bounds:

- **TLS** handshakes are bounded by HANDSHAKE_TIMEOUT (``ssl_handshake_timeout``; the
  default is 60 s) and TLS closing handshakes by :func:`tls_shutdown_timeout`
  (``ssl_shutdown_timeout``; the default is 30 s, during which a peer that never sends
  its close_notify would keep the connection's slot and descriptor).
- **The handshake deadline.** :class:`Gate` takes a deadline when a connection is
  accepted and gives it up once the first request's head is complete: a client that
  has not sent one within HANDSHAKE_TIMEOUT is cut off (and counted,
  :class:`ListenerEvents`). The deadlines of a listener's connections share one timer
  (:class:`Deadlines`).
  aiohttp's own keep-alive timer covers the time between later requests, but is armed
  at accept time only by some releases (3.14.5, not 3.14.0-3.14.4 nor 3.15).
- **The mask check and the position of the frames.** The gate feeds every chunk to an
  :class:`echo.framing.StreamTracker` before aiohttp sees it; an unmasked client frame
  stops the stream right before it (RFC 6455 5.1: the server must fail the
  connection). In its place aiohttp's parser gets :data:`FAIL_FRAME`, a frame it fails
  with 1002 itself, so the connection ends as aiohttp ends every protocol error, on
  either engine: close 1002, transport closed, nothing after it parsed. What follows an
  upgrade request is held until the engine has upgraded the connection
  (:meth:`Gate.upgraded`), then passed to its frame parser; a refused upgrade ends the
  connection, and what was held with it (aiohttp would parse it as HTTP; 3.14.0-3.14.3
  then fail to answer at all).
- **The size limit at the frame header.** A data frame that would take its message
  past MAX_MESSAGE_SIZE stops the stream at its header (none of it is buffered), and
  the engine is told to fail the connection with 1009 (:meth:`Gate.upgraded`).

The gate stays in place for the connection's life: one Python call per chunk received,
about what the fast path's own mask check cost before it moved here.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import socket
import ssl
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol, cast

from aiohttp import web

from echo.config import ServerSettings
from echo.engine import ENGINE_KEY
from echo.framing import FRAMES, STOPPED, StreamTracker
from echo.logs import event
from echo.tls import server_context, watch_client_certificates

log = logging.getLogger("echo.server")

BACKLOG = 1024  # pending connections the kernel queues for us
CLOSE_TIMEOUT = 5.0  # how long to wait for the peer's close (WebSocket or TLS) after ours
HOLD_LIMIT = 65_536  # bytes held before the upgrade is decided, before reading pauses
# A fragmented ping (FIN clear on a control frame), masked, empty: every aiohttp release
# fails it with 1002 ("fragmented control frame"; tests/test_engine_contract.py).
FAIL_FRAME = b"\x09\x80\x00\x00\x00\x00"
UNMASKED = "unmasked client frame"


class ListenError(RuntimeError):
    """The listening socket could not be opened (address in use, no permission)."""


class ListenerEvents(Protocol):
    """What the listeners report to the application."""

    def handshake_timeout(self) -> None:
        """A connection was cut off before it sent a complete request."""

    def client_certificate_refused(self, reason: str) -> None:
        """mTLS: a client's TLS handshake failed on its certificate (none, or one that
        does not verify against TLS_CLIENT_CA_FILE); ``reason`` is OpenSSL's."""


EVENTS_KEY = web.AppKey("echo_listener_events", ListenerEvents)  # set by echo.server


def tls_shutdown_timeout(settings: ServerSettings) -> float:
    """How long a TLS closing handshake may take: CLOSE_TIMEOUT, or HANDSHAKE_TIMEOUT
    if that is shorter (the opening handshake's bound)."""
    return min(CLOSE_TIMEOUT, settings.handshake_timeout)


def handler_options(settings: ServerSettings) -> dict[str, Any]:
    """Keyword arguments for aiohttp's connection protocol (``web.RequestHandler``):
    :func:`runner_options` without what only the runner takes."""
    options = runner_options(settings)
    del options["shutdown_timeout"]
    return options


def runner_options(settings: ServerSettings) -> dict[str, Any]:
    """Keyword arguments for aiohttp's runner that carry our settings to the HTTP layer.

    The keep-alive timeout is HANDSHAKE_TIMEOUT: an idle HTTP connection between two
    requests is closed after it (the gate bounds the time before the first). TCP
    keep-alive (SO_KEEPALIVE, first probe after two idle hours by default) is left
    off: the handshake timeout bounds idle HTTP connections and the heartbeat idle
    WebSockets, much sooner; setting it cost a system call per connection.
    """
    return {
        # The HTTP echo shows bodies as received: a gzip body as its gzip bytes.
        "auto_decompress": False,
        "access_log": None,
        "tcp_keepalive": False,
        "keepalive_timeout": settings.handshake_timeout,
        "shutdown_timeout": settings.shutdown_timeout,
    }


class Deadlines:
    """The handshake deadlines of one listener's connections, on one timer.

    Every connection gets the same timeout, so deadlines fall due in the order the
    connections came: a queue whose first entry is the next due. An entry is a
    ``[deadline, gate]`` list; a gate that no longer needs its deadline (head complete,
    connection lost) clears its gate, and cleared entries are dropped whenever the
    timer fires (so at most a timeout's worth of them waits). A timer per connection,
    armed and cancelled, cost about 2 us, more than 1% of a handshake.
    """

    __slots__ = ("_entries", "_loop", "_timeout", "_timer", "loop")

    def __init__(self, loop: asyncio.AbstractEventLoop, timeout: float) -> None:
        self.loop = loop
        self._loop = loop
        self._timeout = timeout
        self._entries: deque[list[Any]] = deque()
        self._timer: asyncio.TimerHandle | None = None

    def add(self, gate: Gate) -> list[Any]:
        """``gate``'s deadline, from now: its entry, whose gate it clears when done."""
        deadline = self._loop.time() + self._timeout
        entry = [deadline, gate]
        self._entries.append(entry)
        if self._timer is None:
            self._timer = self._loop.call_at(deadline, self._due)
        return entry

    def _due(self) -> None:
        self._timer = None
        entries = self._entries
        now = self._loop.time()
        while entries:
            deadline, gate = entries[0]
            if gate is not None and deadline > now:
                self._timer = self._loop.call_at(deadline, self._due)
                return
            entries.popleft()
            if gate is not None:
                gate.expired()

    def passed(self, entry: list[Any]) -> bool:
        """Whether the deadline of ``entry`` (from :meth:`add`) has passed."""
        return bool(self._loop.time() >= entry[0])

    def __len__(self) -> int:
        return len(self._entries)


class Gate(asyncio.Protocol):
    """Stands between a connection's transport and aiohttp's connection protocol.

    It passes everything on unchanged (writes do not go through it: aiohttp writes to
    the transport), but for the bytes after an unmasked frame; see the module.
    ``tracker.seen`` is set by every chunk received.
    """

    __slots__ = (
        "_closer",
        "_deadline",
        "_deadlines",
        "_events",
        "_inner",
        "_loop",
        "_lost",
        "_open",
        "_paused",
        "_stall",
        "_too_big",
        "failure",
        "tracker",
        "transport",
    )

    def __init__(
        self,
        protocols: Callable[[], asyncio.Protocol],
        deadlines: Deadlines,
        events: ListenerEvents,
        limit: int,
        open_gates: OpenGates | None = None,
    ) -> None:
        self._inner = protocols()  # the connection protocol it stands in front of
        self._open = open_gates
        self._loop = deadlines.loop
        self._deadlines = deadlines
        self._events = events
        self._deadline: list[Any] | None = None  # its entry in deadlines, until done
        self._closer: asyncio.TimerHandle | None = None  # see closing()
        self._stall: asyncio.TimerHandle | None = None  # see pause_writing()
        self._lost = False
        self._too_big: Callable[[], None] | None = None
        self.transport: asyncio.Transport | None = None
        self._paused = False  # reading paused while too much is held
        self.tracker = StreamTracker(limit, True)  # lazy (a keyword costs a dict per call)
        self.failure: str | None = None  # why FAIL_FRAME was passed on

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # a Transport: a stream's
        if self._open is not None:
            self._open.gates.add(self)
        self._deadline = self._deadlines.add(self)
        self._inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        tracker = self.tracker
        if tracker.phase == FRAMES and not tracker.holding:  # upgraded: the hot path
            passed = tracker.frames(data)
            if passed is data:  # all of it passes (its deadline went with its head)
                self._inner.data_received(data)
                return
        else:
            passed = tracker.feed(data)
        if self._deadline is not None and tracker.requests:
            self._deadline[1] = None
            self._deadline = None
        inner = self._inner
        if isinstance(passed, bytes):  # all of it (a list when anything is held or dropped)
            inner.data_received(passed)
            return
        for piece in passed:
            if piece:
                inner.data_received(piece)
        if tracker.holding:  # frames before the upgrade: acted on in upgraded()
            if tracker.held_bytes > HOLD_LIMIT and not self._paused:
                self._paused = True
                cast(asyncio.Transport, self.transport).pause_reading()
            return
        if tracker.violation and self.failure is None:
            self.failure = UNMASKED
            inner.data_received(FAIL_FRAME)
        if tracker.too_big and self._too_big is not None:
            too_big, self._too_big = self._too_big, None
            too_big()

    def eof_received(self) -> bool | None:
        return self._inner.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self._too_big = None
        self._lost = True
        if self._closer is not None:
            self._closer.cancel()
            self._closer = None
        if self._stall is not None:
            self._stall.cancel()
            self._stall = None
        if self._open is not None:
            self._open.discard(self)
        entry = self._deadline
        if entry is not None:
            entry[1] = None
            self._deadline = None
            if self._deadlines.passed(entry) and not self.tracker.requests:
                self._events.handshake_timeout()  # aiohttp's own timer was as quick
        self._inner.connection_lost(exc)

    def pause_writing(self) -> None:
        """The peer is not reading what we write: while that lasts, look every
        CLOSE_TIMEOUT whether the connection was closed meanwhile (by aiohttp itself,
        say its heartbeat), and bound its end as :meth:`closing` does."""
        if self._stall is None and self._closer is None and not self._lost:
            self._stall = self._loop.call_later(CLOSE_TIMEOUT, self._stalled)
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        if self._stall is not None:
            self._stall.cancel()
            self._stall = None
        self._inner.resume_writing()

    def closing(self) -> None:
        """The server has begun to close the connection (its close frame is sent or on
        its way, or its transport is closing). A transport closes only once what is
        buffered has gone out, and waiting for a peer that reads nothing (for our close
        frame, or its own) has no end: the connection is aborted if it is not over
        within CLOSE_TIMEOUT."""
        if self._closer is None and self.transport is not None and not self._lost:
            if self._stall is not None:
                self._stall.cancel()
                self._stall = None
            self._closer = self._loop.call_later(CLOSE_TIMEOUT, self._abort)

    def _stalled(self) -> None:
        self._stall = None
        transport = self.transport
        if transport is None:
            return
        if transport.is_closing():
            self.closing()
        else:
            self._stall = self._loop.call_later(CLOSE_TIMEOUT, self._stalled)

    def _abort(self) -> None:
        self._closer = None
        if self.transport is not None:
            self.transport.abort()

    def expired(self) -> None:
        """Its deadline has come (:class:`Deadlines`) with no complete head."""
        self._deadline = None
        if not self.tracker.requests and self.transport is not None:
            self._events.handshake_timeout()
            self.transport.abort()  # no TLS close_notify for a peer that sent nothing usable

    def upgraded(self, too_big: Callable[[], None]) -> None:
        """The engine upgraded the connection (its frame parser is set); ``too_big`` is
        to fail it with 1009 once a message goes past the limit (at once if one did
        already). Where the tracker cannot tell where its frames begin (echo.framing),
        they cannot be checked: the connection is failed with 1002 at once."""
        tracker = self.tracker
        inner = self._inner
        held = tracker.release()  # what came with or after the upgrade request
        if tracker.phase != FRAMES and tracker.phase != STOPPED:  # not tracker.in_frames
            self.failure = "frames not locatable in the stream"
            tracker.phase = STOPPED
            inner.data_received(FAIL_FRAME)
            return
        for piece in held:
            if piece:
                inner.data_received(piece)
        if self._paused:
            self._paused = False
            cast(asyncio.Transport, self.transport).resume_reading()
        if tracker.phase == STOPPED and not tracker.too_big:  # tracker.violation
            self.failure = UNMASKED
            inner.data_received(FAIL_FRAME)
            return
        if tracker.too_big:
            too_big()
        else:
            self._too_big = too_big


def gate_of(transport: asyncio.BaseTransport | None) -> Gate | None:
    """The gate in front of a connection, if it came through our listeners."""
    if transport is None:
        return None
    protocol = transport.get_protocol()
    return protocol if isinstance(protocol, Gate) else None


def closing(transport: asyncio.BaseTransport | None) -> None:
    """The server begins to close this connection: bound its end (:meth:`Gate.closing`).
    Connections not served through our listeners (adev's) have no gate and no bound."""
    gate = gate_of(transport)
    if gate is not None:
        gate.closing()


class OpenGates:
    """The gates of the connections a process's listeners accepted that are not over."""

    def __init__(self) -> None:
        self.gates: set[Gate] = set()
        # Set once there are none, while wait_none() waits (an Event set and cleared
        # as the set empties and fills was two Python calls per connection when
        # connections come one at a time).
        self._none: asyncio.Future[None] | None = None

    def discard(self, gate: Gate) -> None:
        gates = self.gates
        gates.discard(gate)
        if not gates and self._none is not None and not self._none.done():
            self._none.set_result(None)

    async def wait_none(self) -> None:
        """Return once there are no gates."""
        if self.gates:
            self._none = asyncio.get_running_loop().create_future()
            try:
                await self._none
            finally:
                self._none = None


class Listeners:
    """The listening servers of one process; :meth:`close` stops accepting, ``gates``
    are the connections they accepted that are not over yet."""

    def __init__(self, servers: list[asyncio.Server], gates: OpenGates | None = None) -> None:
        self.servers = servers
        self.open = OpenGates() if gates is None else gates

    @property
    def sockets(self) -> list[socket.socket]:
        return [sock for server in self.servers for sock in server.sockets]

    @property
    def addresses(self) -> list[Any]:
        return [sock.getsockname() for sock in self.sockets]

    def close(self) -> None:
        """Stop accepting; the open connections go on (the runner's cleanup ends them)."""
        for server in self.servers:
            server.close()

    async def wait_closed(self, grace: float) -> None:
        """After the runner's cleanup: give the connections still closing (a TLS
        close_notify exchange, a close the gate bounds) up to ``grace`` seconds to
        end, then abort them, so that none is left open when the event loop ends."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(grace):
                await self.open.wait_none()
        for gate in list(self.open.gates):
            if gate.transport is not None:
                gate.transport.abort()
        await asyncio.sleep(0)  # the aborted transports' connection_lost run now


async def listen(
    protocols: Callable[[], asyncio.Protocol],
    settings: ServerSettings,
    events: ListenerEvents,
    sockets: list[socket.socket] | None = None,
) -> Listeners:
    """Serve the connections ``protocols`` makes (aiohttp's connection protocol for a
    runner's app, as the engine wants it) on HOST:PORT, or on the given listening
    ``sockets`` (inherited from gunicorn's master), TLS if configured, each behind a
    Gate. Raises ListenError."""
    loop = asyncio.get_running_loop()
    deadlines = Deadlines(loop, settings.handshake_timeout)
    limit = settings.max_message_size
    gates = OpenGates()

    gate = functools.partial(Gate, protocols, deadlines, events, limit, gates)

    options: dict[str, Any] = {"backlog": BACKLOG}
    if settings.tls:
        context: ssl.SSLContext = server_context(
            settings.tls_cert_file, settings.tls_key_file, settings.tls_client_ca_file
        )
        if settings.tls_client_ca_file:
            watch_client_certificates(context, events.client_certificate_refused)
        options.update(
            ssl=context,
            ssl_handshake_timeout=settings.handshake_timeout,
            ssl_shutdown_timeout=tls_shutdown_timeout(settings),
        )
    servers: list[asyncio.Server] = []
    try:
        if sockets is None:
            servers.append(await loop.create_server(gate, settings.host, settings.port, **options))
        else:
            for sock in sockets:
                servers.append(await loop.create_server(gate, sock=sock, **options))
    except OSError as error:
        for opened in servers:
            opened.close()
        where = f"{settings.host}:{settings.port}"
        raise ListenError(f"cannot listen on {where}: {error.strerror or error}") from None
    listeners = Listeners(servers, gates)
    # Linux copies TCP_NODELAY from a listening socket to the sockets it accepts.
    for sock in listeners.sockets:
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return listeners


async def start(
    app: web.Application, settings: ServerSettings, sockets: list[socket.socket] | None = None
) -> tuple[web.AppRunner, Listeners]:
    """Set up ``app`` on its engine's runner and serve it on our listeners (see
    :func:`listen`); the caller closes the listeners, then cleans the runner up."""
    engine = app[ENGINE_KEY]
    runner = engine.runner(app, handle_signals=False, **runner_options(settings))
    await runner.setup()
    try:
        protocols = engine.protocols(runner, handler_options(settings))
        listeners = await listen(protocols, settings, app[EVENTS_KEY], sockets)
    except BaseException:
        await runner.cleanup()
        raise
    engine.listening(runner)
    return runner, listeners


async def stop_serving(
    app: web.Application,
    runner: web.BaseRunner,
    listeners: Listeners,
    settings: ServerSettings,
    *,
    graceful: bool,
) -> None:
    """Stop accepting, close the WebSockets with 1001 (``graceful``), clean the runner
    up, and give the connections the rest of SHUTDOWN_TIMEOUT to end (a TLS
    close_notify exchange) before they are aborted: none is left open when the event
    loop ends.

    The WebSockets are closed before the runner's cleanup: its first step (aiohttp's
    ``pre_shutdown``) has each connection handler still attached drop whatever
    arrives, the peers' answers to our 1001 included, which left the plain engine
    waiting CLOSE_TIMEOUT for each. (The cleanup sends ``on_shutdown`` again, and the
    server's hook finds nothing left to close.)
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + (settings.shutdown_timeout if graceful else 0)
    listeners.close()
    try:
        if graceful:
            await app.shutdown()  # the on_shutdown hooks: echo.server closes with 1001
    finally:
        await runner.cleanup()
        await listeners.wait_closed(max(0.0, deadline - loop.time()))


def log_listening(settings: ServerSettings, host: str, port: int) -> None:
    """The "listening on" line, once per bound address (tests and people read the port),
    naming the engine (``settings.engine``, resolved by echo.engine.choose).

    Its URL is one a person can open: ``localhost`` for the wildcard addresses
    (0.0.0.0, ::), which no browser can connect to.
    """
    everywhere = host in ("0.0.0.0", "::")
    shown = "localhost" if everywhere else f"[{host}]" if ":" in host else host
    http, ws = ("https", "wss") if settings.tls else ("http", "ws")
    log.info(
        "listening on %s://%s:%d/ (WebSocket %s://%s:%d/, %s engine)%s",
        http,
        shown,
        port,
        ws,
        shown,
        port,
        settings.engine,
        f"; all interfaces ({host})" if everywhere else "",
        extra=event(
            "listening",
            url=f"{http}://{shown}:{port}/",
            tls=settings.tls,
            address=host,
            engine=settings.engine,
        ),
    )


def announce(settings: ServerSettings, addresses: list[tuple[str, int]]) -> None:
    """Once listening: the settings line, then a "listening on" line per address.

    Not before: a server that cannot listen says only that, in one line.
    """
    log_settings(settings)
    for host, port in addresses:
        log_listening(settings, host, port)


def log_settings(settings: ServerSettings, omit: tuple[str, ...] = ()) -> None:
    """One line with every setting in effect (secrets hidden; file names, not contents)."""
    pairs = [(name, value) for name, value in settings.effective() if name not in omit]
    log.info(
        "settings %s",
        " ".join(f"{name}={value}" for name, value in pairs),
        extra=event("settings", **dict(pairs)),
    )
