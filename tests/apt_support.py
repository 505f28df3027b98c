"""Debian packages the tests run (tmux, microsocks): installed with apt-get when missing.

The same approach as tests/nginx_support.py takes for nginx: `.ci/run` installs them up
front; a developer's machine without them gets them on first use (as root, or with
password-less sudo), and a test that cannot have its program fails saying why.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time

INSTALL_TIMEOUT = 900.0  # apt-get update and install on a slow mirror


class PackageUnavailable(RuntimeError):
    """The program is missing and its package could not be installed; the message says why."""


def _find(binary: str) -> str | None:
    found = shutil.which(binary)
    for directory in ("/usr/bin", "/usr/sbin"):
        candidate = os.path.join(directory, binary)
        if found is None and os.access(candidate, os.X_OK):
            found = candidate
    return found


def ensure_program(binary: str, package: str) -> str:
    """The path of ``binary``; installs Debian's ``package`` first if it is missing."""
    found = _find(binary)
    if found is not None:
        return found
    sudo = [] if os.geteuid() == 0 else ["sudo", "-n"]
    steps = [
        [*sudo, "apt-get", "update", "-q"],
        [*sudo, "apt-get", "install", "-y", "-q", "--no-install-recommends", package],
    ]
    deadline = time.monotonic() + INSTALL_TIMEOUT
    for command in steps:
        try:
            result = subprocess.run(
                command,
                env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
                capture_output=True,
                text=True,
                timeout=max(1.0, deadline - time.monotonic()),
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as error:
            raise PackageUnavailable(
                f"{binary} is missing and `{' '.join(command)}` failed: {error}"
            ) from None
        if result.returncode != 0:
            tail = "\n".join((result.stdout + result.stderr).strip().splitlines()[-15:])
            raise PackageUnavailable(
                f"{binary} is missing and `{' '.join(command)}` exited {result.returncode}:\n{tail}"
            )
    found = _find(binary)
    if found is None:
        raise PackageUnavailable(f"apt-get installed {package}, but no {binary} was found")
    return found
