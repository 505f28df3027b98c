"""Real proxies for the client's ``--proxy`` tests, on loopback.

- :class:`HttpProxy`: proxy.py (PyPI, a development dependency), an HTTP proxy that
  tunnels with CONNECT and logs each tunnel (``CONNECT host:port``) in its access log;
  optionally with basic authentication.
- :class:`SocksProxy`: microsocks (Debian), a SOCKS5 server, optionally with a user
  and password; installed with apt-get when missing, like nginx.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

from tests.apt_support import ensure_program
from tests.support import children, free_port, stop_with_children


class _Proxy:
    def __init__(self, command: list[str], port: int, log: Path) -> None:
        self.port = port
        self.log_path = log
        self._out = log.open("wb")
        self.proc = subprocess.Popen(command, stdout=self._out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while True:
            if self.proc.poll() is not None:
                raise AssertionError(f"proxy exited {self.proc.returncode}: {self.log()}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise AssertionError(f"proxy not listening: {self.log()}") from None
                time.sleep(0.05)
        self._children = children(self.proc.pid)

    def log(self) -> str:
        self._out.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        stop_with_children(self.proc, self._children)  # acceptor processes
        self._out.close()


class HttpProxy(_Proxy):
    """proxy.py on a free loopback port."""

    def __init__(self, workdir: Path, auth: str | None = None) -> None:
        port = free_port()
        data = workdir / "proxy.py"
        data.mkdir(exist_ok=True)
        command = [
            sys.executable,
            "-m",
            "proxy",
            "--hostname",
            "127.0.0.1",
            "--port",
            str(port),
            "--num-acceptors",
            "1",
            "--num-workers",
            "1",
            "--data-dir",
            str(data),
        ]
        if auth is not None:
            command += ["--basic-auth", auth]
        super().__init__(command, port, workdir / f"proxy-{port}.log")

    def url(self, credentials: str = "") -> str:
        return f"http://{credentials + '@' if credentials else ''}127.0.0.1:{self.port}"


class SocksProxy(_Proxy):
    """microsocks on a free loopback port."""

    def __init__(self, workdir: Path, user: str | None = None, password: str | None = None) -> None:
        binary = ensure_program("microsocks", "microsocks")
        port = free_port()
        command = [binary, "-i", "127.0.0.1", "-p", str(port)]
        if user is not None and password is not None:
            command += ["-u", user, "-P", password]
        super().__init__(command, port, workdir / f"socks-{port}.log")

    def url(self, credentials: str = "", scheme: str = "socks5") -> str:
        return f"{scheme}://{credentials + '@' if credentials else ''}127.0.0.1:{self.port}"
