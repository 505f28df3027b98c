"""Shared pieces of the reliability suite: scale, process probes, the figures report.

Every test here is marked ``soak``. ``make test`` runs them at their quick scale;
``make soak`` sets ``SOAK=1`` and runs only them, at the long scale. The figures each
test measures are printed in pytest's terminal summary and merged into
``reports/reliability.json``, so a reader sees the margins and not only a pass.
"""

from __future__ import annotations

import json
import os
import resource
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

REPORT_PATH = Path(__file__).resolve().parents[2] / "reports" / "reliability.json"
SOAK = os.environ.get("SOAK", "") not in ("", "0", "false", "no")
_FIGURES: dict[str, dict[str, Any]] = {}
_TOUCHED: set[str] = set()  # entries recorded by the test now running


def scale(quick: int, soak: int) -> int:
    """The count for this run: ``quick`` under ``make test``, ``soak`` under ``make soak``."""
    return soak if SOAK else quick


def rss_kib(pid: int) -> int:
    """Resident set size of ``pid`` in KiB (VmRSS in /proc/PID/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def open_fds(pid: int) -> int:
    """How many descriptors ``pid`` has open (entries of /proc/PID/fd)."""
    return len(os.listdir(f"/proc/{pid}/fd"))


def record(test: str, **figures: Any) -> None:
    """Keep ``figures`` for the terminal summary and reports/reliability.json."""
    _TOUCHED.add(test)
    entry = _FIGURES.setdefault(test, {})
    entry.update(figures)
    entry["scale"] = "soak" if SOAK else "quick"


@pytest.fixture(autouse=True, scope="session")
def _descriptor_headroom() -> None:
    """Floods open a few thousand sockets at once; raise the soft descriptor limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 16384 if hard == resource.RLIM_INFINITY else min(hard, 16384)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


@pytest.fixture(autouse=True)
def _duration() -> Iterator[None]:
    """Add the wall-clock time of the test (fixtures included) to what it recorded."""
    _TOUCHED.clear()
    started = time.monotonic()
    yield
    for test in _TOUCHED:
        _FIGURES[test]["duration_s"] = round(time.monotonic() - started, 2)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not _FIGURES:
        return
    terminalreporter.section(f"reliability figures ({'soak' if SOAK else 'quick'})")
    for test, figures in sorted(_FIGURES.items()):
        shown = " ".join(f"{key}={value}" for key, value in figures.items() if key != "scale")
        terminalreporter.write_line(f"{test}: {shown}")
    REPORT_PATH.parent.mkdir(exist_ok=True)
    try:
        merged: dict[str, Any] = json.loads(REPORT_PATH.read_text())
    except (OSError, ValueError):
        merged = {}
    merged.setdefault("soak" if SOAK else "quick", {}).update(_FIGURES)
    REPORT_PATH.write_text(json.dumps(merged, indent=2, sort_keys=True) + "\n")
    terminalreporter.write_line(f"figures merged into {REPORT_PATH}")
