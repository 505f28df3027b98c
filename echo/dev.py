"""``make dev``: the server under ``adev runserver``, reloaded when the code changes.

The settings are validated here first (exit 2 on a bad value, as for ``echo-server``)
so that PORT and the rest mean the same in development as in production.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from echo.config import ConfigError, ServerSettings, load_environment


def main() -> None:
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
    adev = shutil.which("adev", path=str(Path(sys.executable).parent)) or shutil.which("adev")
    if adev is None:
        print("echo-dev: adev not found; run 'make install'", file=sys.stderr)
        sys.exit(1)
    package = Path(__file__).resolve().parent
    os.execv(
        adev,
        [
            adev,
            "runserver",
            str(package / "server.py"),
            "--app-factory",
            "dev_app",
            "--root",
            str(package),
            # Without a static folder adev's watcher dies on the first non-Python edit;
            # with it, editing the page's CSS restyles open pages, other files reload them.
            "--static",
            str(package / "page"),
            "--port",
            str(settings.port),
        ],
    )


if __name__ == "__main__":
    main()
