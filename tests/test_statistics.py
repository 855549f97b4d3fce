"""Success rates come with their Wilson 95% intervals: the function, and every place a rate is reported."""

from __future__ import annotations

import pytest

from vla.eval.report import markdown_table
from vla.eval.results import group_rates
from vla.statistics import format_rate, wilson_interval


def test_wilson_interval_matches_the_textbook_values():
    # Wilson score interval, z = 1.959964: 23/30 -> [0.5907, 0.8821] (the demo's result).
    lo, hi = wilson_interval(23, 30)
    assert lo == pytest.approx(0.590717, abs=1e-5) and hi == pytest.approx(0.882076, abs=1e-5)
    assert wilson_interval(0, 10)[0] == 0.0 and 0.25 < wilson_interval(0, 10)[1] < 0.35  # never [0, 0]
    assert wilson_interval(10, 10)[1] == pytest.approx(1.0) and wilson_interval(10, 10)[0] < 0.75
    assert wilson_interval(0, 0) == (0.0, 1.0)  # nothing tried: nothing known


def test_more_trials_narrow_the_interval():
    widths = [hi - lo for lo, hi in (wilson_interval(n // 2, n) for n in (10, 40, 160))]
    assert widths[0] > widths[1] > widths[2]


def test_group_rates_and_tables_carry_the_interval():
    records = [{"task": "a", "success": i < 23, "steps": 10, "wall_s": 1.0} for i in range(30)]
    row = group_rates(records, "task")["a"]
    assert row["ci95"] == pytest.approx(list(wilson_interval(23, 30)))
    table = markdown_table({"tasks": [{"task": "a", "name": "", **row}], "groups": {}})
    assert "76.7% [59.1, 88.2]" in table and "95% CI" in table
    assert format_rate(0.5, None) == "50.0%"
