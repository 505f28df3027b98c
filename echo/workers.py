"""WORKERS > 1: the same port served by several processes, run by gunicorn.

gunicorn's arbiter (the master) forks WORKERS processes of :class:`EchoWorker`, a
subclass of aiohttp's ``GunicornUVLoopWebWorker``; each builds its own app with
``echo.server.create_app`` and accepts from the listening sockets the master opened. The
master restarts a worker that dies, and on SIGTERM or SIGINT it closes the listening
sockets and signals every worker, which closes its WebSockets with 1001 as the single
process does; it exits 0 once they are all gone (see :func:`graceful_timeout`).

gunicorn is configured here from ServerSettings only: no command-line arguments, no
GUNICORN_CMD_ARGS, no gunicorn.conf.py, no control socket. Each process keeps its own
connections, limits and counters: MAX_CONNECTIONS and MAX_CONNECTIONS_PER_IP hold per
process, and /healthz (with its "pid") describes the process that answered.
"""

from __future__ import annotations

import logging
import math
import os
import queue
import signal
import socket
from collections.abc import Callable
from typing import Any

from aiohttp import web
from aiohttp.worker import GunicornUVLoopWebWorker, GunicornWebWorker
from gunicorn.app.base import BaseApplication
from gunicorn.glogging import Logger as GunicornLogger

from echo.config import ServerSettings
from echo.engine.fast.runner import nodelay_on_listeners
from echo.engine.fast.sites import ListenerSite
from echo.eventloop import loop_factory
from echo.logs import event
from echo.server import BACKLOG, SERVER_KEY, ListenError, announce, create_app, make_runner
from echo.tls import server_context

log = logging.getLogger("echo.workers")

EXIT_MARGIN = 2.0  # seconds on top of a worker's two shutdown phases, to exit
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT)
DEFAULT_TIMEOUT = 30  # gunicorn's: a worker silent this long is killed and replaced


def graceful_timeout(settings: ServerSettings) -> int:
    """How long the master waits for its workers after SIGTERM before killing them.

    A worker first drains (DRAIN_DELAY), then its aiohttp runner closes the WebSockets
    (at most SHUTDOWN_TIMEOUT) and waits for its other handlers (at most
    SHUTDOWN_TIMEOUT again), as the single process does; a little more lets it exit on
    its own. gunicorn counts whole seconds.
    """
    return math.ceil(settings.drain_delay + 2 * settings.shutdown_timeout + EXIT_MARGIN)


def bind_sockets(settings: ServerSettings) -> list[socket.socket]:
    """Listening sockets on HOST:PORT, one per address HOST resolves to, as asyncio binds.

    The master binds before gunicorn starts, so a port in use is the same one-line
    error (exit 1) as with one process, rather than gunicorn's five retries.
    """
    try:
        infos = socket.getaddrinfo(
            settings.host, settings.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except OSError as error:
        where = f"{settings.host}:{settings.port}"
        raise ListenError(f"cannot listen on {where}: {error.strerror or error}") from None
    sockets: list[socket.socket] = []
    try:
        for family, kind, proto, _name, address in dict.fromkeys(infos):
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
            sock.listen(BACKLOG)
    except OSError as error:
        for sock in sockets:
            sock.close()
        where = f"{settings.host}:{settings.port}"
        raise ListenError(f"cannot listen on {where}: {error.strerror or error}") from None
    return sockets


class EchoLogger(GunicornLogger):  # type: ignore[misc]
    """gunicorn's logger, writing through echo's logging set-up (LOG_FORMAT, stderr).

    gunicorn gives its loggers their own handlers and format; dropping them and letting
    records propagate to the root logger makes its lines look like ours, JSON included.
    """

    def setup(self, cfg: Any) -> None:
        super().setup(cfg)
        for logger in (self.error_log, self.access_log):
            for handler in list(logger.handlers):
                logger.removeHandler(handler)
            logger.propagate = True


class EchoWorker(GunicornUVLoopWebWorker):
    """One worker process: echo's app with the single process's HTTP-layer settings.

    ``_run`` mirrors ``GunicornWebWorker._run`` of aiohttp 3.14 (the version pinned in
    pyproject.toml) with these changes: the runner is the single process's
    (``echo.server.make_runner``: no access log, HANDSHAKE_TIMEOUT as keep-alive
    timeout, SHUTDOWN_TIMEOUT) instead of one from gunicorn's settings, the sites
    serve TLS with echo's context and handshake timeout, ``max_requests`` is left out
    (never set here), and a stop signal that came while the worker booted is acted on
    (see ``init_signals``), and SIGTERM drains (DRAIN_DELAY) before the shutdown.
    """

    quick_stop = False  # SIGINT or SIGQUIT: gunicorn allows two seconds, no drain

    def init_process(self) -> None:
        if loop_factory() is None:  # no uvloop on this interpreter: asyncio's own loop
            GunicornWebWorker.init_process(self)
        else:
            super().init_process()

    @property
    def settings(self) -> ServerSettings:
        app = self.app
        assert isinstance(app, EchoApplication)
        return app.settings

    async def _run(self) -> None:
        self._stop_if_signalled_early()
        settings = self.settings
        app = self.wsgi
        assert isinstance(app, web.Application)
        runner = make_runner(app, settings)
        await runner.setup()
        context = None
        if settings.tls:
            context = server_context(settings.tls_cert_file, settings.tls_key_file)
        for listener in self.sockets:
            site = ListenerSite(
                runner,
                listener.sock,
                ssl_context=context,
                handshake_timeout=settings.handshake_timeout,
                backlog=BACKLOG,
            )
            await site.start()
        nodelay_on_listeners(runner, [listener.sock for listener in self.sockets])
        # Serving: from here an exit is not a boot failure (see aiohttp's run()).
        self.booted = True
        pid = os.getpid()
        log.info("worker ready pid=%d", pid, extra=event("worker_ready", pid=pid))
        try:
            while self.alive:
                self.notify()  # gunicorn's liveness check
                if self.ppid != os.getppid():
                    self.alive = False
                    log.warning("master gone; worker pid=%d stopping", pid)
                else:
                    await self._wait_next_notify()
        finally:
            # SIGTERM drains first (the master has closed its copy of the listening
            # sockets, this worker still accepts on its own); a quick stop does not.
            if not self.quick_stop:
                await app[SERVER_KEY].readiness.drain(settings.drain_delay)
            await runner.cleanup()

    def init_signals(self) -> None:
        """aiohttp's loop handlers, plus a record of stop signals until the loop runs.

        A SIGTERM that reaches a booting worker would otherwise be lost, and the worker
        killed only at graceful_timeout: before this point it goes to the handler
        inherited from the arbiter, which queues it in this process's copy of the
        arbiter's queue; after it, until the loop runs, uvloop only notes it for a
        wake-up that never comes. ``_run`` acts on what was recorded.
        """
        super().init_signals()
        self.early_stop: list[int] = []
        inherited: queue.SimpleQueue[int] | None = getattr(self, "arbiter_signals", None)
        while inherited is not None and not inherited.empty():
            self.early_stop.append(inherited.get_nowait())
        # Once running, the loop dispatches from its wake-up fd whatever Python handler
        # is installed; this one only keeps a note for the time before.
        self.loop_handlers = {sig: signal.signal(sig, self._note) for sig in STOP_SIGNALS}

    def _note(self, sig: int, _frame: Any) -> None:
        self.early_stop.append(sig)

    def _stop_if_signalled_early(self) -> None:
        """Called once the loop runs: hand signals back to it, act on earlier ones."""
        for sig, handler in self.loop_handlers.items():
            signal.signal(sig, handler)
        for signum in self.early_stop:
            if signum == signal.SIGTERM:
                self.handle_exit(signum, None)
            elif signum in STOP_SIGNALS:
                self.handle_quit(signum, None)

    def handle_exit(self, sig: int, frame: Any) -> None:
        """SIGTERM: stop at once rather than at the next one-second liveness tick."""
        self._log_signal()
        super().handle_exit(sig, frame)
        self._notify_waiter_done()

    def handle_quit(self, sig: int, frame: Any) -> None:
        """SIGINT or SIGQUIT (gunicorn's quick stop): the same graceful stop here, without
        the drain."""
        self._log_signal()
        self.quick_stop = True
        super().handle_quit(sig, frame)

    def _log_signal(self) -> None:
        # Once: Ctrl-C reaches the workers directly, then again through the master.
        if self.alive:
            pid = os.getpid()
            log.info(
                "signal received, worker pid=%d shutting down",
                pid,
                extra=event("signal", pid=pid),
            )


class EchoApplication(BaseApplication):  # type: ignore[misc]
    """gunicorn's application object, configured from ``settings`` and nothing else."""

    def __init__(self, settings: ServerSettings, sockets: list[socket.socket]) -> None:
        self.settings = settings
        # gunicorn takes the listening sockets over by file descriptor (and closes ours).
        self._binds = [f"fd://{sock.detach()}" for sock in sockets]
        super().__init__(prog="echo-server")

    def load_config(self) -> None:
        for name, value in gunicorn_config(self.settings, self._binds).items():
            self.cfg.set(name, value)

    def load(self) -> web.Application:
        """Called in each worker after the fork: every process has its own app and state."""
        return create_app(self.settings)


def gunicorn_config(settings: ServerSettings, binds: list[str]) -> dict[str, Any]:
    """gunicorn settings carrying ours; see EchoWorker for what goes to aiohttp directly."""
    # gunicorn's own info lines (booting, signals) show at debug; its warnings and
    # errors (a worker killed or timed out) at every level that shows them.
    level = settings.log_level if settings.log_level in ("debug", "error") else "warning"
    return {
        "bind": binds,
        "workers": settings.workers,
        "worker_class": EchoWorker,
        "graceful_timeout": graceful_timeout(settings),
        # A worker stopping (on SIGHUP, say) does not tick gunicorn's liveness check.
        "timeout": max(DEFAULT_TIMEOUT, graceful_timeout(settings)),
        "proc_name": "echo-server",
        "logger_class": EchoLogger,
        "loglevel": level,
        "errorlog": "-",
        "accesslog": None,
        "control_socket_disable": True,
        "when_ready": _when_ready(settings),
        "child_exit": _child_exit,
        "post_fork": _post_fork,
    }


def _when_ready(settings: ServerSettings) -> Callable[[Any], None]:
    def when_ready(arbiter: Any) -> None:
        announce(settings, [listener.sock.getsockname()[:2] for listener in arbiter.LISTENERS])
        log.info(
            "master pid=%d starting %d workers",
            os.getpid(),
            settings.workers,
            extra=event("workers", pid=os.getpid(), workers=settings.workers),
        )

    return when_ready


def _post_fork(arbiter: Any, worker: Any) -> None:
    """In the new worker: keep the arbiter's signal queue for EchoWorker.init_signals."""
    worker.arbiter_signals = arbiter.SIG_QUEUE


def _child_exit(_arbiter: Any, worker: Any) -> None:
    log.info("worker exited pid=%s", worker.pid, extra=event("worker_exit", pid=worker.pid))


def serve_with_workers(settings: ServerSettings) -> None:
    """Run gunicorn with ``settings.workers`` processes until SIGTERM or SIGINT; exits."""
    EchoApplication(settings, bind_sockets(settings)).run()
