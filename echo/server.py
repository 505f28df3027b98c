"""The WebSocket echo server: admission (origin, limits), health, logging, shutdown.

``create_app(settings)`` builds the :class:`aiohttp.web.Application`; ``main()`` is the
``echo-server`` console script, which reads the settings from the environment and
serves until SIGTERM or SIGINT. Moving the frames is an engine's job (echo.engine, the
seam): this module admits a connection, hands it to the engine, and books it when the
engine says it is over.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import signal
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

from aiohttp import hdrs, web

from echo import admission
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
from echo.engine import (
    ENGINE_KEY,
    Connection,
    Engine,
    EngineUnavailable,
    Handle,
    Sizes,
    build,
    choose,
)
from echo.eventloop import loop_factory
from echo.handshake import key_valid, without_invalid_offers
from echo.httpecho import add_http_echo, expect_continue, is_upgrade, wants_json
from echo.info import InfoBuilder, Instance
from echo.limits import ConnectionLimiter, Refusal
from echo.listeners import EVENTS_KEY, ListenError, announce, start, stop_serving
from echo.logs import clip, configure_logging, event, install_filters
from echo.metrics import HANDSHAKE_TIMEOUT, Metrics, add_metrics
from echo.origins import Origin, own_origin
from echo.page import PAGE_KEY, PageOptions, add_page
from echo.protocol import ABNORMAL_CLOSURE, GOING_AWAY
from echo.proxies import TrustedProxies
from echo.readiness import READINESS_KEY, Readiness
from echo.refusals import RefusalLog
from echo.text import preview

log = logging.getLogger("echo.server")

RETRY_AFTER_SECONDS = 1
SHUTDOWN_MESSAGE = b"server shutting down"
BAD_HANDSHAKE = "invalid WebSocket handshake\n"

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


def asks_for_websocket(request: web.BaseRequest) -> bool:
    """Whether ``request`` asks to be upgraded to a WebSocket (Upgrade: websocket)."""
    return request.headers.get(hdrs.UPGRADE, "").strip().lower() == "websocket"


class EchoServer:
    """Request handlers and the state they share: settings, limiter, open connections.

    It is the application side of the seam (echo.engine.App) and of the listeners
    (echo.listeners.ListenerEvents).
    """

    def __init__(self, settings: ServerSettings, engine: Engine) -> None:
        self.settings = settings
        self.engine = engine
        self.limiter = ConnectionLimiter(settings.max_connections, settings.max_connections_per_ip)
        self.connections: dict[Handle, Connection] = {}
        self._all_ended: asyncio.Future[None] | None = None  # set by shutdown
        self.started = time.monotonic()
        self._ids = itertools.count(1)
        # Workers share one log: their connection ids carry the process id (w1234-c1).
        self._id_prefix = "c" if settings.workers == 1 else f"w{os.getpid()}-c"
        self.proxies = TrustedProxies(settings.trusted_proxies)
        self.origins = OriginPolicy(settings)
        self.refusals = RefusalLog(log)  # one line each up to a budget per second, then counts
        self.readiness = Readiness()
        self.metrics = (
            Metrics(self.connections.values, settings.max_message_size)
            if settings.metrics
            else None
        )
        # The message-size histogram the engines count in (None without metrics); an
        # attribute, not a property: read once per connection.
        self.sizes: Sizes | None = self.metrics
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

        Admission (origin, test controls, limits), then the engine upgrades and serves
        the connection (the fast engine returns once it is detached, the plain one once
        it is over).
        """
        origins = request.headers.getall(hdrs.ORIGIN, ())
        origin = origins[0] if origins else None
        if len(origins) > 1:
            return self.refuse(request, Refusal.DUPLICATE_ORIGIN, origin, admission.DUPLICATE)
        policy = self.origins
        # Admitted by the settings alone (a missing Origin, ALLOWED_ORIGINS=*): no call.
        if not (policy.allow_missing if origin is None else policy.any_origin):
            why = policy.refusal(origin, lambda: self._page_origin(request))
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
        if request.body_exists:
            # No body has a meaning on a WebSocket handshake (a GET), and the bytes after
            # it could be neither HTTP nor frames (echo.framing).
            raise web.HTTPBadRequest(text="a WebSocket upgrade request has no body\n")
        if hdrs.SEC_WEBSOCKET_EXTENSIONS in request.headers:  # offers to check
            request = without_invalid_offers(request)
        remote = self.client_address(request)
        refusal = self.limiter.try_acquire(remote)
        if refusal is not None:
            return self.refuse(request, refusal, origin, _LIMIT_DETAIL[refusal] + " reached")
        conn = Connection(
            id=f"{self._id_prefix}{next(self._ids)}",
            remote=remote,
            origin=origin,
            controls=controls,
        )
        try:
            return await self.engine.accept(request, conn, self)
        except web.HTTPBadRequest:
            # aiohttp's text quotes the offending header (Sec-WebSocket-Key, -Version...).
            raise web.HTTPBadRequest(text=BAD_HANDSHAKE) from None
        finally:
            if not conn.upgraded:  # the upgrade failed: ended() will not give it back
                self.limiter.release(remote)

    async def healthz(self, request: web.Request) -> web.Response:
        health: dict[str, object] = {
            "status": "ok",
            "connections": self.limiter.open,
            "max_connections": self.settings.max_connections,
            "uptime_seconds": round(time.monotonic() - self.started, 3),
            # With WORKERS > 1 every figure above is this process's own.
            "pid": os.getpid(),
            "workers": self.settings.workers,
            "engine": self.engine.name,
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

    # -- what the engines report (echo.engine.App, echo.listeners.ListenerEvents) -------

    def opened(self, handle: Handle, conn: Connection) -> None:
        """The engine upgraded ``conn``: it counts as open until :meth:`ended`."""
        conn.upgraded = True
        self.connections[handle] = conn
        if self.metrics is not None:
            self.metrics.connections_total += 1
        if log.isEnabledFor(logging.INFO):  # spare the preview when not logged
            origin = conn.origin
            log.info(
                "open id=%s remote=%s origin=%s",
                conn.id,
                conn.remote,
                "-" if origin is None else preview(origin),
                extra=event("open", conn=conn.id, remote=conn.remote, origin=clip(origin)),
            )

    def ended(self, handle: Handle, conn: Connection) -> None:
        """The connection is over: give back its slot, count it, log it."""
        del self.connections[handle]
        all_ended = self._all_ended
        if all_ended is not None and not self.connections and not all_ended.done():
            all_ended.set_result(None)
        if self.metrics is not None:
            self.metrics.connection_closed(conn)
        if log.isEnabledFor(logging.INFO):  # spare building the event per connection
            self._log_closed(conn)
        self.limiter.release(conn.remote)

    def peer_error(self, conn: Connection, what: str) -> None:
        """The peer broke the protocol; the engine has closed with the code for it."""
        log.info("protocol error id=%s: %s", conn.id, what)

    def internal_error(self, conn: Connection, error: BaseException) -> None:
        """Our bug while serving ``conn``; the engine closes it with 1011."""
        log.error(
            "error id=%s; closing with 1011",
            conn.id,
            exc_info=error,
            extra=event("error", conn=conn.id, remote=conn.remote),
        )

    def describe(
        self, request: web.BaseRequest, conn: Connection, response: web.WebSocketResponse
    ) -> dict[str, Any]:
        """The ``info`` control's first message (echo.info)."""
        controls = conn.controls
        return self.info.describe(
            request,
            connection=conn.id,
            response=response,
            controls=None if controls is None else controls.describe(),
        )

    def client_certificate_refused(self, reason: str) -> None:
        """mTLS: a TLS handshake failed on the client's certificate (the client has had
        its TLS alert): counted and logged as a refusal. The TLS layer does not say
        which peer it was."""
        if self.metrics is not None:
            self.metrics.refusal(Refusal.CLIENT_CERTIFICATE.value)
        self.refusals.refused("-", None, Refusal.CLIENT_CERTIFICATE.value, preview(reason, 60))

    def handshake_timeout(self) -> None:
        """A connection sent no complete request within HANDSHAKE_TIMEOUT."""
        if self.metrics is not None:
            self.metrics.refusal(HANDSHAKE_TIMEOUT)

    def _log_closed(self, conn: Connection) -> None:
        """The close line: the codes sent and received, as /metrics counts them.

        ``code`` is the first close frame's (whoever sent it), 1006 if neither side
        sent one; ``sent`` and ``received`` are each side's (1005: a frame without a
        code; - or null: none).
        """
        code = conn.close_code if conn.close_code is not None else ABNORMAL_CLOSURE
        duration = time.monotonic() - conn.opened
        # The test controls it asked for, percent-encoded (echo.controls): plain ASCII.
        controls = None if conn.controls is None else conn.controls.describe()
        log.info(
            "close id=%s code=%s sent=%s received=%s duration=%.3fs in=%d/%dB out=%d/%dB%s",
            conn.id,
            code,
            "-" if conn.close_sent is None else conn.close_sent,
            "-" if conn.close_received is None else conn.close_received,
            duration,
            conn.messages_in,
            conn.bytes_in,
            conn.messages_out,
            conn.bytes_out,
            "" if controls is None else f" controls={controls}",
            extra=event(
                "close",
                conn=conn.id,
                remote=conn.remote,
                code=code,
                sent=conn.close_sent,
                received=conn.close_received,
                duration=round(duration, 3),
                messages_in=conn.messages_in,
                bytes_in=conn.bytes_in,
                messages_out=conn.messages_out,
                bytes_out=conn.bytes_out,
                controls=controls,
            ),
        )

    # -- lifecycle --------------------------------------------------------------------

    async def logging_refusals(self, _app: web.Application) -> AsyncIterator[None]:
        """Cleanup context: at the end, the refusals counted but not yet logged are."""
        yield
        self.refusals.flush()

    async def shutdown(self, _app: web.Application | None = None) -> None:
        """Close every open WebSocket with 1001, waiting at most SHUTDOWN_TIMEOUT."""
        self.readiness.draining = True  # not ready from here on, drained or not
        if not self.connections or self._all_ended is not None:  # none, or done once
            return
        count = len(self.connections)
        log.info("shutdown: closing %d connection(s)", count, extra=event("shutdown", open=count))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.shutdown_timeout
        self._all_ended = loop.create_future()
        closers = [
            asyncio.ensure_future(handle.close(code=GOING_AWAY, message=SHUTDOWN_MESSAGE))
            for handle in list(self.connections)
        ]
        _done, pending = await asyncio.wait(closers, timeout=self.settings.shutdown_timeout)
        for task in pending:
            task.cancel()
        # A closed connection ends (its slot given back, its close line logged) once its
        # transport is gone: after the TLS close_notify exchange, or the gate's bound
        # (echo.listeners.Gate.closing). Wait for that too, or the process exits first.
        if self.connections and not pending:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout_at(deadline):
                    await asyncio.shield(self._all_ended)
        unclosed = len(self.connections)
        if unclosed:  # the peers' doing (they did not answer), so not a warning
            log.info(
                "shutdown: %d connection(s) did not close in time",
                unclosed,
                extra=event("shutdown_timeout", unclosed=unclosed),
            )


SERVER_KEY = web.AppKey("echo_server", EchoServer)
SERVER_SOFTWARE = "echo"  # the Server header of every response: no versions


async def response_headers(request: web.Request, response: web.StreamResponse) -> None:
    """``on_response_prepare``: what every response carries, on any engine.

    No Python or aiohttp version in ``Server`` (aiohttp sets ``Python/3.x aiohttp/3.y``
    unless the header is there when the response is prepared, which is when this runs).
    A 101 carries only the handshake's headers: no Server, no Date (optional on 1xx,
    RFC 9110 6.6.1); the fast engine adds neither and sends its 101 without this hook
    (EchoResponse._start), the plain one's are taken off here.
    A request that asked for a WebSocket and was answered otherwise ends its
    connection: what the client sent after it may be frames, never HTTP (echo.framing).
    """
    headers = response.headers
    if response.status == 101:
        headers.popall(hdrs.SERVER, None)
        headers.popall(hdrs.DATE, None)
        return
    headers[hdrs.SERVER] = SERVER_SOFTWARE
    if asks_for_websocket(request):
        response.force_close()
        headers[hdrs.CONNECTION] = "close"


def create_app(settings: ServerSettings, page: PageOptions | None = None) -> web.Application:
    """Build the application for ``settings``; the EchoServer is at ``app[SERVER_KEY]``.

    ``page`` says how the browser console at ``GET /`` is served (see echo.page). The
    engine is ENGINE's (echo.engine.choose; ``auto`` warns here if it falls back).
    """
    install_filters()  # nothing a peer does is logged above info, whoever set up logging
    engine = build(choose(settings.engine, warn=log.warning), settings)
    server = EchoServer(settings, engine)
    app = web.Application(client_max_size=settings.max_message_size)
    app[SERVER_KEY] = server
    app[ENGINE_KEY] = engine
    app[EVENTS_KEY] = server
    app[READINESS_KEY] = server.readiness
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
    engine.install(app)
    app.cleanup_ctx.append(server.logging_refusals)
    app.on_shutdown.append(server.shutdown)
    app.on_response_prepare.append(response_headers)
    return app


def dev_app() -> web.Application:
    """The development app (echo.dev.app_factory), under its former name."""
    from echo.dev import app_factory  # echo.dev imports this module

    return app_factory()


def resolve_engine(settings: ServerSettings) -> ServerSettings:
    """``settings`` with ENGINE resolved to the engine that will run (plain or fast):
    one warning line if ``auto`` falls back. Raises EngineUnavailable."""
    return replace(settings, engine=choose(settings.engine, warn=log.warning))


async def serve_until_signal(settings: ServerSettings) -> None:
    """Run the app on HOST:PORT until SIGTERM or SIGINT, then shut down gracefully:
    drain for DRAIN_DELAY (a second signal cuts it short), then close (echo.readiness)."""
    app = create_app(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    runner, listeners = await start(app, settings)
    try:
        announce(settings, [(address[0], address[1]) for address in listeners.addresses])
        await stop.wait()
        log.info("signal received, shutting down", extra=event("signal"))
        stop.clear()
        await app[SERVER_KEY].readiness.drain(settings.drain_delay, cut_short=stop)
    finally:
        await stop_serving(app, runner, listeners, settings, graceful=True)


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
        settings = resolve_engine(settings)
    except EngineUnavailable as error:
        print(f"echo-server: {error}", file=sys.stderr)
        sys.exit(2)
    try:
        if settings.workers > 1:
            from echo.workers import serve_with_workers  # gunicorn is loaded only here

            serve_with_workers(settings, create_app)
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
    main()
