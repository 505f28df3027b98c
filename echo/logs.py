"""Logging set-up shared by the entry points."""

from __future__ import annotations

import logging
import sys


def configure_logging(level: str) -> None:
    """One line per record on stderr, at ``level`` (debug, info, warning, error)."""
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
        force=True,
    )
    # aiohttp's access log would copy raw request lines into the log; we log our own.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
