"""The CALVIN harness end to end on the fake backend (vla.testing, handed in through the Python API):
chains through the generic runner (1 and 2 workers), one JSONL line per chain, resume after a kill,
per-position rates, average length, report, plot, summary and videos; a CALVIN-store checkpoint
running unchanged; the CLI's options."""

from __future__ import annotations

import json
from io import StringIO
from pathlib import Path

import pytest
from rich.console import Console
from typer.testing import CliRunner

from tests.eval.helpers import save_checkpoint
from vla.cli import app
from vla.datasets.convert.calvin import CalvinConverter
from vla.datasets.declare import Declaration
from vla.eval.episodes import EvalError
from vla.eval.protocols.calvin import CalvinEvalConfig, chain_success_rates, evaluate_calvin, print_summary
from vla.eval.results import ResultsLog
from vla.sim.calvin.chains import evaluation_chains
from vla.testing.calvin_data import write_calvin_split
from vla.testing.calvin_fake import FakeBackendFactory, ScriptedPlanner

# Chains whose length the scripted planner reaches in the fake scene: 0, 1, 4, 2 and 5 subtasks.
CHAINS = [0, 1, 4, 13, 19]
LENGTHS = {0: 0, 1: 1, 4: 4, 13: 2, 19: 5}
VOLATILE = {"wall_s"}


def config(out: Path, **overrides) -> CalvinEvalConfig:
    base = {"out": out, "policy": ScriptedPlanner(), "backend": FakeBackendFactory(), "chain_ids": CHAINS, "videos": 2}
    return CalvinEvalConfig(**{**base, **overrides})


def records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "episodes.jsonl").read_text().splitlines()]


def stable(rows: list[dict]) -> dict[str, dict]:
    return {r["episode_id"]: {k: v for k, v in r.items() if k not in VOLATILE} for r in rows}


@pytest.fixture(scope="module")
def resumed_run(tmp_path_factory) -> tuple[Path, dict, dict]:
    """5 chains, killed while logging the third (a torn line left behind), then resumed."""
    out = tmp_path_factory.mktemp("calvin")
    real_append, calls = ResultsLog.append, []

    def append_then_die(self, result):
        if len(calls) == 2:
            raise KeyboardInterrupt
        calls.append(result.episode_id)
        return real_append(self, result)

    with pytest.MonkeyPatch.context() as mp, pytest.raises(KeyboardInterrupt):
        mp.setattr(ResultsLog, "append", append_then_die)
        evaluate_calvin(config(out), progress=False)
    assert len(records(out)) == 2 and not (out / "summary.json").exists()
    before = stable(records(out))
    with open(out / "episodes.jsonl", "a") as f:
        f.write('{"episode_id": "calvin/4", "stages": [{"succ')
    summary = evaluate_calvin(config(out), progress=False)
    return out, summary, before


def test_chains_are_logged_once_each_with_their_stages(resumed_run):
    out, summary, before = resumed_run
    rows = records(out)
    assert [r["chain"] for r in rows] == CHAINS, "each chain exactly once, in order"
    assert stable(rows[:2]) == before, "finished chains were not redone"
    chains = {c.index: c for c in evaluation_chains()}
    for r in rows:
        chain, n = chains[r["chain"]], LENGTHS[r["chain"]]
        assert r["episode_id"] == f"calvin/{chain.index}" and r["subtasks"] == list(chain.subtasks)
        assert r["state_id"] == chain.state_id and r["error"] is None
        stages = r["stages"]
        assert [s["name"] for s in stages] == list(chain.subtasks[: min(n + 1, 5)])  # stops at the first failure
        assert [s["success"] for s in stages] == [True] * n + [False] * (n < 5)
        assert r["success"] is (n == 5)
        assert r["steps"] == sum(s["steps"] for s in stages)
        if n < 5:
            assert stages[-1]["steps"] == 360  # a failed subtask used its whole budget
        assert r["language"] == stages[-1]["language"]
    assert summary["run"]["resumed_episodes"] == 2 and summary["run"]["dropped_log_lines"] == 1
    assert summary["throughput"]["episodes"] == 3, "only the missing chains ran"


def test_rates_by_position_and_average_length(resumed_run):
    _, summary, _ = resumed_run
    assert summary["chain_sr"] == {"1": 0.8, "2": 0.6, "3": 0.4, "4": 0.4, "5": 0.2}
    assert summary["avg_len"] == pytest.approx(2.4) == sum(LENGTHS.values()) / 5
    assert summary["length_histogram"] == {"0": 1, "1": 1, "2": 1, "3": 0, "4": 1, "5": 1}
    assert summary["complete"] and summary["chains"] == 5 and summary["successes"] == 1
    rows = {r["task"]: r for r in summary["tasks"]}
    assert rows["open_drawer"]["trials"] == rows["open_drawer"]["successes"] >= 1
    assert rows["rotate_blue_block_right"]["success_rate"] == 0.0
    assert summary["settings"]["max_steps_per_subtask"] == 360 and summary["simulator"]["backend"] == "fake"
    assert chain_success_rates([]) == [0.0] * 5


def test_report_plot_summary_and_videos(resumed_run):
    out, summary, _ = resumed_run
    on_disk = json.loads((out / "summary.json").read_text())
    assert on_disk["avg_len"] == pytest.approx(2.4) and on_disk["report"].endswith("report.md")
    report = (out / "report.md").read_text()
    assert "| 80.0% | 60.0% | 40.0% | 40.0% | 20.0% | **2.40** |" in report
    assert "![success plot](success.png)" in report and "| open_drawer |" in report
    assert (out / "success.png").stat().st_size > 1000
    videos = sorted(p.name for p in (out / "videos").glob("*.mp4"))
    assert len(videos) == 2 and all(v.startswith("failure_calvin-") for v in videos)  # failures first
    assert sorted(Path(v).name for v in summary["videos"]) == videos
    again = evaluate_calvin(config(out), progress=False)  # finished: nothing runs
    assert again["throughput"]["episodes"] == 0 and len(records(out)) == 5


def test_two_workers_give_the_same_chains(resumed_run, tmp_path):
    out, _, _ = resumed_run
    summary = evaluate_calvin(config(tmp_path, workers=2, videos=0), progress=False)
    assert summary["run"]["workers"] == 2 and summary["avg_len"] == pytest.approx(2.4)
    strip = {"wall_s", "policy_seed"}
    mine = {r["episode_id"]: {k: v for k, v in r.items() if k not in strip} for r in records(tmp_path)}
    assert mine == {r["episode_id"]: {k: v for k, v in r.items() if k not in strip} for r in records(out)}


def test_selection_errors_fail_before_any_chain(tmp_path):
    with pytest.raises(EvalError, match="out of range"):
        evaluate_calvin(config(tmp_path, chain_ids=[1000]), progress=False)
    with pytest.raises(EvalError, match="--chains"):
        evaluate_calvin(config(tmp_path, chain_ids=None, chains=0), progress=False)
    with pytest.raises(EvalError, match="planner object runs in this process"):
        evaluate_calvin(config(tmp_path, policy_in_workers=True), progress=False)
    assert not (tmp_path / "episodes.jsonl").exists()


def test_a_checkpoint_trained_on_a_calvin_store_runs_unchanged(tmp_path):
    split = write_calvin_split(tmp_path / "training", [(0, 3)], [], image_sizes=(32, 16))
    spec = CalvinConverter(split, Declaration()).spec()  # what `vla convert calvin` records
    ckpt = save_checkpoint(
        tmp_path / "ckpt",
        spec,
        state_dim=15,
        camera_keys=("observation.images.static",),
        chunk_size=4,
        n_action_steps=4,
    )
    out = tmp_path / "eval"
    summary = evaluate_calvin(
        CalvinEvalConfig(out=out, policy=str(ckpt), backend=FakeBackendFactory(), chain_ids=[0, 1], max_steps=6),
        progress=False,
    )
    assert summary["chains"] == 2 and summary["settings"]["cameras"] == ["static"]
    assert summary["settings"]["image_sizes"] == {"static": 32}
    rows = records(out)
    assert all(r["error"] is None and r["steps"] == 6 and r["policy_calls"] == 2 for r in rows)


def printed(summary: dict) -> str:
    out = StringIO()
    print_summary(summary, Console(file=out, width=200))
    return " ".join(out.getvalue().split())


def test_chosen_videos_resume_and_changed_settings(tmp_path, resumed_run):
    done = evaluate_calvin(config(tmp_path, videos=0, video_chains=[19]), progress=False)
    assert "avg. len" in printed(done) and done["avg_len"] == pytest.approx(2.4)
    assert [p.name for p in (tmp_path / "videos").glob("*.mp4")] == ["success_calvin-19.mp4"]
    resumed = evaluate_calvin(config(tmp_path, videos=0), progress=False)
    assert "0 chains run now, 5 from before" in printed(resumed)
    with pytest.raises(EvalError, match="max_steps_per_subtask"):
        evaluate_calvin(config(tmp_path, videos=0, max_steps=10), progress=False)


def test_cli_options():
    helped = CliRunner().invoke(app, ["eval", "calvin", "--help"])
    assert helped.exit_code == 0
    for flag in ("--policy", "--chains", "--workers", "--out", "--videos", "--resume"):
        assert flag in helped.output
    assert "--backend" not in helped.output, "test doubles are for the Python API only"


class ChunkingPlanner:
    """The scripted planner with 2 observation frames and 3-action chunks (its action, then two that hold
    still with the same gripper command); records what it was given."""

    n_obs = 2

    def __init__(self):
        self.inner = ScriptedPlanner()
        self.obs_keys = self.inner.obs_keys
        self.seen: list[tuple[int, str, bool]] = []  # (stage, language, both history frames equal)

    def plan(self, batch):
        import numpy as np

        from vla.policies.runtime import Plan

        last = {k: batch[k][:, -1:] for k in self.obs_keys}
        for i, stage in enumerate(batch["stage"]):
            same = all(np.array_equal(batch[k][i, 0], batch[k][i, 1]) for k in self.obs_keys)
            self.seen.append((stage, batch["task"][i], same))
        one = self.inner.plan({**batch, **last}).actions  # (B, 1, 7)
        still = np.zeros_like(one)
        still[..., 6] = one[..., 6]
        return Plan(np.concatenate([one, still, still], axis=1), np.full(len(one), 3))

    def describe(self):
        return {"type": "chunking"}


def test_stages_restart_history_and_drop_the_rest_of_a_chunk():
    from vla.eval.planners import PlannerSpec
    from vla.eval.protocols.calvin import CalvinEnvFactory, _episode
    from vla.eval.runner import run_episodes
    from vla.eval.worker import SlotConfig
    from vla.sim.calvin.instructions import instruction

    planner, results = ChunkingPlanner(), []
    factory = CalvinEnvFactory(FakeBackendFactory(), ("static",), (("static", 32),), 360)
    chain = evaluation_chains()[19]
    run_episodes(
        [_episode(chain, 0)],
        SlotConfig(factory, planner.n_obs, planner.obs_keys),
        PlannerSpec("unused"),
        planner=planner,
        on_result=lambda r, s, st: results.append(r),
    )
    (result,) = results
    assert result.success and result.stages_completed == 5
    firsts = {}
    for stage, language, same in planner.seen:
        firsts.setdefault(stage, (language, same))
    assert sorted(firsts) == [0, 1, 2, 3, 4]
    for stage, (language, same) in firsts.items():
        assert language == instruction(chain.subtasks[stage])
        assert same, "a new stage's first plan sees a fresh history (the current frame repeated)"
    assert result.actions_executed == result.steps == sum(s["steps"] for s in result.stages)
    assert result.actions_discarded > 0  # a stage that succeeded mid-chunk dropped the rest of it
    assert result.actions_executed + result.actions_discarded == 3 * result.policy_calls


def test_a_missing_simulator_is_one_clear_error_before_any_file(tmp_path, monkeypatch):
    import sys

    from vla.sim.base import SimError

    monkeypatch.setitem(sys.modules, "vla.sim.calvin.simulator", None)
    with pytest.raises(SimError, match="vla sim calvin-setup PATH"):
        evaluate_calvin(CalvinEvalConfig(out=tmp_path / "out", chain_ids=[0]), progress=False)
    assert not (tmp_path / "out").exists()


def test_real_simulator_runs_chains_when_installed(tmp_path):
    pytest.importorskip("calvin_env", reason="the optional CALVIN simulator is not installed")
    summary = evaluate_calvin(
        CalvinEvalConfig(out=tmp_path, chain_ids=[0, 1], max_steps=3, renderer="tiny", videos=1), progress=False
    )
    assert summary["chains"] == 2 and summary["errors"] == 0 and summary["simulator"]["backend"] == "calvin_env"
    assert summary["simulator"]["commit"] and summary["avg_len"] == 0.0  # 3 random steps complete nothing
    assert all(r["steps"] == 3 for r in records(tmp_path))
    assert len(list((tmp_path / "videos").glob("*.mp4"))) == 1


# --- --subtasks: a non-protocol filter of the chains ----------------------------------------------------
SCRIPTED = ("move_slider_left", "move_slider_right", "open_drawer", "close_drawer", "turn_on_led", "turn_off_led",
            "turn_on_lightbulb", "turn_off_lightbulb")  # fmt: skip


def test_filter_keeps_chains_starting_in_the_set_cut_before_the_first_outside():
    from vla.eval.protocols.calvin import filter_chains

    every = evaluation_chains()
    kept = filter_chains(every, SCRIPTED)
    assert kept and len(kept) < len(every)
    originals = {c.index: c for c in every}
    for chain in kept:
        full = originals[chain.index]
        n = len(chain.subtasks)
        assert chain.subtasks == full.subtasks[:n] and set(chain.subtasks) <= set(SCRIPTED)
        assert n == 5 or full.subtasks[n] not in SCRIPTED, "cut exactly at the first subtask outside the set"
        assert (chain.state_id, chain.state) == (full.state_id, full.state)
    # every chain that starts in the set is kept, in reference order
    assert [c.index for c in kept] == [c.index for c in every if c.subtasks[0] in SCRIPTED]


def test_filtered_run_records_the_filter_and_is_not_paired_with_a_protocol_run(tmp_path):
    from vla.errors import ComparisonError
    from vla.eval.compare import compare_runs

    filtered = tmp_path / "filtered"
    summary = evaluate_calvin(config(filtered, chain_ids=None, chains=4, subtasks=SCRIPTED, videos=0), progress=False)
    settings = summary["settings"]
    assert settings["subtask_filter"] == list(SCRIPTED) and settings["protocol"].startswith("NOT the protocol")
    rows = records(filtered)
    assert len(rows) == 4 and all(set(r["subtasks"]) <= set(SCRIPTED) for r in rows)
    assert all(len(r["stages"]) <= len(r["subtasks"]) for r in rows)
    assert summary["asked_avg_len"] == pytest.approx(sum(len(r["subtasks"]) for r in rows) / 4)
    assert summary["chain_sr"]["1"] > 0, "the fake scene's scripted planner solves these subtasks"
    assert "NOT the CALVIN protocol" in (filtered / "report.md").read_text()
    protocol = tmp_path / "protocol"
    evaluate_calvin(config(protocol, chain_ids=[r["chain"] for r in rows], videos=0), progress=False)
    with pytest.raises(ComparisonError, match="subtask_filter"):
        compare_runs(filtered, protocol)


def test_unknown_subtask_is_one_clear_error(tmp_path):
    with pytest.raises(EvalError, match=r"unknown CALVIN subtask\(s\) open_the_drawer in --subtasks; known: "):
        evaluate_calvin(config(tmp_path / "x", subtasks=["open_drawer", "open_the_drawer"]), progress=False)
    assert not (tmp_path / "x").exists()
    result = CliRunner().invoke(app, ["eval", "calvin", "--out", str(tmp_path / "y"), "--policy", "random",
                                      "--subtasks", "lift_the_block"])  # fmt: skip
    assert result.exit_code != 0 and "unknown CALVIN subtask(s) lift_the_block" in str(result.exception or "") + (
        result.output
    )
