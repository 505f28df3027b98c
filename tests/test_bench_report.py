"""The benchmark's report: engines named per row, ratios paired by round, targets judged."""

from __future__ import annotations

from typing import Any

from bench.report import summarise, table
from bench.scenarios import Scenario, scenarios


def run(value: float, engine: str | None = None, errors: int = 0) -> dict[str, Any]:
    return {"msgs_per_s": value, "cpu_s_per_1k": 0.01, "engine": engine, "errors": errors}


def test_each_row_names_the_engine_the_server_reported() -> None:
    s = Scenario("plain row", "echo", 10, engine="plain")
    summary = summarise(s, {"real": [run(100, "plain")], "reference": [run(100)]})
    assert summary["engine"] == "plain"
    assert summary["engine_requested"] == "plain"
    first = table([s], [summary]).splitlines()[2]
    assert first.split()[:3] == ["plain", "row", "plain"]


def test_a_server_that_names_no_engine_is_shown_as_unknown() -> None:
    s = Scenario("row", "echo", 10)
    summary = summarise(s, {"real": [run(100), run(100, "fast")], "reference": [run(1), run(1)]})
    assert summary["engine"] == "?/fast"


def test_the_ratio_is_the_median_of_each_rounds_ratio() -> None:
    s = Scenario("row", "echo", 10, target=1.1)
    real = [run(110), run(300), run(90)]
    reference = [run(100), run(100), run(100)]
    summary = summarise(s, {"real": real, "reference": reference})
    assert summary["msgs_per_s"]["ratio"] == 1.1
    assert ">=1.10 ok" in table([s], [summary])
    summary = summarise(s, {"real": [run(100)], "reference": [run(100)]})
    assert ">=1.10 NO" in table([s], [summary])


def test_a_lower_is_better_target_is_a_ceiling() -> None:
    s = Scenario("worst echo", "echo", 10, metric="msgs_per_s", higher_is_better=False, target=1.0)
    summary = summarise(s, {"real": [run(90)], "reference": [run(100)]})
    assert "<=1.00 ok" in table([s], [summary])
    summary = summarise(s, {"real": [run(120)], "reference": [run(100)]})
    assert "<=1.00 NO" in table([s], [summary])


def test_the_plain_engine_row_is_in_the_quick_run_too() -> None:
    for quick in (True, False):
        plan = scenarios(quick)
        assert [s.mode for s in plan if s.engine == "plain"] == ["echo"]
        # The rest run the caller's ENGINE (default auto), where the targets apply.
        assert [s.engine for s in plan].count(None) == len(plan) - 1
