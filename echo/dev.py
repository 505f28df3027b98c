"""Development server: the app under ``adev runserver``, reloaded when the code changes.

By hand, from the repository (adev's own ``--port`` and ``--aux-port`` decide where it
listens; PORT is not read by adev):

    adev runserver echo/dev.py --static echo/page --port 8080

adev finds :func:`app_factory` here by its name. ``--static echo/page`` gives adev's
watcher the page's folder (without one it stops at the first edit of a file that is
not Python); editing ``page.css`` restyles open pages, other files reload them. The
page's Content-Security-Policy admits the live-reload origin adev actually uses
(echo.page.LiveReloadPage), whatever ``--aux-port`` says.

``make dev`` runs :func:`main`: it validates the settings first (exit 2 on a bad
value, as ``echo-server`` does), checks that PORT and PORT+1 are free (one line and
exit 1 if not, rather than adev's traceback), runs that command with PORT, and on
Ctrl-C stops it quietly (:func:`run_quietly`). The Makefile starts it with SIGINT
ignored, and :func:`main` takes Ctrl-C over before importing anything more, so that
no Ctrl-C at any moment of the start-up is a KeyboardInterrupt traceback.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from aiohttp import web

log = logging.getLogger("echo.dev")
PACKAGE = Path(__file__).resolve().parent
STOP_GRACE = 15.0  # seconds adev gets to stop after Ctrl-C before it is killed
POLL = 0.1  # seconds between looks at adev while it runs
START_WAIT = 10.0  # after Ctrl-C, how long adev's app may take to start before adev is stopped


def app_factory() -> web.Application:
    """App factory for ``adev runserver``: the same settings as ``echo-server``.

    adev serves one process, so WORKERS is taken as 1 (/healthz says so too), on the
    plain engine (ENGINE is ignored; /healthz says so too).
    """
    from echo.config import ConfigError, ServerSettings, env_file_warnings, load_environment
    from echo.listeners import log_settings
    from echo.logs import configure_logging, event
    from echo.page import development_options
    from echo.server import create_app  # echo.server imports nothing of this

    try:
        # adev serves with aiohttp's own runner and sites: the plain engine.
        settings = replace(ServerSettings.from_env(load_environment()), workers=1, engine="plain")
    except ConfigError as error:
        print(f"echo-dev: {error}", file=sys.stderr)
        sys.exit(2)
    configure_logging(settings.log_level, settings.log_format)
    for warning in env_file_warnings():
        log.warning("%s", warning, extra=event("config_warning", warning=warning))
    # adev decides where it listens: all interfaces, its --port and --aux-port.
    log_settings(settings, omit=("HOST", "PORT", "WORKERS"))
    return create_app(settings, development_options())


def port_in_use(port: int) -> str | None:
    """Why ``port`` cannot be bound on all interfaces as adev binds it, or None."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as asyncio does
        try:
            sock.bind(("0.0.0.0", port))
        except OSError as error:
            if error.errno == errno.EADDRINUSE:
                return "address already in use"
            return error.strerror or str(error)
    return None


def adev_command(adev: str, port: int) -> list[str]:
    """The documented command (see the module's docstring), run from the repository."""
    return [
        adev,
        "runserver",
        "echo/dev.py",
        "--static",
        "echo/page",
        "--port",
        str(port),
        "--aux-port",
        str(port + 1),
    ]


def main() -> None:
    """``make dev``: check, then run adev in its own process group until Ctrl-C."""
    stop = Stop()
    stop.take_signals()
    from echo.config import ConfigError, ServerSettings, env_file_warnings, load_environment

    for warning in env_file_warnings():
        print(f"echo-dev: warning: {warning}", file=sys.stderr)
    try:
        settings = ServerSettings.from_env(load_environment())
    except ConfigError as error:
        print(f"echo-dev: {error}", file=sys.stderr)
        sys.exit(2)
    if settings.workers > 1:  # adev serves one process and reloads it
        print(
            f"echo-dev: WORKERS={settings.workers} ignored: make dev runs one process",
            file=sys.stderr,
        )
    if not 0 < settings.port < 65535:
        print(f"echo-dev: PORT={settings.port}: make dev needs PORT and PORT+1", file=sys.stderr)
        sys.exit(2)
    for port, what in ((settings.port, "PORT"), (settings.port + 1, "adev's live reload, PORT+1")):
        problem = port_in_use(port)
        if problem is not None:
            print(f"echo-dev: cannot listen on port {port} ({what}): {problem}", file=sys.stderr)
            sys.exit(1)
    adev = shutil.which("adev", path=str(Path(sys.executable).parent)) or shutil.which("adev")
    if adev is None:
        print("echo-dev: adev not found; run 'make install'", file=sys.stderr)
        sys.exit(1)
    if stop.at is not None:
        sys.exit(0)  # Ctrl-C before adev was started
    port = settings.port
    command = adev_command(adev, port)
    sys.exit(run_quietly(command, cwd=PACKAGE.parent, stop=stop, ready=lambda: serving(port)))


class Stop:
    """Ctrl-C (SIGINT) or SIGTERM: when the first came, and whether a second did."""

    def __init__(self) -> None:
        self.at: float | None = None
        self.again = False
        self.event = threading.Event()  # set by the first (what watchfiles waits on)

    def requested(self, _signum: int, _frame: FrameType | None) -> None:
        if self.at is None:
            self.at = time.monotonic()
            self.event.set()
        else:
            self.again = True

    def take_signals(self) -> None:
        """From here on, Ctrl-C and SIGTERM are noted here (make dev's recipe started
        this process with SIGINT ignored, so none came as a KeyboardInterrupt)."""
        signal.signal(signal.SIGINT, self.requested)
        signal.signal(signal.SIGTERM, self.requested)


def restore_sigint() -> None:
    """In a child before it runs: Ctrl-C as Python has it by default again."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def stop_child(child: subprocess.Popen[bytes], stop: Stop, signum: int) -> int:
    """Send ``signum`` to ``child`` (the leader of its own process group) and wait for
    it, at most STOP_GRACE or until a second Ctrl-C; then kill its group."""
    with contextlib.suppress(ProcessLookupError):
        child.send_signal(signum)
    deadline = time.monotonic() + STOP_GRACE
    while child.poll() is None and not stop.again and time.monotonic() < deadline:
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.wait(POLL)
    if child.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.pid, signal.SIGKILL)
    return child.wait(STOP_GRACE)


def client_main(args: list[str]) -> None:
    """``make dev-client``: ``echo-client`` with ``args``, restarted when a ``.py`` file
    in echo/ changes, until Ctrl-C, which stops it quietly.

    The client runs in a process group of its own, so the terminal's Ctrl-C reaches
    only this process; it passes SIGTERM on, which the client treats as Ctrl-C once
    it has started (the summary, exit status), and which ends it without a
    traceback before that. watchfiles' own command line would pass a SIGINT at any
    moment, a KeyboardInterrupt traceback during the client's start-up.
    """
    stop = Stop()
    stop.take_signals()
    from watchfiles import PythonFilter, watch

    command = [sys.executable, "-m", "echo.client", *args]
    status = 0
    while stop.at is None:
        child = subprocess.Popen(command, process_group=0, preexec_fn=restore_sigint)
        changed = False
        for changes in watch(
            PACKAGE,
            watch_filter=PythonFilter(),
            stop_event=stop.event,
            rust_timeout=int(POLL * 1000),
            yield_on_timeout=True,
            raise_interrupt=False,
        ):
            if changes:
                changed = True
                break
        status = stop_child(child, stop, signal.SIGTERM)
        if changed and stop.at is None:
            print("echo-dev: a .py file in echo/ changed; restarting the client", file=sys.stderr)
    sys.exit(0 if stop.at is not None else status)


def serving(port: int) -> bool:
    """Whether adev's app listens on ``port`` (it has started), seen by a bind that
    fails: a connection would have the app accept it, and a SIGINT in the middle of
    that is a KeyboardInterrupt traceback of its own."""
    return port_in_use(port) is not None


def run_quietly(
    command: list[str], cwd: Path, stop: Stop, ready: Callable[[], bool] | None = None
) -> int:
    """Run ``command`` in a process group of its own until ``stop`` is requested, then
    stop it gently.

    The terminal's Ctrl-C reaches only this process, which passes one SIGINT on, so adev
    stops its app and itself without each of its processes printing a KeyboardInterrupt
    traceback. Not before ``ready()`` says adev's app serves (at most START_WAIT): a
    SIGINT to adev or to its app process while they are still starting is just such a
    traceback. A second signal kills the group. Returns 0 after a requested stop, else
    adev's own exit status.
    """
    child = subprocess.Popen(command, cwd=cwd, process_group=0, preexec_fn=restore_sigint)
    passed_on: float | None = None

    def kill_group() -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.pid, signal.SIGKILL)  # adev and the app process it started

    try:
        while True:
            try:
                status = child.wait(POLL)
                break
            except subprocess.TimeoutExpired:
                pass
            now = time.monotonic()
            if stop.again or (passed_on is not None and now - passed_on > STOP_GRACE):
                kill_group()
            elif (
                stop.at is not None
                and passed_on is None
                and (ready is None or now - stop.at > START_WAIT or ready())
            ):
                passed_on = now
                child.send_signal(signal.SIGINT)
    finally:
        if child.poll() is None:  # an exception in this process: leave nothing behind
            kill_group()
            child.wait(STOP_GRACE)
    return 0 if stop.at is not None else status


if __name__ == "__main__":
    if sys.argv[1:2] == ["client"]:
        client_main(sys.argv[2:])
    else:
        main()
