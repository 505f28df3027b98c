"""One server under test as a subprocess on a loopback port.

The tests, ``make bench`` and ``make compliance`` all start servers through
:class:`ServerProcess`: ``python -m echo.server`` by default, or another module such as
the benchmark's bare aiohttp reference. Settings come only from the ``env`` given (PORT
and HOST included); the working directory is the caller's choice, usually an empty one,
so a developer's ``.env`` cannot change what is measured or tested.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent  # the checkout: echo/, bench/, harness/


def child_env(env: dict[str, str]) -> dict[str, str]:
    """``env`` with the checkout first on PYTHONPATH, so ``python -m bench.reference``
    (which is not installed) starts from any working directory."""
    paths = [str(ROOT), *filter(None, env.get("PYTHONPATH", "").split(os.pathsep))]
    return {**env, "PYTHONPATH": os.pathsep.join(dict.fromkeys(paths))}


class ServerProcess:
    """``python -m MODULE`` as a subprocess, its stdout and stderr in ``log_path``."""

    def __init__(
        self,
        env: dict[str, str],
        cwd: Path,
        log_path: Path,
        port: int | None = None,
        *,
        module: str = "echo.server",
    ) -> None:
        self.port = int(env["PORT"]) if port is None else port
        self.host = env.get("HOST", "127.0.0.1")
        self.log_path = log_path
        self._log = log_path.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", module],
            env=child_env(env),
            cwd=cwd,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def url(self) -> str:
        return f"ws://{self.host}:{self.port}/"

    @property
    def http(self) -> str:
        return f"http://{self.host}:{self.port}"

    def wait_ready(self, timeout: float = 15.0, *, healthz: bool = True) -> None:
        """Return once the server answers: ``GET /healthz`` (or, with ``healthz=False``,
        for a server without it, a TCP connection accepted). Raise if it exits first or
        is not ready within ``timeout`` seconds, with its log in the message."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}: {self.log()}")
            try:
                if healthz:
                    with urllib.request.urlopen(f"{self.http}/healthz", timeout=1):
                        return
                else:
                    socket.create_connection((self.host, self.port), timeout=1).close()
                    return
            except OSError:
                time.sleep(0.05)
        raise TimeoutError(f"server not ready after {timeout}s: {self.log()}")

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def wait(self, timeout: float = 15.0) -> int:
        return self.proc.wait(timeout)

    def stop(self, *, graceful: bool = False, timeout: float = 15.0) -> None:
        """End the server: SIGKILL at once, or with ``graceful`` SIGTERM first and
        SIGKILL only if it has not exited within ``timeout`` seconds."""
        if self.proc.poll() is None:
            if graceful:
                self.proc.terminate()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.proc.wait(timeout)
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGKILL)
                self.proc.wait(10)
        self._log.close()
