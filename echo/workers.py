"""WORKERS > 1: the same port served by several processes, run by gunicorn.

gunicorn's arbiter (the master) forks WORKERS processes of :class:`EchoWorker`, a
worker on gunicorn's documented worker interface (``gunicorn.workers.base.Worker``:
``init_process``, ``run``, ``notify``, ``alive``, ``sockets``); each builds its own app
with the app factory it is given (``echo.server.create_app``) and serves it on
echo.listeners' listeners from the sockets the master opened, as the single process
does (same engine, gate, TLS bounds). The
master restarts a worker that dies, and on SIGTERM or SIGINT it closes the listening
sockets and signals every worker, which closes its WebSockets with 1001 as the single
process does; it exits 0 once they are all gone (see :func:`graceful_timeout`).

gunicorn is configured here from ServerSettings only: no command-line arguments, no
GUNICORN_CMD_ARGS, no gunicorn.conf.py, no control socket. Each process keeps its own
connections, limits and counters: MAX_CONNECTIONS and MAX_CONNECTIONS_PER_IP hold per
process, and /healthz (with its "pid") describes the process that answered.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import queue
import signal
import socket
import sys
from collections.abc import Callable
from typing import Any

from aiohttp import web
from gunicorn.app.base import BaseApplication
from gunicorn.glogging import Logger as GunicornLogger
from gunicorn.workers.base import Worker

from echo.config import ServerSettings
from echo.eventloop import loop_factory
from echo.listeners import BACKLOG, ListenError, announce, start, stop_serving
from echo.logs import event
from echo.readiness import READINESS_KEY

AppFactory = Callable[[ServerSettings], web.Application]

log = logging.getLogger("echo.workers")

EXIT_MARGIN = 2.0  # seconds on top of a worker's two shutdown phases, to exit
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT)
DEFAULT_TIMEOUT = 30  # gunicorn's: a worker silent this long is killed and replaced


def graceful_timeout(settings: ServerSettings) -> int:
    """How long the master waits for its workers after SIGTERM before killing them.

    A worker's aiohttp runner first closes the WebSockets (at most SHUTDOWN_TIMEOUT),
    then waits for its other handlers (at most SHUTDOWN_TIMEOUT again), as the single
    process does; a little more lets it exit on its own. gunicorn counts whole seconds.
    """
    return math.ceil(2 * settings.shutdown_timeout + EXIT_MARGIN)


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


class EchoWorker(Worker):  # type: ignore[misc]
    """One worker process: echo's app, served as the single process serves it.

    ``run`` serves on an event loop of its own (uvloop where installed) until gunicorn
    says stop (``alive``), ticking gunicorn's liveness check once a second; a stop
    signal that came while the worker booted is acted on (see ``init_signals``), and
    SIGTERM drains (DRAIN_DELAY) before the shutdown.
    """

    exit_code = 0
    quick_stop = False  # SIGINT or SIGQUIT: gunicorn allows two seconds, no drain

    def init_process(self) -> None:
        factory = loop_factory()
        self.loop = asyncio.new_event_loop() if factory is None else factory()
        asyncio.set_event_loop(self.loop)
        self._wake: asyncio.Event | None = None
        super().init_process()  # signals, the app (load_wsgi), then run()

    @property
    def settings(self) -> ServerSettings:
        app = self.app
        assert isinstance(app, EchoApplication)
        return app.settings

    def run(self) -> None:
        # gunicorn set booted before run(); the real boot (runner, listeners) is in
        # _serve, and an exit before it is done is a boot failure to the arbiter.
        self.booted = False
        try:
            self.loop.run_until_complete(self._serve())
        finally:
            self.loop.run_until_complete(self.loop.shutdown_asyncgens())
            self.loop.close()
        sys.exit(self.exit_code)

    async def _serve(self) -> None:
        self._wake = asyncio.Event()
        self._stop_if_signalled_early()
        settings = self.settings
        app = self.wsgi
        assert isinstance(app, web.Application)
        sockets = [listener.sock for listener in self.sockets]
        runner, listeners = await start(app, settings, sockets)
        # Serving: from here an exit is not a boot failure.
        self.booted = True
        pid = os.getpid()
        log.info("worker ready pid=%d", pid, extra=event("worker_ready", pid=pid))
        try:
            while self.alive:  # type: ignore[has-type]
                self.notify()  # gunicorn's liveness check
                if self.ppid != os.getppid():
                    self.alive = False
                    log.warning("master gone; worker pid=%d stopping", pid)
                else:
                    await self._tick()
        finally:
            # SIGTERM drains first (the master has closed its copy of the listening
            # sockets, this worker still accepts on its own); a quick stop does not.
            if not self.quick_stop:
                await app[READINESS_KEY].drain(settings.drain_delay)
            await stop_serving(app, runner, listeners, settings, graceful=not self.quick_stop)

    async def _tick(self) -> None:
        """Wait a second, or until a stop signal wakes us."""
        wake = self._wake
        assert wake is not None
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(wake.wait(), 1.0)

    def _wake_up(self) -> None:
        if self._wake is not None:
            self._wake.set()

    def init_signals(self) -> None:
        """Signal handlers on the loop, plus a record of stop signals until it runs.

        A SIGTERM that reaches a booting worker would otherwise be lost, and the worker
        killed only at graceful_timeout: before this point it goes to the handler
        inherited from the arbiter, which queues it in this process's copy of the
        arbiter's queue; after it, until the loop runs, uvloop only notes it for a
        wake-up that never comes. ``_serve`` acts on what was recorded.
        """
        loop = self.loop
        for sig, handler in (
            (signal.SIGQUIT, self.handle_quit),
            (signal.SIGTERM, self.handle_exit),
            (signal.SIGINT, self.handle_quit),
            (signal.SIGWINCH, self.handle_winch),
            (signal.SIGUSR1, self.handle_usr1),
            (signal.SIGABRT, self.handle_abort),
        ):
            loop.add_signal_handler(sig, handler, sig, None)
        # Don't let SIGTERM and SIGUSR1 interrupt system calls of active requests.
        signal.siginterrupt(signal.SIGTERM, False)
        signal.siginterrupt(signal.SIGUSR1, False)
        # The arbiter's SIGCHLD handler is not ours.
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        self.early_stop: list[int] = []
        inherited: queue.SimpleQueue[int] | list[int] | None = getattr(
            self, "arbiter_signals", None
        )
        if isinstance(inherited, list):  # gunicorn before 24 keeps a list
            self.early_stop += inherited
        while inherited is not None and not isinstance(inherited, list) and not inherited.empty():
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
        self.alive = False
        self._wake_up()

    def handle_quit(self, sig: int, frame: Any) -> None:
        """SIGINT or SIGQUIT (gunicorn's quick stop): the same graceful stop here, without
        the drain."""
        self._log_signal()
        self.quick_stop = True
        self.alive = False
        self.cfg.worker_int(self)
        self._wake_up()

    def handle_abort(self, sig: int, frame: Any) -> None:
        """SIGABRT (gunicorn's timeout kill): exit at once, status 1."""
        self.alive = False
        self.exit_code = 1
        self.cfg.worker_abort(self)
        sys.exit(1)

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

    def __init__(
        self, settings: ServerSettings, sockets: list[socket.socket], app_factory: AppFactory
    ) -> None:
        self.settings = settings
        self.app_factory = app_factory
        # gunicorn takes the listening sockets over by file descriptor (and closes ours).
        self._binds = [f"fd://{sock.detach()}" for sock in sockets]
        super().__init__(prog="echo-server")

    def load_config(self) -> None:
        for name, value in gunicorn_config(self.settings, self._binds).items():
            if name == "control_socket_disable" and name not in self.cfg.settings:
                continue  # an older gunicorn, without a control socket to disable
            self.cfg.set(name, value)

    def load(self) -> web.Application:
        """Called in each worker after the fork: every process has its own app and state."""
        return self.app_factory(self.settings)


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
    """In the new worker: keep the arbiter's signal queue (a list before gunicorn 24) for
    EchoWorker.init_signals; without one, a signal during boot waits for the next."""
    worker.arbiter_signals = getattr(arbiter, "SIG_QUEUE", None)


def _child_exit(_arbiter: Any, worker: Any) -> None:
    log.info("worker exited pid=%s", worker.pid, extra=event("worker_exit", pid=worker.pid))


def serve_with_workers(settings: ServerSettings, app_factory: AppFactory) -> None:
    """Run gunicorn with ``settings.workers`` processes, each serving
    ``app_factory(settings)``, until SIGTERM or SIGINT; exits."""
    EchoApplication(settings, bind_sockets(settings), app_factory).run()
