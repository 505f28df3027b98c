"""``make compliance``: the Autobahn TestSuite against the real server, through kosoku.

For each engine (``--engine``; by default the fast and the plain one) it starts
``echo-server`` with that ENGINE as a subprocess (``harness.process.ServerProcess``) on
a free loopback port (any origin, compression on, messages up to 16 MiB) and runs every
fuzzing-client case against it with kosoku's command line, the engines' runs at the
same time (``--sequential``: one after the other). Then it reads each report and prints
the counts per verdict, the cases that are not OK and the run time. Exits 1 if any case
failed on any engine (FAILED, UNIMPLEMENTED, ERROR, or a closing behaviour that is not
OK/INFORMATIONAL), if fewer cases ran than expected, or if a server runs another engine
than the one asked for (as its /healthz says).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.ports import free_port
from harness.process import ServerProcess

EXPECTED_CASES = 517
VERDICTS = ("OK", "NON-STRICT", "INFORMATIONAL", "UNIMPLEMENTED", "FAILED", "ERROR")
PASSING = frozenset({"OK", "NON-STRICT", "INFORMATIONAL"})
PASSING_CLOSE = frozenset({"OK", "INFORMATIONAL"})
SERVER_ENV = {
    "HOST": "127.0.0.1",
    "ALLOWED_ORIGINS": "*",
    "ALLOW_MISSING_ORIGIN": "true",
    "MAX_MESSAGE_SIZE": str(16 * 1024 * 1024),  # the largest case (9.1.6) is 16 MiB
    "COMPRESSION": "true",
    "LOG_LEVEL": "warning",
}


@dataclass(frozen=True, slots=True)
class CaseResult:
    case_id: str
    behavior: str
    behavior_close: str

    @property
    def passed(self) -> bool:
        return self.behavior in PASSING and self.behavior_close in PASSING_CLOSE


def case_key(case_id: str) -> tuple[int, ...]:
    return tuple(int(part) for part in case_id.split("."))


def read_report(index: Path) -> list[CaseResult]:
    """The results in kosoku's ``index.json``: ``{agent: {case_id: {behavior, ...}}}``."""
    agents: Mapping[str, Mapping[str, Mapping[str, Any]]] = json.loads(index.read_text())
    results = [
        CaseResult(case_id, str(entry["behavior"]), str(entry["behaviorClose"]))
        for cases in agents.values()
        for case_id, entry in cases.items()
    ]
    return sorted(results, key=lambda r: case_key(r.case_id))


def summarise(results: list[CaseResult], seconds: float) -> tuple[str, bool]:
    """A printable table and whether the run passes."""
    counts = Counter(r.behavior for r in results)
    failed = [r for r in results if not r.passed]
    lines = [f"Autobahn TestSuite: {len(results)} cases in {seconds:.1f} s", ""]
    lines += [f"  {verdict:<14} {counts.get(verdict, 0):>4}" for verdict in VERDICTS]
    for verdict in ("NON-STRICT", "INFORMATIONAL"):
        ids = [r.case_id for r in results if r.behavior == verdict]
        if ids:
            lines.append(f"\n{verdict}: {' '.join(ids)}")
    if failed:
        lines.append("\nFAILED cases:")
        lines += [f"  {r.case_id}: behavior={r.behavior} close={r.behavior_close}" for r in failed]
    ok = not failed and len(results) >= EXPECTED_CASES
    if len(results) < EXPECTED_CASES:
        lines.append(f"\nonly {len(results)} of {EXPECTED_CASES} cases ran")
    lines.append(f"\n{len(results) - len(failed)} of {len(results)} passing")
    return "\n".join(lines), ok


ENGINES = ("fast", "plain")  # what `make compliance` runs, each against its own server
RUN_TIMEOUT = 3600.0  # seconds for one engine's kosoku run; the full suite takes minutes


@dataclass
class EngineRun:
    """One engine's run: its server, its kosoku process, where both write."""

    engine: str
    out_dir: Path
    server: ServerProcess
    reported: str | None = None  # the engine /healthz names, if it names one
    kosoku: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    seconds: float = 0.0


def default_parallel(runs_at_once: int) -> int:
    """Cases per kosoku run so that all runs together keep every CPU busy.

    A case is a strict ping-pong (one message in flight), so one case keeps about one
    CPU busy between kosoku and the server; see docs/testing.md for the measurements.
    """
    return max(1, len(os.sched_getaffinity(0)) // runs_at_once)


def find_kosoku() -> str | None:
    return shutil.which("kosoku", path=str(Path(sys.executable).parent)) or shutil.which("kosoku")


def reported_engine(server: ServerProcess) -> str | None:
    """The engine the server says it runs (/healthz ``engine``), or None if it does not say."""
    with urllib.request.urlopen(f"{server.http}/healthz", timeout=5) as reply:
        engine = json.load(reply).get("engine")
    return None if engine is None else str(engine)


def start(engine: str, out_dir: Path) -> EngineRun:
    """A server with ENGINE=``engine`` on a free port, its reports in ``out_dir``."""
    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.mkdir(parents=True)
    env = {**os.environ, **SERVER_ENV, "ENGINE": engine, "PORT": str(free_port())}
    # cwd: the report directory, so a developer's .env cannot change the settings.
    run = EngineRun(engine, out_dir, ServerProcess(env, out_dir, out_dir / "server.log"))
    try:
        run.server.wait_ready(20.0)
        run.reported = reported_engine(run.server)
    except BaseException:
        run.server.stop()
        raise
    return run


def launch(run: EngineRun, kosoku: str, parallel: int, cases: list[str]) -> None:
    """Start kosoku's fuzzing client against ``run``'s server; its output goes to
    kosoku.log beside the report."""
    command = [kosoku, "-m", "fuzzingclient", "-o", str(run.out_dir), "-p", str(parallel)]
    for case in cases:
        command += ["-i", case]
    command.append(run.server.url)
    with (run.out_dir / "kosoku.log").open("wb") as log:
        run.kosoku = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    run.started = time.monotonic()


def wait(runs: list[EngineRun], deadline: float) -> list[int]:
    """Wait for every run's kosoku (until ``deadline``, then kill what is left), noting
    when each finished; their exit statuses."""
    pending = {id(run): run for run in runs}
    while pending and time.monotonic() < deadline:
        for key, run in list(pending.items()):
            assert run.kosoku is not None
            if run.kosoku.poll() is not None:
                run.seconds = time.monotonic() - run.started
                del pending[key]
        time.sleep(0.2)
    for run in pending.values():
        assert run.kosoku is not None
        run.kosoku.kill()
        run.kosoku.wait()
        run.seconds = time.monotonic() - run.started
        print(f"compliance: {run.engine}: kosoku did not finish in time", file=sys.stderr)
    statuses = []
    for run in runs:
        assert run.kosoku is not None
        statuses.append(1 if id(run) in pending else run.kosoku.returncode)
    return statuses


def wrong_engine(asked: str, reported: str | None) -> str | None:
    """Why a run does not count for the engine ``asked`` when /healthz names
    ``reported``, or None if it counts (a server that names no engine predates them)."""
    if reported is None or asked == "auto" or reported == asked:
        return None
    return f"asked for ENGINE={asked}, the server runs {reported}"


def verdict(run: EngineRun, status: int, partial: bool) -> bool:
    """Print ``run``'s table; whether it passed."""
    print(f"== engine {run.engine} (/healthz says: {run.reported or 'nothing'})")
    mismatch = wrong_engine(run.engine, run.reported)
    if mismatch is not None:
        print(f"compliance: {mismatch}")
        return False
    index = run.out_dir / "index.json"
    if not index.is_file():
        print((run.out_dir / "kosoku.log").read_text(errors="replace"), file=sys.stderr)
        print("compliance: kosoku wrote no report", file=sys.stderr)
        return False
    results = read_report(index)
    table, ok = summarise(results, run.seconds)
    print(table)
    print(f"report: {run.out_dir / 'index.html'}\n")
    if partial:  # a partial run is for development: judge only what ran
        ok = all(r.passed for r in results)
    return ok and status == 0


def run_engines(
    engines: list[str], out_dir: Path, parallel: int, cases: list[str], sequential: bool
) -> int:
    """Run the suite against one server per engine, all at once unless ``sequential``;
    exit status 0 only if every engine passes."""
    kosoku = find_kosoku()
    if kosoku is None:
        print("compliance: kosoku is not installed; run 'make install'", file=sys.stderr)
        return 2
    runs: list[EngineRun] = []
    statuses: list[int] = []
    started = time.monotonic()
    try:
        batches = [[e] for e in engines] if sequential else [engines]
        for batch in batches:
            fresh: list[EngineRun] = []
            for engine in batch:
                try:
                    fresh.append(start(engine, out_dir / engine))
                except (RuntimeError, TimeoutError, OSError) as error:
                    print(f"compliance: {engine}: the server did not start: {error}")
                    return 1
                runs.append(fresh[-1])
            for run in fresh:
                launch(run, kosoku, parallel, cases)
            deadline = time.monotonic() + RUN_TIMEOUT
            statuses += wait(fresh, deadline)
    finally:
        for run in runs:
            if run.kosoku is not None and run.kosoku.poll() is None:
                run.kosoku.kill()
                run.kosoku.wait()
            run.server.stop(graceful=True, timeout=30.0)
    passed = [verdict(run, status, bool(cases)) for run, status in zip(runs, statuses, strict=True)]
    total = time.monotonic() - started
    how = "one after the other" if sequential else "at the same time"
    summary = ", ".join(f"{r.engine} {r.seconds:.0f} s" for r in runs)
    print(f"Autobahn TestSuite on {len(runs)} engine(s), {how}: {total:.0f} s ({summary})")
    return 0 if all(passed) else 1


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m compliance", description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("reports/autobahn"))
    parser.add_argument(
        "--engine",
        action="append",
        choices=("auto", "fast", "plain"),
        help="ENGINE of the server under test (repeatable; default: fast and plain)",
    )
    parser.add_argument(
        "--sequential",
        action="store_true",
        help="run the engines one after the other instead of at the same time",
    )
    parser.add_argument(
        "--parallel",
        type=int,
        help="cases run at once per engine (default: the CPUs divided among the engines)",
    )
    parser.add_argument(
        "--case", action="append", default=[], help="only this case id or glob (repeatable)"
    )
    args = parser.parse_args(argv)
    engines = list(dict.fromkeys(args.engine or ENGINES))
    parallel = args.parallel or default_parallel(1 if args.sequential else len(engines))
    sys.exit(run_engines(engines, args.out, parallel, args.case, args.sequential))


if __name__ == "__main__":
    main()
