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
Ctrl-C stops it quietly.
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
import time
from dataclasses import replace
from pathlib import Path
from types import FrameType

from aiohttp import web

from echo.config import ConfigError, ServerSettings, env_file_warnings, load_environment
from echo.logs import configure_logging, event
from echo.page import development_options

log = logging.getLogger("echo.dev")
PACKAGE = Path(__file__).resolve().parent
STOP_GRACE = 15.0  # seconds adev gets to stop after Ctrl-C before it is killed


def app_factory() -> web.Application:
    """App factory for ``adev runserver``: the same settings as ``echo-server``.

    adev serves one process, so WORKERS is taken as 1 (/healthz says so too), on the
    plain engine (ENGINE is ignored; /healthz says so too).
    """
    from echo.listeners import log_settings
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
    sys.exit(run_quietly(adev_command(adev, settings.port), cwd=PACKAGE.parent))


def run_quietly(command: list[str], cwd: Path) -> int:
    """Run ``command`` in a process group of its own; Ctrl-C or SIGTERM stops it gently.

    The terminal's Ctrl-C reaches only this process, which passes one SIGINT on, so adev
    stops its app and itself without each of its processes printing a
    KeyboardInterrupt traceback. A second signal kills the group. Returns 0 after a
    requested stop, else adev's own exit status.
    """
    child = subprocess.Popen(command, cwd=cwd, process_group=0)
    stopped_at: float | None = None

    def kill_group() -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.pid, signal.SIGKILL)  # adev and the app process it started

    def stop(_signum: int, _frame: FrameType | None) -> None:
        nonlocal stopped_at
        if stopped_at is not None:
            kill_group()
            return
        stopped_at = time.monotonic()
        child.send_signal(signal.SIGINT)

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    try:
        while True:
            try:
                status = child.wait(0.5)
                break
            except subprocess.TimeoutExpired:
                if stopped_at is not None and time.monotonic() - stopped_at > STOP_GRACE:
                    kill_group()
    finally:
        if child.poll() is None:  # an exception in this process: leave nothing behind
            kill_group()
            child.wait(STOP_GRACE)
    return 0 if stopped_at is not None else status


if __name__ == "__main__":
    main()
