"""CalvinEnv over the fake backend: store-vocabulary observations matching the converter, stages
without resets, the lazy real-simulator factory, and the symbolic rules it builds on."""

from __future__ import annotations

import pickle
import sys

import numpy as np
import pytest

from vla.datasets.conventions.calvin import SCENE_KEY, env_action, store_observation
from vla.datasets.convert.calvin import CalvinConverter
from vla.datasets.declare import Declaration
from vla.keys import STATE_KEY
from vla.sim.base import SimError, fit_problems
from vla.sim.calvin.env import CalvinEnv, SimulatorFactory
from vla.sim.calvin.instructions import instruction, instructions
from vla.sim.calvin.scene import reset_arrays
from vla.sim.calvin.tasks import CATEGORIES, SUBTASKS, initial_states, next_states
from vla.testing.calvin_data import write_calvin_split
from vla.testing.calvin_fake import FakeBackendFactory, FakeCalvinBackend, scripted_action

SIZES = {"static": 32, "gripper": 16}


@pytest.fixture
def env():
    with CalvinEnv(FakeBackendFactory(32, 16), image_sizes=SIZES) as e:
        yield e


def run_stage(env, obs, limit=360):
    for _ in range(limit):
        r = env.step(scripted_action(env.subtask, obs[STATE_KEY].astype(float), obs[SCENE_KEY].astype(float)))
        obs = r.obs
        if r.success:
            return True, obs
    return False, obs


def test_observations_use_the_converters_keys_and_spec(env, tmp_path):
    obs = env.reset(0)
    assert set(obs) == set(env.obs_keys())
    assert obs["observation.images.static"].shape == (32, 32, 3) and obs["observation.images.static"].dtype == np.uint8
    assert obs[STATE_KEY].dtype == np.float32 and obs[STATE_KEY].shape == (15,)
    np.testing.assert_allclose(obs[SCENE_KEY], reset_arrays(env.chains[0].state_dict)[1], atol=1e-6)
    # A store converted from CALVIN data with the same image sizes fits the environment as it is.
    split = write_calvin_split(tmp_path / "training", [(0, 3)], [], image_sizes=(32, 16))
    store_spec = CalvinConverter(split, Declaration()).spec()
    assert fit_problems(env.spec, store_spec) == [
        "action.absolute: the environment does not provide it (it provides: " + ", ".join(env.obs_keys()) + ")"
    ]
    keys = [k for k in store_spec.keys() if k != "action.absolute"]  # noqa: SIM118 (StoreSpec.keys is a method)
    assert fit_problems(env.spec, store_spec, keys=[k for k in keys if k != "action"]) == []


def test_stages_change_language_without_resetting_the_scene(env):
    # chain 19 is fully solvable by the scripted planner in the fake scene
    obs = env.reset(19)
    chain = env.chains[19]
    assert env.num_stages == 5 and env.task_language == instruction(chain.subtasks[0])
    for k, subtask in enumerate(chain.subtasks):
        if k:
            before = obs[SCENE_KEY].copy()
            obs = env.next_stage()
            np.testing.assert_array_equal(obs[SCENE_KEY], before)  # the scene stays where it is
        assert env.subtask == subtask and env.stage == k and env.task_language == instruction(subtask)
        ok, obs = run_stage(env, obs)
        assert ok, subtask
    with pytest.raises(SimError, match="no further subtask"):
        env.next_stage()


def test_success_is_judged_from_the_stage_start(env):
    obs = env.reset(0)  # rotate_blue_block_right first: not scripted, so it fails
    ok, _ = run_stage(env, obs, limit=20)
    assert not ok
    with pytest.raises(SimError):
        env.reset(len(env.chains))


def test_actions_and_camera_checks():
    a = env_action(np.array([0.1, 0, 0, 0, 0, 0, 0.3]))
    assert a[6] == 1.0 and env_action(np.zeros(7))[6] == -1.0
    with pytest.raises(ValueError, match="7 values"):
        env_action(np.zeros(6))
    with pytest.raises(SimError, match="unknown CALVIN camera"):
        CalvinEnv(FakeBackendFactory(), cameras=("wrist",))
    with (
        CalvinEnv(FakeBackendFactory(32, 16), image_sizes={"static": 64}) as wrong,
        pytest.raises(SimError, match="renders"),
    ):
        wrong.reset(0)
    with CalvinEnv(FakeBackendFactory(), image_sizes=SIZES) as e:
        e.reset(0)
        with pytest.raises(SimError, match="7 values"):
            e.step(np.zeros(3))


def test_factories_pickle_and_the_missing_simulator_says_how_to_install(monkeypatch):
    assert pickle.loads(pickle.dumps(FakeBackendFactory(8, 8)))().static_size == 8
    assert pickle.loads(pickle.dumps(SimulatorFactory())) == SimulatorFactory()
    monkeypatch.setitem(sys.modules, "vla.sim.calvin.simulator", None)  # import fails
    with pytest.raises(SimError, match="vla sim calvin-setup PATH"):
        CalvinEnv()


def test_fake_info_has_the_calvin_env_structure():
    backend = FakeCalvinBackend()
    robot, scene = reset_arrays(initial_states()[0])
    obs = backend.reset(robot, scene)
    assert set(obs) == {"rgb_obs", "robot_obs", "scene_obs"} and set(obs["rgb_obs"]) == {"rgb_static", "rgb_gripper"}
    info = backend.get_info()
    assert set(info) == {"robot_info", "scene_info"}
    assert set(info["scene_info"]) == {"fixed_objects", "movable_objects", "doors", "buttons", "switches", "lights"}
    block = info["scene_info"]["movable_objects"]["block_red"]
    assert set(block) == {"current_pos", "current_orn", "current_lin_vel", "current_ang_vel", "contacts", "uid"}
    assert (
        len(block["current_orn"]) == 4
        and block["contacts"][0][2] == info["scene_info"]["fixed_objects"]["table"]["uid"]
    )
    state = backend.get_state()
    assert state.shape == (39,)
    np.testing.assert_array_equal(backend.render_state(state)["rgb_static"], obs["rgb_obs"]["rgb_static"])
    assert store_observation(obs)[STATE_KEY].shape == (15,)


def test_symbolic_rules_and_instructions():
    assert len(initial_states()) == 192 and len(SUBTASKS) == 34
    assert sorted(set(CATEGORIES.values())) == list(range(1, 12))
    state = dict(initial_states()[0])  # led 0, bulb 0, slider right, drawer closed
    assert next_states(state, "turn_on_led") == [{**state, "led": 1}]
    assert next_states(state, "turn_off_led") == []
    two_on_table = {**state, "red_block": "table", "blue_block": "table", "pink_block": "grasped", "grasped": 1}
    assert len(next_states(two_on_table, "stack_block")) == 2  # ambiguous: a chain may not use it here
    assert instructions()["open_drawer"] == "pull the handle to open the drawer"
    assert len(set(instructions().values())) == 34
