"""The Autobahn harness: real kosoku cases against the real server, and the verdict logic."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from compliance.autobahn import CaseResult, read_report, summarise, wrong_engine
from harness.process import ROOT
from tests.support import clean_env


def test_close_code_and_16_mib_cases_pass_against_the_real_server_on_both_engines(
    tmp_path: Path,
) -> None:
    # 7.9.5 (close code 1006 must be answered 1002) and 9.1.6 (16 MiB) are the cases a
    # plain aiohttp echo handler fails; `make compliance` runs all 517 on both engines.
    out = tmp_path / "autobahn"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "compliance",
            "--out",
            str(out),
            "--case",
            "7.9.*",
            "--case",
            "9.1.6",
            "--case",
            "12.1.1",
        ],
        env=clean_env(),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    for engine in ("fast", "plain"):
        assert f"== engine {engine}" in result.stdout
        verdicts = {r.case_id: r for r in read_report(out / engine / "index.json")}
        assert verdicts["7.9.5"].behavior == "OK", engine
        assert verdicts["7.9.5"].behavior_close == "OK", engine
        assert verdicts["9.1.6"].passed, engine
        assert verdicts["12.1.1"].behavior == "OK", f"{engine}: permessage-deflate not negotiated"
        assert (out / engine / "index.html").is_file()


def test_a_failed_case_fails_the_run(tmp_path: Path) -> None:
    index = tmp_path / "index.json"
    index.write_text(
        json.dumps(
            {
                "agent": {
                    "1.1.1": {"behavior": "OK", "behaviorClose": "OK"},
                    "7.9.5": {"behavior": "FAILED", "behaviorClose": "WRONG CODE"},
                    "6.4.1": {"behavior": "NON-STRICT", "behaviorClose": "OK"},
                }
            }
        )
    )
    results = read_report(index)
    assert [r.case_id for r in results] == ["1.1.1", "6.4.1", "7.9.5"]
    table, ok = summarise(results, 1.0)
    assert not ok
    assert "7.9.5: behavior=FAILED close=WRONG CODE" in table


def test_unclean_close_or_unimplemented_is_not_passing() -> None:
    assert not CaseResult("1.1.1", "OK", "UNCLEAN").passed
    assert not CaseResult("12.1.1", "UNIMPLEMENTED", "OK").passed
    assert CaseResult("7.13.1", "INFORMATIONAL", "INFORMATIONAL").passed


def test_fewer_cases_than_the_suite_is_not_a_pass() -> None:
    _table, ok = summarise([CaseResult("1.1.1", "OK", "OK")], 1.0)
    assert not ok


def test_a_run_on_another_engine_than_asked_does_not_count() -> None:
    assert wrong_engine("fast", "plain") == "asked for ENGINE=fast, the server runs plain"
    assert wrong_engine("plain", "fast") is not None
    assert wrong_engine("plain", "plain") is None
    assert wrong_engine("auto", "plain") is None
