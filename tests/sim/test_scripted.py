"""The scripted expert in the real simulator, and `vla sim demos` -> `vla data convert/validate`."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
from typer.testing import CliRunner

from tests.sim.conftest import IMAGE_SIZE, SUITE, TASK
from vla.cli import app as vla_app
from vla.cli.sim import app as sim_app
from vla.datasets.convert.base import convert
from vla.datasets.store import Store
from vla.sim.base import fit_problems, obs_keys
from vla.sim.experts.libero_pick_place import PickPlaceExpert
from vla.sim.libero import LiberoEnv, get_task
from vla.sim.scripted import TaskReport, collect_task

pytestmark = pytest.mark.slow
runner = CliRunner()
HOLD_OPEN = np.array([0.0, 0.0, 0.0, 0.0, 0.0, 0.0, -1.0])
DEMO_INIT_IDS = [2, 9]


@pytest.fixture(scope="module")
def state_demos(tmp_path_factory) -> tuple[TaskReport, Store]:
    """Two state-only scripted demos, converted by vla's LIBERO converter (the `vla data convert` path)."""
    out = tmp_path_factory.mktemp("state_demos")
    report = collect_task(SUITE, TASK, out, episodes=2, init_state_ids=DEMO_INIT_IDS)
    assert report.successes == 2 and report.init_state_ids == DEMO_INIT_IDS, report
    return report, convert("libero", report.path, out / "store", progress=False).store


def test_expert_puts_the_object_in_the_basket(state_env):
    state_env.reset(5)
    expert = PickPlaceExpert(state_env, rng=np.random.default_rng(0))
    expert.reset()
    assert not state_env.check_success()
    phases, success = [], False
    while state_env.steps < state_env.max_steps and not success:
        action = expert.act()
        assert action.shape == (7,) and np.abs(action).max() <= 1.0
        phases.append(expert.phase)
        _, success, _ = state_env.step(action)
    assert success and state_env.check_success(), f"no success after {state_env.steps} steps, phase {expert.phase}"
    assert {"approach", "descend", "close", "lift", "carry"} <= set(phases)
    cheese = state_env.object_pose("cream_cheese_1")[0]
    basket = state_env.object_pose("basket_1")[0]
    assert np.abs(cheese[:2] - basket[:2]).max() < 0.07


def test_doing_nothing_does_not_succeed(state_env):
    state_env.reset(5)
    for _ in range(state_env.max_steps):
        assert not state_env.step(HOLD_OPEN).success
    assert not state_env.check_success()


def test_tasks_that_are_not_one_pick_and_place_are_skipped(tmp_path):
    report = collect_task("libero_10", 0, tmp_path / "out", episodes=1)  # two objects into the basket
    assert report.attempts == 0 and report.path is None
    assert "not a single In/On pick-and-place" in (report.skipped or "") and "tomato_sauce_1" in report.skipped
    assert not (tmp_path / "out").exists()


def test_converted_demos_start_where_the_env_resets(state_demos, state_env: LiberoEnv):
    report, store = state_demos
    assert store.num_episodes == 2 and store.tasks == [state_env.task_language]
    # A policy trained on the store reads exactly the keys the environment gives, with the same meaning.
    assert fit_problems(state_env.spec, store.spec) == []
    assert set(obs_keys(state_env.spec)) == set(obs_keys(store.spec))
    for episode, init_id in enumerate(report.init_state_ids):
        frames = store.episode(episode).frames
        obs = state_env.reset(init_id)
        for key, value in obs.items():
            assert frames[key].dtype == value.dtype, key
            np.testing.assert_array_equal(frames[key][0], value, err_msg=key)


def test_replaying_converted_actions_repeats_the_demo(state_demos, state_env: LiberoEnv):
    # The store's actions, stepped open loop from the same initial state, drive the arm along the
    # recorded states to success: same action convention, scaling and frame as the environment.
    report, store = state_demos
    frames = store.episode(0).frames
    state_env.reset(report.init_state_ids[0])
    states, successes = [], []
    for action in frames["action"]:
        obs, success, _ = state_env.step(action)
        states.append(obs["observation.state"])
        successes.append(success)
    # The store holds float32 actions (the expert sent float64), so allow a small drift.
    np.testing.assert_allclose(np.array(states[:-1]), frames["observation.state"][1:], atol=2e-3)
    assert any(successes), "the replayed demo never succeeded"
    assert successes.index(True) >= len(successes) - 3, f"success at step {successes.index(True)} of {len(successes)}"


def test_demos_command_writes_files_that_convert_and_validate(camera_env, tmp_path):
    task = get_task(SUITE, TASK)
    out = tmp_path / "demos"
    args = ["demos", "--suite", SUITE, "--tasks", str(TASK), "--episodes", "1", "--init-states", "4-6"]
    result = runner.invoke(sim_app, [*args, "--images", "--image-size", str(IMAGE_SIZE), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "scripted expert: libero_object" in result.output and "100%" in result.output
    assert "│ all" in result.output  # the total row

    path = out / f"{task.name}_demo.hdf5"
    with h5py.File(path, "r") as f:
        data = f["data"]
        assert json.loads(data.attrs["problem_info"])["language_instruction"] == task.language
        assert data.attrs["num_demos"] == 1 and json.loads(data.attrs["vla_init_state_ids"]) == [4]
        demo = data["demo_0"]
        n = demo["actions"].shape[0]
        assert demo.attrs["init_state_id"] == 4 and demo["rewards"][-1] == 1 and demo["rewards"][:-1].sum() == 0
        assert demo["obs/agentview_rgb"].shape == (n, IMAGE_SIZE, IMAGE_SIZE, 3)
        assert demo["states"].shape[0] == n and "<mujoco" in demo.attrs["model_file"]
    meta = json.loads(path.with_suffix(".json").read_text())
    assert meta["init_state_ids"] == [4] and meta["attempts"] == 1 and meta["success_rate"] == 1.0

    store_path = tmp_path / "store"
    converted = runner.invoke(
        vla_app, ["data", "convert", "--from", "libero", str(path), str(store_path), "--image-codec", "lz4"]
    )  # lossless: the first frame is compared bit for bit below
    assert converted.exit_code == 0, converted.output
    validated = runner.invoke(vla_app, ["data", "validate", str(store_path)])
    assert validated.exit_code == 0 and "ok" in validated.output, validated.output

    # The store's first frame is what the environment shows (upright) after resetting to the same init state.
    store = Store(store_path)
    assert store.num_episodes == 1 and store.tasks == [task.language]
    first = store.episode(0).frames
    obs = camera_env.reset(4)
    np.testing.assert_allclose(first["observation.state"][0], obs["observation.state"], atol=1e-6)
    for cam in ("agentview", "eye_in_hand"):
        np.testing.assert_array_equal(first[f"observation.images.{cam}"][0], obs[f"observation.images.{cam}"])
