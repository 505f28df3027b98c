"""What ``make bench`` measures: the scenarios, their metrics and their targets.

A scenario names a load-generator mode (``bench.client``: echo, idle, handshake or fairness), its
size and the figure it is judged by. To add one (for example a fairness scenario with a
new mode), add a mode to ``bench.client.RUNNERS``, a row below and, for a new metric, a
label in ``bench.report.LABELS``.
"""

from __future__ import annotations

from dataclasses import dataclass

METRICS_TARGET = 0.97  # metrics on / off: at most 3% of throughput
IDLE_LIMIT_KIB = 8.0  # server memory per idle connection


@dataclass(frozen=True, slots=True)
class Scenario:
    """One row group of the report: the real server and the reference, side by side."""

    name: str
    mode: str  # a key of bench.client.RUNNERS
    connections: int
    kind: str = "text"
    size: int = 32
    in_flight: int = 1
    metric: str = "msgs_per_s"
    higher_is_better: bool = True
    target: float | None = None  # the ratio real / reference to reach (or not exceed)
    limit: float | None = None  # a bound on the real server's own figure
    metrics_overhead: bool = False  # also run real with METRICS on and off concurrently
    engine: str | None = None  # ENGINE for the real server; None: the caller's (auto)


def scenarios(quick: bool) -> list[Scenario]:
    """Every scenario; ``quick`` (CI) uses fewer connections."""
    conns = 10 if quick else 50
    return [
        Scenario("50x32B text, 1 in flight", "echo", conns, target=1.25, metrics_overhead=True),
        Scenario(
            "50x32B text, 16 in flight",
            "echo",
            conns,
            in_flight=16,
            target=1.1,
            metrics_overhead=True,
        ),
        Scenario("10x64KiB binary", "echo", 4 if quick else 10, "binary", 65536, target=1.1),
        Scenario(
            "idle connections",
            "idle",
            500 if quick else 10_000,
            metric="rss_per_conn_kib",
            higher_is_better=False,
            limit=IDLE_LIMIT_KIB,
        ),
        Scenario(
            "handshakes", "handshake", 8 if quick else 32, metric="handshakes_per_s", target=1.0
        ),
        # The public-API engine against the textbook aiohttp handler: our admission,
        # policy and counting on top of the same aiohttp path, expected close to 1.0.
        Scenario("plain engine, 50x32B text, 1 in flight", "echo", conns, engine="plain"),
        # A bystander's echo while one peer streams 125-byte messages (or pings) and
        # reads the replies: the fast path must not let it hold the loop (issue 13).
        Scenario(
            "fairness, text hog",
            "fairness",
            1,
            metric="rtt_max_ms",
            higher_is_better=False,
            target=1.0,
        ),
        Scenario(
            "fairness, ping hog",
            "fairness",
            1,
            kind="ping",
            metric="rtt_max_ms",
            higher_is_better=False,
            target=1.0,
        ),
    ]
