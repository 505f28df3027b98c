"""``make compliance``: the Autobahn TestSuite against the real server, through kosoku.

Starts ``echo-server`` as a subprocess (``harness.process.ServerProcess``) on a free
loopback port (any origin, compression on, messages up to 16 MiB), runs every
fuzzing-client case with kosoku's command line, then reads the report it wrote and
prints the counts per verdict, the cases that are not OK and the run time. Exits 1 if
any case failed (FAILED, UNIMPLEMENTED, ERROR, or a closing behaviour that is not
OK/INFORMATIONAL), or if fewer cases ran than expected.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
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


def run(out_dir: Path, parallel: int, cases: list[str]) -> int:
    kosoku = shutil.which("kosoku", path=str(Path(sys.executable).parent)) or shutil.which("kosoku")
    if kosoku is None:
        print("compliance: kosoku is not installed; run 'make install'", file=sys.stderr)
        return 2
    env = {**os.environ, **SERVER_ENV, "PORT": str(free_port())}
    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.mkdir(parents=True)
    # cwd: the report directory, so a developer's .env cannot change the settings.
    server = ServerProcess(env, out_dir, out_dir / "server.log")
    try:
        try:
            server.wait_ready(20.0)
        except (RuntimeError, TimeoutError) as error:
            print(f"compliance: the server did not start: {error}", file=sys.stderr)
            return 1
        command = [kosoku, "-m", "fuzzingclient", "-o", str(out_dir), "-p", str(parallel)]
        for case in cases:
            command += ["-i", case]
        command.append(server.url)
        started = time.monotonic()
        kosoku_run = subprocess.run(command, capture_output=True, text=True, check=False)
        seconds = time.monotonic() - started
    finally:
        server.stop(graceful=True, timeout=30.0)
    index = out_dir / "index.json"
    if not index.is_file():
        print(kosoku_run.stdout + kosoku_run.stderr, file=sys.stderr)
        print("compliance: kosoku wrote no report", file=sys.stderr)
        return 1
    results = read_report(index)
    table, ok = summarise(results, seconds)
    print(table)
    print(f"report: {out_dir / 'index.html'}")
    if cases:  # a partial run is for development: judge only what ran
        ok = all(r.passed for r in results)
    return 0 if ok and (kosoku_run.returncode == 0) else 1


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m compliance", description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("reports/autobahn"))
    parser.add_argument("--parallel", type=int, default=1, help="cases run at once")
    parser.add_argument(
        "--case", action="append", default=[], help="only this case id or glob (repeatable)"
    )
    args = parser.parse_args(argv)
    sys.exit(run(args.out, args.parallel, args.case))


if __name__ == "__main__":
    main()
