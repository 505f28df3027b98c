"""The WebSocket echo server: admission (origin, limits), the echo loop, health, shutdown.

``create_app(settings)`` builds the :class:`aiohttp.web.Application`; ``main()`` is the
``echo-server`` console script, which reads the settings from the environment and
serves until SIGTERM or SIGINT.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import signal
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from aiohttp import WSMsgType, hdrs, web

from echo import admission, protocol
from echo.admission import OriginPolicy
from echo.cli import command_line
from echo.config import (
    SERVER_VARIABLES,
    ConfigError,
    ServerSettings,
    env_file_warnings,
    load_environment,
)
from echo.controls import ControlError, ControlRules, Controls, has_query
from echo.engine.fast.fastpath import EchoResponse
from echo.engine.fast.heartbeat import Heartbeat
from echo.engine.fast.runner import EchoRunner, nodelay_on_listeners
from echo.engine.fast.sites import TLSSite
from echo.eventloop import loop_factory
from echo.handshake import key_valid, without_invalid_offers
from echo.httpecho import add_http_echo, expect_continue, is_upgrade, wants_json
from echo.info import InfoBuilder, Instance
from echo.limits import ConnectionLimiter, Refusal
from echo.logs import clip, configure_logging, event, install_filters
from echo.metrics import Metrics, add_metrics
from echo.origins import Origin, own_origin
from echo.page import PAGE_KEY, PageOptions, add_page
from echo.proxies import TrustedProxies
from echo.readiness import Readiness
from echo.refusals import RefusalLog
from echo.text import preview
from echo.tls import server_context

log = logging.getLogger("echo.server")

RETRY_AFTER_SECONDS = 1
CLOSE_TIMEOUT = 5.0  # how long to wait for the peer's close frame after sending ours
SHUTDOWN_MESSAGE = b"server shutting down"
BAD_HANDSHAKE = "invalid WebSocket handshake\n"
BACKLOG = 1024  # pending connections the kernel queues for us

_REFUSAL_STATUS: dict[Refusal, tuple[int, str]] = {
    Refusal.ORIGIN: (403, "origin not allowed"),
    Refusal.LIMIT: (503, "too many connections"),
    Refusal.PER_IP_LIMIT: (429, "too many connections from your address"),
    Refusal.DUPLICATE_ORIGIN: (400, "bad request"),
    Refusal.DRAINING: (503, SHUTDOWN_MESSAGE.decode()),
    Refusal.CONTROLS: (400, "bad test controls"),
    Refusal.STATUS_CONTROL: (503, "refused as the status control asked"),  # its status
}
_LIMIT_DETAIL = {Refusal.LIMIT: "MAX_CONNECTIONS", Refusal.PER_IP_LIMIT: "MAX_CONNECTIONS_PER_IP"}


@dataclass(slots=True)
class Connection:
    """Book-keeping for one open WebSocket, reported when it closes.

    ``messages_*`` and ``bytes_*`` count data messages of both types; the ``binary_*``
    counters are kept only with metrics on (echo.metrics reports text as the difference).
    """

    id: str
    remote: str
    opened: float = field(default_factory=time.monotonic)
    messages_in: int = 0
    messages_out: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    binary_in: int = 0
    binary_bytes_in: int = 0
    binary_out: int = 0
    binary_bytes_out: int = 0
    closer: asyncio.Task[bool] | None = None
    serving: asyncio.Future[None] | None = None  # a detached connection's serve task
    # Set while detached (EchoResponse.detach): what wake() and ended() act on. Two
    # bound methods cost a third of two functools.partial objects per connection.
    server: EchoServer | None = None
    ws: EchoResponse | None = None

    def wake(self) -> None:
        if self.server is not None and self.ws is not None:
            self.server._wake(self.ws, self)

    def ended(self) -> None:
        if self.server is not None and self.ws is not None:
            self.server._ended(self.ws, self)


class EchoServer:
    """Request handlers and the state they share: settings, limiter, open connections."""

    def __init__(self, settings: ServerSettings) -> None:
        self.settings = settings
        self.limiter = ConnectionLimiter(settings.max_connections, settings.max_connections_per_ip)
        self.connections: dict[web.WebSocketResponse, Connection] = {}
        self.started = time.monotonic()
        self._ids = itertools.count(1)
        # Workers share one log: their connection ids carry the process id (w1234-c1).
        self._id_prefix = "c" if settings.workers == 1 else f"w{os.getpid()}-c"
        self.proxies = TrustedProxies(settings.trusted_proxies)
        self.origins = OriginPolicy(settings)
        self.heartbeat = Heartbeat(settings.heartbeat_interval)
        self.refusals = RefusalLog(log)  # one line each up to a budget per second, then counts
        self.readiness = Readiness()
        self.metrics = (
            Metrics(self.connections.values, settings.max_message_size)
            if settings.metrics
            else None
        )
        self.info = InfoBuilder(
            Instance.here(settings.instance_name, settings.workers), self.client_address
        )
        self.control_rules = ControlRules(
            settings.controls, settings.max_message_size, settings.push_max_rate
        )

    # -- HTTP routes ------------------------------------------------------------------

    async def root(self, request: web.Request) -> web.StreamResponse:
        """``GET /``: the WebSocket echo, or for a plain GET the browser console (the
        connection info when JSON is asked for)."""
        if is_upgrade(request):  # a GET: HEAD never upgrades
            return await self.websocket(request)
        if wants_json(request):
            return web.json_response(
                self.info.describe(request), headers={hdrs.CACHE_CONTROL: "no-store"}
            )
        return request.app[PAGE_KEY].index(request)

    async def websocket(self, request: web.Request) -> web.StreamResponse:
        """A WebSocket upgrade, on any path.

        Admission (origin, test controls, limits), upgrade, then (under
        echo.engine.fast.runner's protocol) the connection is detached and this
        returns: the fast path echoes, ``_wake`` serves what it cannot, ``_ended``
        books the end (echo.engine.fast.fastpath). Under aiohttp's own protocol
        (adev's dev server) it serves until the connection ends.
        """
        origins = request.headers.getall(hdrs.ORIGIN, ())
        origin = origins[0] if origins else None
        if len(origins) > 1:
            return self.refuse(request, Refusal.DUPLICATE_ORIGIN, origin, admission.DUPLICATE)
        why = self.origins.refusal(origin, lambda: self._page_origin(request))
        if why is not None:
            return self.refuse(request, Refusal.ORIGIN, origin, why)
        if self.readiness.draining:
            return self.refuse(request, Refusal.DRAINING, origin, "the server is shutting down")
        controls: Controls | None = None
        query = request.rel_url.raw_query_string
        if query and has_query(query):  # all that controls cost a connection without them
            try:
                controls = self.control_rules.parse(query)
            except ControlError as error:  # the one-line reason (peer text escaped)
                return self.refuse(request, Refusal.CONTROLS, origin, str(error))
            if controls is not None and controls.status is not None:
                return self.refuse(
                    request,
                    Refusal.STATUS_CONTROL,
                    origin,
                    f"status={controls.status}",
                    status=controls.status,
                    retry_after=controls.retry_after,
                )
        if not key_valid(request.headers.get(hdrs.SEC_WEBSOCKET_KEY)):
            raise web.HTTPBadRequest(text=BAD_HANDSHAKE)  # before aiohttp trips on it
        request = without_invalid_offers(request)
        remote = self.client_address(request)
        refusal = self.limiter.try_acquire(remote)
        if refusal is not None:
            return self.refuse(request, refusal, origin, _LIMIT_DETAIL[refusal] + " reached")
        try:
            ws = EchoResponse(
                protocols=protocol.select_subprotocol(
                    request.headers.get(hdrs.SEC_WEBSOCKET_PROTOCOL), self.settings.subprotocols
                ),
                autoping=True,
                autoclose=False,
                heartbeat=self.heartbeat,
                compress=self.settings.compression,
                # aiohttp refuses a plain frame of exactly max_msg_size bytes but
                # accepts one byte more when decompressing; serve() checks the rest.
                max_msg_size=self.settings.max_message_size + 1,
                decode_text=False,
                timeout=CLOSE_TIMEOUT,
                metrics=self.metrics,
            )
            await ws.prepare(request)
        except web.HTTPBadRequest:
            self.limiter.release(remote)
            # aiohttp's text quotes the offending header (Sec-WebSocket-Key, -Version...).
            raise web.HTTPBadRequest(text=BAD_HANDSHAKE) from None
        except BaseException:
            self.limiter.release(remote)
            raise
        conn = Connection(id=f"{self._id_prefix}{next(self._ids)}", remote=remote)
        self.connections[ws] = conn
        if self.metrics is not None:
            self.metrics.connections_total += 1
        if log.isEnabledFor(logging.INFO):  # spare the preview when not logged
            log.info(
                "open id=%s remote=%s origin=%s",
                conn.id,
                remote,
                "-" if origin is None else preview(origin),
                extra=event("open", conn=conn.id, remote=remote, origin=clip(origin)),
            )
        if not log.isEnabledFor(logging.DEBUG):  # at debug, serve() logs every message
            ws.start_echo(conn, self.settings.max_message_size)
        if ws.detachable:
            conn.server, conn.ws = self, ws
            ws.detach(wake=conn.wake, ended=conn.ended)
            return ws
        # aiohttp's own connection protocol (adev's dev server): serve until the end.
        try:
            await self._serve_guarded(ws, conn, until_idle=False)
        finally:
            self._ended(ws, conn)
        return ws

    async def healthz(self, request: web.Request) -> web.Response:
        health: dict[str, object] = {
            "status": "ok",
            "connections": self.limiter.open,
            "max_connections": self.settings.max_connections,
            "uptime_seconds": round(time.monotonic() - self.started, 3),
            # With WORKERS > 1 every figure above is this process's own.
            "pid": os.getpid(),
            "workers": self.settings.workers,
        }
        if self.settings.instance_name:
            health["instance"] = self.settings.instance_name
        return web.json_response(health, headers={hdrs.CACHE_CONTROL: "no-store"})

    # -- admission --------------------------------------------------------------------

    def client_address(self, request: web.BaseRequest) -> str:
        """The peer, or the client a trusted proxy forwarded for (TRUSTED_PROXIES)."""
        if not self.proxies.networks:  # no proxy is trusted: the peer, without a lookup
            return request.remote or "unknown"
        forwarded = request.headers.getall(hdrs.X_FORWARDED_FOR, [])
        return self.proxies.client_address(request.remote, forwarded) or "unknown"

    def _page_origin(self, request: web.Request) -> Origin | None:
        """This server's own origin as the client sees it (behind a trusted proxy too)."""
        host = request.headers.get(hdrs.HOST)
        if not host:
            return None
        forwarded = request.headers.getall(hdrs.X_FORWARDED_PROTO, [])
        return own_origin(self.proxies.scheme(request.remote, request.scheme, forwarded), host)

    def refuse(
        self,
        request: web.Request,
        reason: Refusal,
        origin: str | None,
        detail: str,
        *,
        status: int | None = None,
        retry_after: int | None = None,
    ) -> web.Response:
        """The refusal's response, whose body says why (``detail``: our words, or peer
        text escaped and cut). ``status`` and ``retry_after`` replace the reason's own
        (the status test control)."""
        default_status, text = _REFUSAL_STATUS[reason]
        status = default_status if status is None else status
        if self.metrics is not None:
            self.metrics.refusal(reason.value)
        self.refusals.refused(self.client_address(request), origin, reason.value, detail)
        retry = reason in _LIMIT_DETAIL or reason is Refusal.DRAINING
        headers = {hdrs.RETRY_AFTER: str(RETRY_AFTER_SECONDS)} if retry else {}
        if retry_after is not None:
            headers[hdrs.RETRY_AFTER] = str(retry_after)
        explained = status in (400, 403) and reason is not Refusal.STATUS_CONTROL
        body = f"{text}: {detail}\n" if explained else text + "\n"
        return web.Response(status=status, text=body, headers=headers)

    def _wake(self, ws: EchoResponse, conn: Connection) -> None:
        """A detached connection's queue holds a message or error: serve it in a task."""
        if conn.serving is None and not ws.closed:
            conn.serving = asyncio.ensure_future(self._serve_guarded(ws, conn, until_idle=True))

    async def _serve_guarded(
        self, ws: web.WebSocketResponse, conn: Connection, *, until_idle: bool
    ) -> None:
        try:
            await self.serve(ws, conn, until_idle=until_idle)
        except ConnectionError:
            pass  # the peer vanished mid-send: an abnormal closure, not our fault
        except Exception:
            log.exception(
                "error id=%s; closing with 1011",
                conn.id,
                extra=event("error", conn=conn.id, remote=conn.remote),
            )
            await ws.close(code=protocol.INTERNAL_ERROR, message=b"internal error")
        finally:
            conn.serving = None

    def _ended(self, ws: EchoResponse, conn: Connection) -> None:
        """The connection is over: give back its slot, count it, log it."""
        ws.release()
        conn.server = conn.ws = None
        del self.connections[ws]
        if self.metrics is not None:
            self.metrics.connection_closed(conn)
        self._log_closed(ws, conn)
        self.limiter.release(conn.remote)

    async def serve(
        self, ws: web.WebSocketResponse, conn: Connection, *, until_idle: bool = False
    ) -> None:
        """Echo every data message back as it came, until the connection ends, or with
        ``until_idle`` until nothing waits in the queue (a detached connection).

        Plain messages are echoed by the parser's queue (echo.engine.fast.fastpath) as they
        arrive; this loop handles what that path hands on, and every message at debug
        level, where each is logged.
        """
        receive = ws.receive
        send_frame = ws.send_frame
        debug = log.isEnabledFor(logging.DEBUG)
        limit = self.settings.max_message_size
        metrics = self.metrics
        binary = WSMsgType.BINARY
        while True:
            if until_idle and isinstance(ws, EchoResponse) and not ws.pending:
                return
            msg = await receive()
            kind = msg.type
            if kind is WSMsgType.TEXT or kind is WSMsgType.BINARY:
                data: bytes = msg.data
                if kind is WSMsgType.TEXT and not protocol.is_utf8(data):
                    await ws.close(code=protocol.INVALID_PAYLOAD, message=b"invalid UTF-8")
                    return
                if len(data) > limit:
                    log.info(
                        "protocol error id=%s: message of %d bytes over limit", conn.id, len(data)
                    )
                    await ws.close(code=protocol.MESSAGE_TOO_BIG, message=b"message too big")
                    return
                conn.messages_in += 1
                conn.bytes_in += len(data)
                if metrics is not None:
                    metrics.observe(len(data))
                    if kind is binary:
                        conn.binary_in += 1
                        conn.binary_bytes_in += len(data)
                if debug:
                    log.debug(
                        "message id=%s %s %d bytes %s",
                        conn.id,
                        kind.name.lower(),
                        len(data),
                        preview(data, 60),
                    )
                await send_frame(data, kind)
                conn.messages_out += 1
                conn.bytes_out += len(data)
                if metrics is not None and kind is binary:
                    conn.binary_out += 1
                    conn.binary_bytes_out += len(data)
            elif kind is WSMsgType.CLOSE:
                # The peer closes its end next: no point waiting for our frame to drain
                # (aiohttp's own autoclose does the same).
                await ws.close(code=protocol.close_reply(msg.data), drain=False)
                return
            elif kind is WSMsgType.ERROR:
                # aiohttp has already sent the matching close code (1002, 1007, 1009).
                log.info("protocol error id=%s: %s", conn.id, preview(str(msg.data)))
                return
            else:  # CLOSING (we are shutting down) or CLOSED (the transport went away)
                if conn.closer is not None:
                    await asyncio.shield(conn.closer)
                return

    def _log_closed(self, ws: web.WebSocketResponse, conn: Connection) -> None:
        if not log.isEnabledFor(logging.INFO):  # spare building the event per connection
            return
        code = ws.close_code if ws.close_code is not None else protocol.ABNORMAL_CLOSURE
        duration = time.monotonic() - conn.opened
        log.info(
            "close id=%s code=%s duration=%.3fs in=%d/%dB out=%d/%dB",
            conn.id,
            code,
            duration,
            conn.messages_in,
            conn.bytes_in,
            conn.messages_out,
            conn.bytes_out,
            extra=event(
                "close",
                conn=conn.id,
                remote=conn.remote,
                code=code,
                duration=round(duration, 3),
                messages_in=conn.messages_in,
                bytes_in=conn.bytes_in,
                messages_out=conn.messages_out,
                bytes_out=conn.bytes_out,
            ),
        )

    # -- lifecycle --------------------------------------------------------------------

    async def beating(self, _app: web.Application) -> AsyncIterator[None]:
        """Cleanup context: the shared heartbeat timer runs while the app serves; at the
        end, the refusals counted but not yet logged are."""
        self.heartbeat.start()
        yield
        self.heartbeat.stop()
        self.refusals.flush()

    async def shutdown(self, _app: web.Application | None = None) -> None:
        """Close every open WebSocket with 1001, waiting at most SHUTDOWN_TIMEOUT."""
        self.readiness.draining = True  # not ready from here on, drained or not
        if not self.connections:
            return
        count = len(self.connections)
        log.info("shutdown: closing %d connection(s)", count, extra=event("shutdown", open=count))
        closers = []
        for ws, conn in list(self.connections.items()):
            conn.closer = asyncio.ensure_future(
                ws.close(code=protocol.GOING_AWAY, message=SHUTDOWN_MESSAGE)
            )
            closers.append(conn.closer)
        _done, pending = await asyncio.wait(closers, timeout=self.settings.shutdown_timeout)
        for task in pending:
            task.cancel()  # aiohttp aborts the transport when its close is cancelled
        if pending:  # the peers' doing (they did not answer), so not a warning
            log.info(
                "shutdown: %d connection(s) did not close in time",
                len(pending),
                extra=event("shutdown_timeout", unclosed=len(pending)),
            )


class ListenError(RuntimeError):
    """The listening socket could not be opened (address in use, no permission)."""


SERVER_KEY = web.AppKey("echo_server", EchoServer)
SERVER_SOFTWARE = "echo"  # the Server header of every response: no versions


async def hide_versions(_request: web.Request, response: web.StreamResponse) -> None:
    """``on_response_prepare``: name no Python or aiohttp version in ``Server``.

    aiohttp sets ``Server: Python/3.x aiohttp/3.y`` unless the header is already there
    when the response is prepared, which is when this runs. A 101 is the engine's: the
    fast path's carries only the handshake's headers.
    """
    if response.status != 101:
        response.headers[hdrs.SERVER] = SERVER_SOFTWARE


def create_app(settings: ServerSettings, page: PageOptions | None = None) -> web.Application:
    """Build the application for ``settings``; the EchoServer is at ``app[SERVER_KEY]``.

    ``page`` says how the browser console at ``GET /`` is served (see echo.page).
    """
    install_filters()  # nothing a peer does is logged above info, whoever set up logging
    server = EchoServer(settings)
    app = web.Application(client_max_size=settings.max_message_size)
    app[SERVER_KEY] = server
    app.router.add_get("/", server.root, expect_handler=expect_continue)
    add_page(app, page)
    app.router.add_get("/healthz", server.healthz, expect_handler=expect_continue)
    app.router.add_get("/readyz", server.readiness.readyz, expect_handler=expect_continue)
    if server.metrics is not None:
        add_metrics(app, server.metrics)
    add_http_echo(  # keep it last
        app,
        settings.max_message_size,
        settings.handshake_timeout,
        info=server.info,
        websocket=server.websocket,
    )
    app.cleanup_ctx.append(server.beating)
    app.on_shutdown.append(server.shutdown)
    app.on_response_prepare.append(hide_versions)
    return app


def dev_app() -> web.Application:
    """The development app (echo.dev.app_factory), under its former name."""
    from echo.dev import app_factory  # echo.dev imports this module

    return app_factory()


def runner_options(settings: ServerSettings) -> dict[str, Any]:
    """Keyword arguments for aiohttp's runner that carry our settings to the HTTP layer.

    aiohttp arms its keep-alive timer when a connection is accepted and fires it only
    while no complete request has arrived, so it doubles as the handshake timeout: a
    client that drips its upgrade request is cut off after HANDSHAKE_TIMEOUT; the
    runner of make_runner (echo.engine.fast.runner.EchoRunner) counts those cut-offs.

    TCP keep-alive (SO_KEEPALIVE, first probe after two idle hours by default) is
    left off: the handshake timeout bounds idle HTTP connections and the heartbeat
    idle WebSockets, much sooner; setting it cost a system call per connection.
    """
    return {
        # The HTTP echo shows bodies as received: a gzip body as its gzip bytes.
        "auto_decompress": False,
        "access_log": None,
        "tcp_keepalive": False,
        "keepalive_timeout": settings.handshake_timeout,
        "shutdown_timeout": settings.shutdown_timeout,
    }


def make_runner(app: web.Application, settings: ServerSettings) -> web.AppRunner:
    """The runner every process serves ``app`` with: the single one, or each worker.

    An EchoRunner: /metrics counts handshake timeouts, and once the sites are started
    ``nodelay_on_listeners`` spares a system call per connection (echo.engine.fast.runner).
    """
    return EchoRunner(app, handle_signals=False, **runner_options(settings))


def log_listening(settings: ServerSettings, host: str, port: int) -> None:
    """The "listening on" line, once per bound address (tests and people read the port).

    Its URL is one a person can open: ``localhost`` for the wildcard addresses
    (0.0.0.0, ::), which no browser can connect to.
    """
    everywhere = host in ("0.0.0.0", "::")
    shown = "localhost" if everywhere else f"[{host}]" if ":" in host else host
    http, ws = ("https", "wss") if settings.tls else ("http", "ws")
    log.info(
        "listening on %s://%s:%d/ (WebSocket %s://%s:%d/)%s",
        http,
        shown,
        port,
        ws,
        shown,
        port,
        f"; all interfaces ({host})" if everywhere else "",
        extra=event("listening", url=f"{http}://{shown}:{port}/", tls=settings.tls, address=host),
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


async def start_site(runner: web.AppRunner, settings: ServerSettings) -> None:
    """Listen on HOST:PORT (TLS if configured) and serve ``runner``'s app there."""
    site: web.TCPSite
    if settings.tls:
        context = server_context(
            settings.tls_cert_file, settings.tls_key_file, settings.tls_client_ca_file
        )
        site = TLSSite(
            runner,
            settings.host,
            settings.port,
            ssl_context=context,
            handshake_timeout=settings.handshake_timeout,
            backlog=BACKLOG,
        )
    else:
        site = web.TCPSite(runner, settings.host, settings.port, backlog=BACKLOG)
    try:
        await site.start()
    except OSError as error:
        where = f"{settings.host}:{settings.port}"
        raise ListenError(f"cannot listen on {where}: {error.strerror or error}") from None
    nodelay_on_listeners(runner)


async def serve_until_signal(settings: ServerSettings) -> None:
    """Run the app on HOST:PORT until SIGTERM or SIGINT, then shut down gracefully:
    drain for DRAIN_DELAY (a second signal cuts it short), then close (echo.readiness)."""
    app = create_app(settings)
    runner = make_runner(app, settings)
    await runner.setup()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        await start_site(runner, settings)
        announce(settings, [(address[0], address[1]) for address in runner.addresses])
        await stop.wait()
        log.info("signal received, shutting down", extra=event("signal"))
        stop.clear()
        await app[SERVER_KEY].readiness.drain(settings.drain_delay, cut_short=stop)
    finally:
        await runner.cleanup()


def main(argv: list[str] | None = None) -> None:
    """Console script ``echo-server``: serve until a signal; ``--check-config`` only checks.

    Exit status 2 for bad settings (one line on stderr), 1 when it cannot listen.
    """
    args = command_line("echo-server", SERVER_HELP, SERVER_VARIABLES).parse_args(argv)
    warnings = env_file_warnings()
    try:
        settings = ServerSettings.from_env(load_environment())
    except ConfigError as error:
        print(f"echo-server: {error}", file=sys.stderr)
        sys.exit(2)
    if args.check_config:
        for warning in warnings:
            print(f"echo-server: warning: {warning}", file=sys.stderr)
        for name, value in settings.effective():
            print(f"{name}={value}")
        return
    configure_logging(settings.log_level, settings.log_format)
    for warning in warnings:
        log.warning("%s", warning, extra=event("config_warning", warning=warning))
    try:
        if settings.workers > 1:
            from echo.workers import serve_with_workers  # gunicorn is loaded only here

            serve_with_workers(settings)
        else:
            with asyncio.Runner(loop_factory=loop_factory()) as runner:
                runner.run(serve_until_signal(settings))
    except ListenError as error:
        print(f"echo-server: {error}", file=sys.stderr)
        sys.exit(1)


SERVER_HELP = """Secure WebSocket echo server: every message sent to ws://HOST:PORT/ comes
back unchanged. It also serves a browser console at http://HOST:PORT/, /healthz and
/metrics. Configured by environment variables, also read from a .env file in the working
directory (the environment wins). Durations are in milliseconds."""


if __name__ == "__main__":
    # Run main() of the module as imported, not of this __main__ copy: echo.workers
    # imports echo.server, and the ListenError it raises must be the one main() catches.
    from echo import server

    server.main()
