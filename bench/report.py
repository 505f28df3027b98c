"""The figures of ``make bench``: medians, paired ratios and the table printed at the end."""

from __future__ import annotations

import statistics
from typing import Any

from bench.scenarios import METRICS_TARGET, Scenario

PAIR = ("metrics_on", "metrics_off")  # result keys of the concurrent metrics on / off run

# Every figure a load generator reports that the table shows: label and decimals.
LABELS = {
    "msgs_per_s": ("msgs/s", 0),
    "handshakes_per_s": ("handshakes/s", 0),
    "rss_per_conn_kib": ("KiB/conn (RSS)", 2),
    "per_cpu_s": ("per server CPU-s", 0),
    "server_cpu_pct": ("server CPU %", 0),
    "client_cpu_pct": ("loadgen CPU %", 0),
    "rtt_p50_us": ("RTT p50 us", 0),
    "rtt_p99_us": ("RTT p99 us", 0),
    "cpu_s_per_1k": ("CPU s/1k", 4),
    "rtt_max_ms": ("RTT max ms", 1),
    "hog_msgs_per_s": ("hog msgs/s", 0),
    "hog_per_bystander": ("hog per bystander", 0),
}
# Shown under the main metric of a scenario whose load generator measures CPU.
EXTRA = [
    "per_cpu_s",
    "server_cpu_pct",
    "client_cpu_pct",
    "rtt_p50_us",
    "rtt_p99_us",
    "cpu_s_per_1k",
]
# Shown under a fairness scenario's worst bystander echo.
FAIRNESS_EXTRA = ["rtt_p99_us", "rtt_p50_us", "hog_msgs_per_s", "hog_per_bystander"]


def median(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def paired_ratio(
    mine: list[dict[str, Any]], theirs: list[dict[str, Any]], key: str
) -> float | None:
    """The median of each round's ratio: the two of a round ran seconds apart (or at
    the same time), so what else the machine was doing cancels out."""
    pairs = zip(mine, theirs, strict=True)
    return median(
        [a.get(key) / b[key] if a.get(key) is not None and b.get(key) else None for a, b in pairs]
    )


def engines(runs: list[dict[str, Any]]) -> str:
    """The engines the real server reported on /healthz over the rounds ("?" if none)."""
    seen = sorted({str(r.get("engine") or "?") for r in runs})
    return "/".join(seen) if seen else "?"


def summarise(s: Scenario, results: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Medians and paired ratios of one scenario's runs (``results``: server -> runs)."""
    for r in (run for runs in results.values() for run in runs):
        if "cpu_s_per_1k" in r:
            cpu = r["cpu_s_per_1k"]
            r["per_cpu_s"] = 1000 / cpu if cpu else None
    measured_cpu = any("cpu_s_per_1k" in r for r in results["real"])
    if s.mode == "fairness":
        keys = [s.metric, *FAIRNESS_EXTRA]
    else:
        keys = [s.metric] + (EXTRA if measured_cpu else [])
    summary: dict[str, Any] = {
        "metric": s.metric,
        "target": s.target,
        "limit": s.limit,
        "engine": engines(results["real"]),
        "engine_requested": s.engine,
    }
    for key in keys:
        summary[key] = {
            "real": median([r.get(key) for r in results["real"]]),
            "reference": median([r.get(key) for r in results["reference"]]),
            "ratio": paired_ratio(results["real"], results["reference"], key),
        }
    if s.metrics_overhead:
        on, off = (results[k] for k in PAIR)
        summary["metrics_overhead"] = {
            key: {
                "on": median([r.get(key) for r in on]),
                "off": median([r.get(key) for r in off]),
                "ratio": paired_ratio(on, off, key),
            }
            for key in (s.metric, "per_cpu_s")
        }
    summary["errors"] = {w: sum(r.get("errors", 0) for r in results[w]) for w in results}
    return summary


def fmt(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def verdict(s: Scenario, row: dict[str, Any]) -> str:
    """The target column of a scenario's first row: the ratio's target, or the bound on
    the real server's own figure, and whether it was met."""
    if s.target is not None:
        ratio = row["ratio"]
        if s.higher_is_better:
            ok = ratio is not None and ratio >= s.target
            return f">={s.target:.2f}{' ok' if ok else ' NO'}"
        ok = ratio is not None and ratio <= s.target
        return f"<={s.target:.2f}{' ok' if ok else ' NO'}"
    if s.limit is not None:
        real = row["real"]
        ok = real is not None and (real >= s.limit if s.higher_is_better else real <= s.limit)
        return f"{'>=' if s.higher_is_better else '<='}{s.limit:g}{' ok' if ok else ' NO'}"
    return ""


def table(plan: list[Scenario], summaries: list[dict[str, Any]]) -> str:
    width = max([27, *(len(s.name) for s in plan)])
    head = (
        f"{'scenario':<{width}} {'engine':<7} {'metric':<17} {'real':>10} {'reference':>10}"
        f" {'ratio':>6} {'target':>9}  errors"
    )
    lines = [head, "-" * len(head)]
    for s, summary in zip(plan, summaries, strict=True):
        errors = summary["errors"]
        error_text = f"{errors['real']}/{errors['reference']}"
        first = True
        for key in [s.metric, *(k for k in LABELS if k != s.metric)]:
            if key not in summary:
                continue
            label, digits = LABELS[key]
            row = summary[key]
            shows_target = first or (key == "per_cpu_s" and s.target is not None)
            target = verdict(s, row) if shows_target else ""
            lines.append(
                f"{s.name if first else '':<{width}} {summary['engine'] if first else '':<7}"
                f" {label:<17} {fmt(row['real'], digits):>10}"
                f" {fmt(row['reference'], digits):>10} {fmt(row['ratio'], 2):>6} {target:>9}"
                f"  {error_text if first else ''}"
            )
            first = False
        for i, (key, row) in enumerate(summary.get("metrics_overhead", {}).items()):
            label = "per CPU-s on/off" if key == "per_cpu_s" else f"{LABELS[key][0]} on/off"
            ok = row["ratio"] is not None and row["ratio"] >= METRICS_TARGET
            target = f">={METRICS_TARGET:.2f}{' ok' if ok else ' NO'}"
            lines.append(
                f"{'' if i else '  metrics on / off':<{width}} {'':<7} {label:<17}"
                f" {fmt(row['on']):>10} {fmt(row['off']):>10} {fmt(row['ratio'], 3):>6}"
                f" {target:>9}  {'' if i else sum(errors.get(k, 0) for k in PAIR)}"
            )
    return "\n".join(lines)
