"""The LIBERO harness end to end in the real simulator (state-only unless a camera is the point)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
from typer.testing import CliRunner

from tests.eval.factories import BrokenFactory
from tests.eval.helpers import STEPS, SUITE, TASK, eval_config, fitting_data_spec, save_checkpoint
from vla.cli import app
from vla.eval.episodes import EpisodeSpec, EvalError
from vla.eval.planners import PlannerSpec
from vla.eval.protocols.libero import PRESETS, LiberoEnvFactory, evaluate_libero, prepare
from vla.eval.results import ResultsLog
from vla.eval.runner import run_episodes
from vla.eval.worker import SlotConfig
from vla.policies.runtime import Plan
from vla.sim.base import SimError

pytestmark = pytest.mark.slow
VOLATILE = ("wall_s",)  # the only fields that may differ between identical runs


def records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "episodes.jsonl").read_text().splitlines()]


def stable(rows: list[dict]) -> dict[str, dict]:
    return {r["episode_id"]: {k: v for k, v in r.items() if k not in VOLATILE} for r in rows}


@pytest.fixture(scope="module")
def resumed_run(tmp_path_factory) -> tuple[Path, dict, dict]:
    """4 random-policy episodes, killed after 2 with a torn line left behind, then resumed."""
    out = tmp_path_factory.mktemp("resume")
    config = eval_config(out)
    real_append, calls = ResultsLog.append, []

    def append_then_die(self, result):
        if len(calls) == 2:
            raise KeyboardInterrupt  # killed while the third episode was being logged
        calls.append(result.episode_id)
        return real_append(self, result)

    with pytest.MonkeyPatch.context() as mp, pytest.raises(KeyboardInterrupt):
        mp.setattr(ResultsLog, "append", append_then_die)
        evaluate_libero(config, progress=False)
    assert len(records(out)) == 2 and not (out / "summary.json").exists()
    before = stable(records(out))
    with open(out / "episodes.jsonl", "a") as f:
        f.write('{"episode_id": "libero_object/1/2", "success": tr')
    summary = evaluate_libero(config, progress=False)
    return out, summary, before


def test_results_after_a_kill_and_resume(resumed_run):
    out, summary, before = resumed_run
    rows = records(out)
    assert [r["init_state_id"] for r in rows] == [0, 1, 2, 3], "each episode exactly once"
    assert stable(rows[:2]) == before, "finished episodes were not redone"
    assert summary["run"] == {
        "workers": 1,
        "policy_in_workers": False,
        "backend": "processes",
        "resumed_episodes": 2,
        "dropped_log_lines": 1,
        "duplicate_log_records": 0,
    }
    assert summary["throughput"]["episodes"] == 2, "only the missing episodes ran"
    for r in rows:
        assert r["task"] == f"{SUITE}/{TASK}" and r["suite"] == SUITE and r["seed"] == 7  # openpi: seed 7 per task
        assert r["language"] == "pick up the cream cheese and place it in the basket"
        assert r["success"] is False and r["steps"] == STEPS and r["error"] is None
        assert r["actions_executed"] == STEPS and r["policy_calls"] == 3  # openpi re-plans every 5 actions
        assert r["actions_discarded"] == 3 and r["wall_s"] > 0
    assert summary["complete"] and summary["episodes"] == 4 and summary["success_rate"] == 0.0
    assert summary["tasks"][0]["name"] == "pick_up_the_cream_cheese_and_place_it_in_the_basket"
    assert summary["tasks"][0]["trials"] == 4 and summary["groups"][SUITE]["trials"] == 4
    settings = summary["settings"]
    assert settings["preset"] == "openpi" and settings["init_states"] == [0, 1, 2, 3]
    assert settings["settle_steps"] == 10 and settings["settle_action"][-1] == -1.0
    assert settings["max_steps"] == STEPS and settings["max_steps_source"] == "--max-steps"
    assert settings["replan_steps"] == 5 and settings["cameras"] == [] and settings["run_seed"] == 3
    assert summary["preset_settings"]["max_steps"]["libero_10"] == 520
    assert summary["throughput"]["env_steps"] == 2 * STEPS and summary["throughput"]["env_steps_per_s"] > 0
    on_disk = json.loads((out / "summary.json").read_text())
    assert on_disk["episodes"] == 4 and on_disk["report"].endswith("report.md")
    assert (out / "success.png").exists() and "| libero_object/1 |" in (out / "report.md").read_text()
    again = evaluate_libero(eval_config(out), progress=False)  # a finished run: nothing to do
    assert again["throughput"]["episodes"] == 0 and again["episodes"] == 4 and len(records(out)) == 4


def test_two_workers_run_the_same_episodes(resumed_run, tmp_path):
    out, _, _ = resumed_run
    summary = evaluate_libero(eval_config(tmp_path, workers=2), progress=False)
    assert summary["run"]["workers"] == 2 and summary["throughput"]["episodes"] == 4
    assert stable(records(tmp_path)).keys() == stable(records(out)).keys()
    assert stable(records(tmp_path)) == stable(records(out)), "random policy per episode: identical episodes"


@pytest.mark.parametrize(
    ("change", "error", "message"),
    [
        ({"suite": "libero_objects"}, SimError, "unknown LIBERO suite 'libero_objects'; valid suites"),
        ({"tasks": [10]}, SimError, r"has no task 10; valid task ids 0\.\.9"),
        ({"init_states": [48, 50]}, EvalError, r"initial state ids \[50\] out of range"),
        ({"preset": "lerobot"}, EvalError, "unknown LIBERO protocol preset 'lerobot'; choose one of openpi"),
        ({"policy": "no/such/dir"}, EvalError, "not a checkpoint directory"),
        ({"workers": 0}, EvalError, "--workers must be >= 1"),
    ],
)
def test_bad_selection_fails_before_any_episode(tmp_path, change, error, message):
    with pytest.raises(error, match=message):
        evaluate_libero(eval_config(tmp_path / "out", **change), progress=False)
    assert not (tmp_path / "out").exists()


def test_a_checkpoint_that_does_not_fit_fails_before_any_episode(tmp_path):
    cases = {
        "state": ({"state_dim": 5}, None, r"'observation.state' has per-frame shape \(8,\), the policy needs \(5,\)"),
        "camera": ({"camera_keys": ("observation.images.front",)}, None, "missing key 'observation.images.front'"),
        "actions": ({"action_dim": 4}, None, r"'action' has per-frame shape \(7,\), the policy needs \(4,\)"),
        "rate": ({}, replace(fitting_data_spec(), fps=10.0), "control rate: policy data is 10 Hz"),
    }
    for name, (overrides, spec, message) in cases.items():
        ckpt = save_checkpoint(tmp_path / name, spec, **overrides)
        with pytest.raises(SimError, match=message):
            evaluate_libero(eval_config(tmp_path / f"out_{name}", policy=str(ckpt)), progress=False)
        assert not (tmp_path / f"out_{name}").exists(), name
    camera = save_checkpoint(
        tmp_path / "flip", fitting_data_spec(("agentview",)), camera_keys=("observation.images.agentview",)
    )
    with pytest.raises(SimError, match="trained on upright frames, the environment delivers rotated_180"):
        prepare(eval_config(tmp_path / "o", policy=str(camera), image_orientation="rotated_180"))
    fits = prepare(eval_config(tmp_path / "o", policy=str(camera), preset="libero"))
    assert fits.settings["image_size"] == 32 and fits.settings["image_orientation"] == "upright"
    assert fits.settings["image_settings_from"] == "checkpoint data_spec.json"
    assert fits.settings["replan_steps"] == 1 and fits.settings["settle_steps"] == 5


def test_presets_record_their_protocol():
    assert {p: PRESETS[p].trials_per_task for p in PRESETS} == {"openpi": 50, "libero": 20, "mode": 20, "himoe": 50}
    # HiMoE-VLA's own evaluation: openpi's protocol, 10 actions executed per plan
    assert PRESETS["himoe"].replan_steps == 10
    assert replace(PRESETS["himoe"], name="openpi", replan_steps=5) == PRESETS["openpi"]
    openpi = prepare(eval_config(Path("unused"), init_states=None, max_steps=None))
    assert openpi.protocol.init_state_ids == list(range(50)) and openpi.settings["max_steps"] == 280
    assert openpi.settings["env_seed"] == 7 and openpi.settings["image_orientation"] == "upright"
    libero = prepare(eval_config(Path("unused"), preset="libero", init_states=None, trials_per_task=3, seed=5))
    assert libero.protocol.init_state_ids == [0, 1, 2] and libero.settings["env_seed"] == 5
    assert prepare(eval_config(Path("unused"), preset="libero", max_steps=None)).settings["max_steps"] == 600
    mode = prepare(eval_config(Path("unused"), preset="mode", init_states=[40, 41], max_steps=None))
    assert mode.settings["env_seed"] is None and mode.settings["max_steps"] == 520
    assert [e.episode_id for e in mode.episodes] == ["libero_object/1/40", "libero_object/1/41"]
    himoe = prepare(eval_config(Path("unused"), preset="himoe", init_states=None, max_steps=None))
    assert himoe.settings["replan_steps"] == 10 and himoe.settings["env_seed"] == 7
    assert himoe.settings["max_steps"] == 280 and himoe.protocol.init_state_ids == list(range(50))


def test_mode_checkpoint_runs_batched_and_per_worker(tmp_path):
    ckpt = save_checkpoint(tmp_path / "ckpt", fitting_data_spec())
    central = evaluate_libero(eval_config(tmp_path / "a", policy=str(ckpt), init_states=[0, 1]), progress=False)
    assert central["policy"]["type"] == "mode" and central["policy"]["data_spec"] is True
    assert central["episodes"] == 2 and central["settings"]["replan_steps"] == 5
    rows = records(tmp_path / "a")
    assert all(r["steps"] == STEPS and r["policy_calls"] == 3 and r["error"] is None for r in rows)
    # openpi's interval of 5 with a 6-action chunk; the MoDE preset's 10 would not fit it
    clipped = prepare(eval_config(tmp_path / "b", policy=str(ckpt), preset="mode"))
    assert clipped.settings["replan_steps"] == 6 and "clipped" in clipped.settings["replan_note"]
    with pytest.raises(EvalError, match="exceeds the policy's chunk"):
        prepare(eval_config(tmp_path / "b", policy=str(ckpt), replan_steps=7))
    per_worker = evaluate_libero(
        eval_config(tmp_path / "c", policy=str(ckpt), init_states=[0], policy_in_workers=True), progress=False
    )
    assert per_worker["episodes"] == 1 and per_worker["throughput"]["policy_calls"] == 3
    assert records(tmp_path / "c")[0]["actions_executed"] == STEPS


def test_camera_episode_writes_video_and_report(tmp_path):
    summary = evaluate_libero(
        eval_config(tmp_path, init_states=[5], max_steps=6, videos=1, image_size=32), progress=False
    )
    # the episode itself runs without a renderer; the kept video is drawn from its saved states
    assert summary["settings"]["cameras"] == [] and summary["videos"] == ["videos/failure_libero_object-1-5.mp4"]
    frames = iio.imread(tmp_path / summary["videos"][0])
    assert frames.shape == (7, 32, 32, 3), "the reset frame and one per step"
    assert frames.std() > 5, "a real render, not a blank frame"
    report = (tmp_path / "report.md").read_text()
    assert "videos/failure_libero_object-1-5.mp4" in report and "![success rate per task](success.png)" in report


class HorizonPlanner:
    """Executes 1, 2, 3, 1, 2, 3... actions per plan, like a Mixture-of-Horizons policy would choose."""

    n_obs = 2
    obs_keys = ("observation.state",)

    def __init__(self):
        self.rows: list[int] = []
        self.histories: list[np.ndarray] = []

    def plan(self, batch):
        rows = len(batch["task"])
        self.rows.append(rows)
        self.histories.append(batch["observation.state"])
        n = np.array([1 + i % 3 for i in batch["plan_index"]])
        actions = np.zeros((rows, 4, 7))
        for row, (episode, index) in enumerate(zip(batch["episode_id"], batch["plan_index"], strict=True)):
            if episode == "x/1" and index == 2:
                actions[row, 1] = np.nan  # the env refuses it: the episode must end as a failure
        return Plan(actions, n)

    def describe(self):
        return {"type": "horizons"}


def test_the_runner_executes_as_many_actions_as_the_policy_asks(tmp_path):
    factory = LiberoEnvFactory(SUITE, (), 128, "upright", 2, (0.0,) * 6 + (-1.0,), 10)
    episodes = [EpisodeSpec(f"x/{k}", f"{SUITE}/{TASK}", "x", TASK, k) for k in (0, 1)]
    planner = HorizonPlanner()
    got = []
    stats = run_episodes(
        episodes,
        SlotConfig(factory, planner.n_obs, planner.obs_keys),
        PlannerSpec("random"),
        planner=planner,
        on_result=lambda result, frames, stats: got.append(result),
    )
    # 10 steps as 1+2+3+1+2+1 (2 of the last 3 discarded): 6 plans
    assert [(r.steps, r.policy_calls, r.actions_discarded, r.error) for r in got[:1]] == [(10, 6, 2, None)]
    # 1+2 steps, then the third plan's second action raises: 1 step of it done, 2 discarded
    failed = got[1]
    assert (failed.success, failed.steps, failed.policy_calls, failed.actions_discarded) == (False, 4, 3, 2)
    assert "SimError" in failed.error and "finite" in failed.error
    assert stats.env_steps == 14 and stats.policy_calls == 9 and planner.rows == [1] * 9
    first = planner.histories[0][0]
    assert first.shape == (2, 8) and np.array_equal(first[0], first[1]), "history starts as repeats of the reset frame"
    assert not np.array_equal(planner.histories[1][0][0], planner.histories[1][0][1])


@pytest.mark.parametrize("processes", [False, True])
def test_an_environment_that_cannot_be_built_stops_the_run(processes):
    episodes = [EpisodeSpec(f"x/{k}", "x", "x", 0, k) for k in range(3)]
    with pytest.raises(EvalError, match="building the environment for x failed: SimError: no OpenGL here"):
        run_episodes(
            episodes,
            SlotConfig(BrokenFactory(), 1, ()),
            PlannerSpec("random", 1, (-1.0,), (1.0,)),
            workers=2,
            processes=processes,
        )


def test_cli(tmp_path, resumed_run):
    cli = CliRunner()
    out = resumed_run[0]
    args = ["--suite", SUITE, "--policy", "random", "--tasks", str(TASK), "--init-states", "0-3"]
    args += ["--max-steps", str(STEPS), "--seed", "3"]
    done = cli.invoke(app, ["eval", "libero", *args, "--out", str(out), "--no-progress"])
    assert done.exit_code == 0, done.output
    assert "success rate 0.0% over 4 episodes" in done.output and "0 episodes run now, 4 from before" in done.output
    other = cli.invoke(app, ["eval", "libero", *args[:-1], "4", "--out", str(out), "--no-progress"])
    assert isinstance(other.exception, EvalError) and "run_seed" in str(other.exception)
    helped = cli.invoke(app, ["eval", "libero", "--help"])
    assert helped.exit_code == 0
    for flag in ("--suite", "--tasks", "--trials-per-task", "--init-states", "--policy", "--workers", "--out"):
        assert flag in helped.output
    bad = cli.invoke(app, ["eval", "libero", "--suite", "nope", "--policy", "random", "--out", str(tmp_path)])
    assert isinstance(bad.exception, SimError) and "valid suites" in str(bad.exception)
