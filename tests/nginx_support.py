"""nginx for the tests: installed with apt-get when missing, run from the shipped config.

``render_site`` turns deploy/nginx/echo.conf into the file the test runs by replacing
only the values marked EDIT there (addresses, ports, file paths), each of which must
occur exactly once, and checks that nothing would listen or connect beyond loopback.
``Nginx`` runs it in the foreground under a throwaway prefix directory.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import trustme

from tests.support import children, free_port, stop_with_children

ROOT = Path(__file__).resolve().parent.parent
SITE_CONFIG = ROOT / "deploy" / "nginx" / "echo.conf"
INSTALL_TIMEOUT = 900.0  # apt-get update and install on a slow mirror


class NginxUnavailable(RuntimeError):
    """nginx is not installed and could not be installed; the message says why."""


def _find_nginx() -> str | None:
    found = shutil.which("nginx")
    if found is None and os.access("/usr/sbin/nginx", os.X_OK):
        found = "/usr/sbin/nginx"  # not on PATH for non-login shells
    return found


def _run(command: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command,
        env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def ensure_nginx() -> str:
    """The nginx binary; installs Debian's package first if there is none.

    The package may start a system nginx on port 80 (where services are allowed to
    start): the tests never use it, and it is stopped and disabled again so that the
    test leaves nothing running that was not running before.
    """
    found = _find_nginx()
    if found is not None:
        return found
    sudo = [] if os.geteuid() == 0 else ["sudo", "-n"]
    steps = [
        [*sudo, "apt-get", "update", "-q"],
        [*sudo, "apt-get", "install", "-y", "-q", "--no-install-recommends", "nginx"],
    ]
    deadline = time.monotonic() + INSTALL_TIMEOUT
    for command in steps:
        try:
            result = _run(command, max(1.0, deadline - time.monotonic()))
        except (OSError, subprocess.TimeoutExpired) as error:
            raise NginxUnavailable(
                f"nginx is missing and `{' '.join(command)}` failed: {error}"
            ) from None
        if result.returncode != 0:
            tail = "\n".join((result.stdout + result.stderr).strip().splitlines()[-15:])
            raise NginxUnavailable(
                f"nginx is missing and `{' '.join(command)}` exited {result.returncode}:\n{tail}"
            )
    if Path("/run/systemd/system").is_dir():
        _run([*sudo, "systemctl", "disable", "--now", "nginx.service"], 60)
    else:
        _run([*sudo, "service", "nginx", "stop"], 60)
    found = _find_nginx()
    if found is None:
        raise NginxUnavailable("apt-get installed nginx, but no nginx binary was found")
    return found


def render_site(template: str, replacements: dict[str, str]) -> str:
    """``template`` with each key replaced by its value; every key must occur exactly once."""
    for old, new in replacements.items():
        count = template.count(old)
        if count != 1:
            raise AssertionError(f"{old!r} occurs {count} times in {SITE_CONFIG}, expected once")
        template = template.replace(old, new)
    code = "\n".join(line.split("#", 1)[0] for line in template.splitlines())
    # Every listen address and upstream server: "server {" has no argument and is skipped.
    for address in re.findall(r"^\s*(?:listen|server)\s+([^\s;{]+)", code, re.MULTILINE):
        if not address.startswith(("127.0.0.1:", "[::1]:")):
            raise AssertionError(f"the rendered config would use {address!r}: not loopback")
    for path in re.findall(r"(?<![\w.])/(?:etc|var)/\S*", code):
        raise AssertionError(f"the rendered config still names {path}")
    return template


@dataclass
class LocalSite:
    """deploy/nginx/echo.conf rendered for two local backends: a test certificate
    authority's certificate on ``tls_port``, the port-80 redirect on ``plain_port``,
    logs under ``prefix`` (nginx's prefix directory)."""

    config: str
    prefix: Path
    tls_port: int
    plain_port: int
    ca: Path  # the PEM file of the CA that issued the site's certificate


def local_site(
    backend_ports: list[int],
    directory: Path,
    names: tuple[str, ...] = ("127.0.0.1", "localhost"),
    replacements: dict[str, str] | None = None,
) -> LocalSite:
    """The shipped site config for ``backend_ports`` (two), with a certificate for
    ``names`` issued by a throwaway CA (files in ``directory``/pki), on free loopback
    ports, with ``replacements`` of the test's own on top."""
    ca = trustme.CA()
    issued = ca.issue_cert(*names)
    pki = directory / "pki"
    pki.mkdir()
    ca.cert_pem.write_to_path(str(pki / "ca.pem"))
    issued.cert_chain_pems[0].write_to_path(str(pki / "cert.pem"))
    issued.private_key_pem.write_to_path(str(pki / "key.pem"))
    tls_port, plain_port = free_port(), free_port()
    prefix = directory / "nginx"
    prefix.mkdir()
    first, second = backend_ports
    config = render_site(
        SITE_CONFIG.read_text(),
        {
            "server 127.0.0.1:8081 ": f"server 127.0.0.1:{first} ",
            "server 127.0.0.1:8082 ": f"server 127.0.0.1:{second} ",
            "listen 80;": f"listen 127.0.0.1:{plain_port};",
            "listen [::]:80;": f"listen [::1]:{plain_port};",
            "listen 443 ssl;": f"listen 127.0.0.1:{tls_port} ssl;",
            "listen [::]:443 ssl;": f"listen [::1]:{tls_port} ssl;",
            "/etc/letsencrypt/live/echo.example.com/fullchain.pem": str(pki / "cert.pem"),
            "/etc/letsencrypt/live/echo.example.com/privkey.pem": str(pki / "key.pem"),
            "/var/log/nginx/echo.access.log": str(prefix / "echo.access.log"),
            **(replacements or {}),
        },
    )
    return LocalSite(config, prefix, tls_port, plain_port, pki / "ca.pem")


def _wrapper(prefix: Path, site: Path) -> str:
    """The main nginx.conf of the test: where files go, then the shipped site config."""
    user = "user root;\n" if os.geteuid() == 0 else ""  # workers must reach prefix (0700)
    temp = "".join(
        f"    {kind}_temp_path {prefix / (kind + '_temp')};\n"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    return (
        f"{user}worker_processes 1;\n"
        f"pid {prefix / 'nginx.pid'};\n"
        "events { worker_connections 256; }\n"
        "http {\n"
        f"    access_log {prefix / 'access.log'};\n"
        f"{temp}"
        f"    include {site};\n"
        "}\n"
    )


class Nginx:
    """nginx in the foreground (master and one worker) with the site config ``site``."""

    def __init__(self, binary: str, prefix: Path, site: str) -> None:
        self.binary = binary
        self.prefix = prefix
        self.error_log = prefix / "error.log"
        self.output = prefix / "nginx.out"
        site_path = prefix / "echo.conf"
        site_path.write_text(site)
        self.conf = prefix / "nginx.conf"
        self.conf.write_text(_wrapper(prefix, site_path))
        self.command = [binary, "-p", str(prefix), "-c", str(self.conf), "-e", str(self.error_log)]
        self.proc: subprocess.Popen[bytes] | None = None
        self._workers: set[int] = set()

    def start(self, port: int, timeout: float = 10.0) -> None:
        """Check the config (``nginx -t``), start, and wait until 127.0.0.1:``port`` accepts."""
        check = subprocess.run(
            [*self.command, "-t"], capture_output=True, text=True, timeout=30, check=False
        )
        if check.returncode != 0:
            raise AssertionError(f"nginx -t refused the config:\n{check.stderr}")
        with self.output.open("wb") as out:
            self.proc = subprocess.Popen(
                [*self.command, "-g", "daemon off;"], stdout=out, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise AssertionError(f"nginx exited {self.proc.returncode}:\n{self.log()}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise AssertionError(
                        f"nginx not listening after {timeout}s:\n{self.log()}"
                    ) from None
                time.sleep(0.05)
        self._workers = children(self.proc.pid)

    def log(self) -> str:
        parts = [self.output, self.error_log]
        return "\n".join(p.read_text(errors="replace") for p in parts if p.exists())

    def stop(self) -> None:
        """SIGTERM (nginx stops its workers, then itself); SIGKILL all of them if it hangs."""
        if self.proc is None:
            return
        stop_with_children(self.proc, self._workers, b"nginx: worker")
