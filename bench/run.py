"""``make bench``: the echo server against a bare aiohttp echo, side by side.

For each round and scenario it starts a fresh real server (``python -m echo.server``)
and a fresh reference (``python -m bench.reference``) and drives each from its own
load-generator process (``bench.client``). The two run at the same time, both
servers pinned to one CPU and both load generators to another (where the machine has
two), so whatever else the machine does hits both alike: run one after the other, as
``--sequential`` does, the ratio of a round scattered from 0.65 to 1.3 on the shared
development machine, run together two identical servers agree within a few percent.
Each row names the engine the real server ran, as its /healthz reported it (ENGINE is
inherited from the environment, default auto; the plain-engine row sets
ENGINE=plain). The report leads with the median over rounds of each metric's ratio
(real / reference); messages per server CPU-second is the figure least moved by sharing the
CPU. Idle memory is measured one server at a time. The small-message echo scenarios
also measure what the metrics cost the same way: the real server with METRICS=true and
one with METRICS=false at the same time; the report gives the ratio metrics on / off of
messages per second and per server CPU-second (the issue asks for at most 3%). The
table goes to stdout and every raw figure to ``reports/bench.json``. Exit status 1 if
any echo was wrong, any connection failed or a row ran another engine than it asked
for, so the short run in CI keeps the harness honest.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import urllib.request
from dataclasses import asdict
from pathlib import Path
from typing import Any

import aiohttp

from bench.report import PAIR, fmt, summarise, table
from bench.scenarios import Scenario, scenarios
from harness.ports import free_port
from harness.process import ServerProcess, child_env

SERVERS = ("real", "reference")
NO_METRICS = "nometrics"  # the real server with METRICS=false
REPORT = Path("reports/bench.json")


def pin(pid: int, cpu: int) -> None:
    """Pin ``pid`` to ``cpu`` if this process may use more than one CPU."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) > 1:
        os.sched_setaffinity(pid, {cpus[cpu % len(cpus)]})


def start_server(s: Scenario, which: str, workdir: Path) -> ServerProcess:
    """One server under test (``which``: real, nometrics or reference) for scenario
    ``s`` on a free loopback port, pinned to the servers' CPU, once it accepts
    connections.

    The working directory is an empty one, so a developer's .env cannot change the
    settings. The environment is inherited, ENGINE included, unless the scenario names
    the engine.
    """
    port = free_port()
    env = {**os.environ, "HOST": "127.0.0.1", "PORT": str(port)}
    module = "bench.reference"
    if which in ("real", NO_METRICS):
        module = "echo.server"
        env.update(
            ALLOWED_ORIGINS="*",
            ALLOW_MISSING_ORIGIN="true",
            MAX_CONNECTIONS=str(s.connections + 100),
            LOG_LEVEL="warning",
            METRICS="false" if which == NO_METRICS else "true",
        )
        if s.engine is not None:
            env["ENGINE"] = s.engine
    server = ServerProcess(env, workdir, workdir / f"{which}-{port}.log", module=module)
    try:
        pin(server.pid, 0)
        server.wait_ready(20.0, healthz=module == "echo.server")
    except BaseException:
        server.stop()
        raise
    return server


def engine_of(server: ServerProcess) -> str | None:
    """The engine the echo server says it runs (/healthz ``engine``), or None if it
    does not say (a server from before engines)."""
    with urllib.request.urlopen(f"{server.http}/healthz", timeout=5) as reply:
        engine = json.load(reply).get("engine")
    return None if engine is None else str(engine)


def run_together(
    s: Scenario, which: tuple[str, ...], duration: float, warmup: float, workdir: Path
) -> list[Any]:
    """Run scenario ``s`` against each server of ``which`` at the same time (servers on
    one CPU, their load generators on another); one result per server, with the engine
    the server reported."""
    servers: list[ServerProcess] = []
    engines: list[str | None] = []
    outs: list[str] = []
    try:
        for w in which:
            servers.append(start_server(s, w, workdir))
            engines.append(None if w == "reference" else engine_of(servers[-1]))
        clients = []
        for server in servers:
            params = {
                "mode": s.mode,
                "port": server.port,
                "server_pid": server.pid,
                "connections": s.connections,
                "kind": s.kind,
                "size": s.size,
                "in_flight": s.in_flight,
                "duration": min(duration, 2.0) if s.mode == "idle" else duration,
                "warmup": warmup,
            }
            client = subprocess.Popen(
                [sys.executable, "-m", "bench.client", json.dumps(params)],
                env=child_env(dict(os.environ)),
                stdout=subprocess.PIPE,
                text=True,
            )
            pin(client.pid, 1)
            clients.append(client)
        outs = [client.communicate(timeout=duration + warmup + 180)[0] for client in clients]
    finally:
        for server in servers:
            server.stop(graceful=True)
    results = [parse_result(out) for out in outs]
    for result, engine in zip(results, engines, strict=True):
        result["engine"] = engine
    return results


def run_one(s: Scenario, which: str, duration: float, warmup: float, workdir: Path) -> Any:
    return run_together(s, (which,), duration, warmup, workdir)[0]


def parse_result(out: str) -> Any:
    try:
        return json.loads(out.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return {"errors": 1, "first_error": f"no result from the load generator: {out!r}"}


def raise_fd_limit() -> None:
    """Raise the soft open-files limit to the hard one; child processes inherit it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="short run for CI")
    parser.add_argument("--rounds", type=int, help="alternations per scenario (5; quick 1)")
    parser.add_argument("--duration", type=float, help="seconds measured (3; quick 1)")
    parser.add_argument("--only", help="run only scenarios whose name contains this")
    parser.add_argument(
        "--sequential",
        action="store_true",
        help="run the real and the reference server one after the other, each with a CPU"
        " to itself, instead of at the same time (steadier absolute figures on a quiet"
        " machine, scattered ratios on a shared one)",
    )
    parser.add_argument("--report", type=Path, default=REPORT)
    args = parser.parse_args(argv)
    rounds = args.rounds or (1 if args.quick else 5)
    duration = args.duration or (1.0 if args.quick else 3.0)
    warmup = 0.3 if args.quick else 1.0
    raise_fd_limit()
    plan = [s for s in scenarios(args.quick) if not args.only or args.only in s.name]
    limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    for s in plan:
        if s.mode == "idle" and s.connections + 200 > limit:
            print(f"note: open-files limit {limit} caps idle connections", file=sys.stderr)
            object.__setattr__(s, "connections", max(limit - 200, 1))
    results: dict[str, dict[str, list[dict[str, Any]]]] = {
        s.name: {w: [] for w in SERVERS + (PAIR if s.metrics_overhead else ())} for s in plan
    }
    with tempfile.TemporaryDirectory(prefix="echo-bench-") as tmp:
        for r in range(rounds):
            order = SERVERS if r % 2 == 0 else SERVERS[::-1]
            for s in plan:
                if s.metrics_overhead:
                    pair = ("real", NO_METRICS) if r % 2 == 0 else (NO_METRICS, "real")
                    ran = run_together(s, pair, duration, warmup, Path(tmp))
                    runs = dict(zip(pair, ran, strict=True))
                    for key, which in zip(PAIR, ("real", NO_METRICS), strict=True):
                        results[s.name][key].append(runs[which])
                        print(
                            f"round {r + 1}/{rounds} {s.name} [{key}, concurrent,"
                            f" engine {runs[which].get('engine')}]"
                            f" {s.metric}={fmt(runs[which].get(s.metric), 1)}"
                            f" errors={runs[which].get('errors', 0)}"
                            f" {runs[which].get('first_error', '')}",
                            file=sys.stderr,
                        )
                if s.mode == "idle" or args.sequential:
                    ran = [run_one(s, which, duration, warmup, Path(tmp)) for which in order]
                    how = ""
                else:
                    ran = run_together(s, order, duration, warmup, Path(tmp))
                    how = ", concurrent"
                for which, result in zip(order, ran, strict=True):
                    results[s.name][which].append(result)
                    shown = fmt(result.get(s.metric), 1)
                    err = result.get("errors", 0)
                    ran_on = f", engine {result.get('engine')}" if which == "real" else ""
                    print(
                        f"round {r + 1}/{rounds} {s.name} [{which}{how}{ran_on}]"
                        f" {s.metric}={shown}"
                        f" errors={err} {result.get('first_error', '')}",
                        file=sys.stderr,
                    )
    summaries = [summarise(s, results[s.name]) for s in plan]
    wrong_engine = False
    for s, summary in zip(plan, summaries, strict=True):
        if s.engine is not None and summary["engine"] != s.engine:
            # A server that names no engine ("?") predates engines: noted, not failed.
            wrong_engine = wrong_engine or summary["engine"] != "?"
            print(
                f"note: {s.name}: asked for ENGINE={s.engine}, the server reported"
                f" {summary['engine']} on /healthz",
                file=sys.stderr,
            )
    print(table(plan, summaries))
    report = {
        "command": " ".join(["python -m bench", *(argv if argv is not None else sys.argv[1:])]),
        "rounds": rounds,
        "duration_s": duration,
        "machine": {
            "cpus": sorted(os.sched_getaffinity(0)),
            "python": platform.python_version(),
            "aiohttp": aiohttp.__version__,
            "open_files_limit": limit,
        },
        "scenarios": [
            {**asdict(s), "summary": summary, "runs": results[s.name]}
            for s, summary in zip(plan, summaries, strict=True)
        ],
    }
    args.report.parent.mkdir(parents=True, exist_ok=True)
    args.report.write_text(json.dumps(report, indent=2) + "\n")
    print(f"report: {args.report}")
    failed = any(sum(x["errors"].values()) for x in summaries)
    return 1 if failed or wrong_engine else 0


if __name__ == "__main__":
    sys.exit(main())
