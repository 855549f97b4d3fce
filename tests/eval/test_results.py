"""The results log (append, torn lines, duplicates, settings checks) and per-group rates, no simulator."""

from __future__ import annotations

import json

import pytest

from vla.eval.episodes import EpisodeResult, EvalError, derive_seed, parse_ids
from vla.eval.results import ResultsLog, group_rates

SETTINGS = {"preset": "openpi", "max_steps": 12, "tasks": [1], "init_states": [0, 1]}


def result(init: int, success: bool = False, task: str = "s/1", steps: int = 10) -> EpisodeResult:
    return EpisodeResult(
        episode_id=f"{task}/{init}",
        task=task,
        task_id=1,
        init_state_id=init,
        seed=7,
        policy_seed=derive_seed(0, f"{task}/{init}"),
        success=success,
        steps=steps,
        policy_calls=2,
        actions_executed=steps,
        actions_discarded=0,
        wall_s=0.5,
        meta={"suite": "s"},
    )


def test_append_then_reopen_keeps_every_finished_episode(tmp_path):
    log = ResultsLog(tmp_path).open(SETTINGS)
    assert log.append(result(0, True)) and log.append(result(1))
    assert not log.append(result(1)), "an episode id already logged must not be written twice"
    lines = (tmp_path / "episodes.jsonl").read_text().splitlines()
    assert len(lines) == 2
    record = json.loads(lines[0])
    assert record["episode_id"] == "s/1/0" and record["success"] is True and record["suite"] == "s"
    assert EpisodeResult.from_json(record) == result(0, True)
    again = ResultsLog(tmp_path).open(SETTINGS)
    assert again.done_ids() == {"s/1/0", "s/1/1"} and again.dropped_lines == 0


def test_a_torn_last_line_is_dropped_and_new_lines_stay_readable(tmp_path):
    log = ResultsLog(tmp_path).open(SETTINGS)
    log.append(result(0))
    with open(log.path, "a") as f:
        f.write('{"episode_id": "s/1/1", "succ')  # the run was killed mid-write
    reopened = ResultsLog(tmp_path).open(SETTINGS)
    assert reopened.done_ids() == {"s/1/0"} and reopened.dropped_lines == 1
    reopened.append(result(1, True))
    records = [json.loads(line) for line in log.path.read_text().splitlines()]
    assert [r["episode_id"] for r in records] == ["s/1/0", "s/1/1"]


def test_duplicate_lines_count_once(tmp_path):
    log = ResultsLog(tmp_path).open(SETTINGS)
    log.append(result(0))
    line = log.path.read_text()
    log.path.write_text(line + line.replace('"success": false', '"success": true'))
    reopened = ResultsLog(tmp_path).open(SETTINGS)
    assert reopened.duplicates == 1
    assert reopened.results() == [json.loads(line)], "the first record of an episode wins"


def test_resuming_with_other_settings_is_refused_but_selection_may_change(tmp_path):
    ResultsLog(tmp_path).open(SETTINGS).append(result(0))
    with pytest.raises(EvalError, match=r"other settings.*max_steps"):
        ResultsLog(tmp_path).open({**SETTINGS, "max_steps": 20}, selection=("tasks", "init_states"))
    extended = ResultsLog(tmp_path).open({**SETTINGS, "init_states": [0, 1, 2]}, selection=("tasks", "init_states"))
    assert extended.done_ids() == {"s/1/0"}
    fresh = ResultsLog(tmp_path).open({**SETTINGS, "max_steps": 20}, resume=False)
    assert fresh.done_ids() == set() and not fresh.path.exists()


def test_group_rates():
    records = [result(i, success=i < 3, task="a" if i < 4 else "b", steps=i).to_json() for i in range(6)]
    rates = group_rates(records, "task")
    assert rates["a"]["trials"] == 4 and rates["a"]["successes"] == 3 and rates["a"]["success_rate"] == 0.75
    assert rates["a"]["mean_steps_success"] == 1.0 and rates["b"]["mean_steps_success"] is None
    assert group_rates(records, "suite")["s"]["success_rate"] == 0.5


def test_parse_ids_and_seeds():
    assert parse_ids("40-42, 7") == [40, 41, 42, 7]
    assert parse_ids("1,1,2") == [1, 2]
    with pytest.raises(EvalError, match="cannot read ids"):
        parse_ids("a-b")
    assert derive_seed(0, "x/1/2") == derive_seed(0, "x/1/2") != derive_seed(1, "x/1/2")
