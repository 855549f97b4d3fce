"""LIBERO behind `SimEnv`, in the real simulator: tasks, determinism, the store's keys and conventions."""

from __future__ import annotations

import os

import numpy as np
import pytest

from tests.sim.conftest import IMAGE_SIZE, SUITE, TASK
from vla.datasets.conventions.libero import CAMERAS
from vla.datasets.convert.libero import LiberoConverter
from vla.datasets.declare import Declaration
from vla.datasets.libero_hdf5 import axis_angle_to_quat
from vla.sim.base import SimError, check_fits, fit_problems, obs_keys
from vla.sim.libero import LiberoEnv, get_task, gl_works, suite_tasks
from vla.testing.libero_hdf5 import write_libero_hdf5

pytestmark = pytest.mark.slow
HOLD_OPEN = np.array([0.0, 0.0, 0.0, 0.0, 0.0, 0.0, -1.0])


def test_unknown_suite_or_task_lists_the_valid_ones():
    with pytest.raises(SimError, match=r"unknown LIBERO suite 'libero_objects'; valid suites: libero_spatial"):
        get_task("libero_objects", 0)
    with pytest.raises(SimError) as err:
        get_task("libero_object", 10)
    assert "valid task ids 0..9" in str(err.value)
    assert "0: pick_up_the_alphabet_soup_and_place_it_in_the_basket" in str(err.value)
    with pytest.raises(SimError, match="unknown LIBERO camera"):
        LiberoEnv(SUITE, TASK, cameras=("wrist",))
    sizes = [len(suite_tasks(s)) for s in ("libero_spatial", "libero_goal", "libero_10", "libero_90")]
    assert sizes == [10, 10, 10, 90]


def test_task_description(state_env):
    assert state_env.task_language == "pick up the cream cheese and place it in the basket"
    assert state_env.max_steps == 280 and state_env.num_init_states == 50
    assert state_env.goal() == [("in", "cream_cheese_1", "basket_1_contain_region")]
    with pytest.raises(SimError, match=r"out of range 0\.\.49"):
        state_env.reset(50)


def _episode(env: LiberoEnv, init_id: int, gripper: float) -> list[dict[str, np.ndarray]]:
    obs = [env.reset(init_id)]
    for t in range(12):
        action = np.array([0.5, -0.3, 0.2 * np.sin(t), 0.1, 0.0, -0.1, gripper])
        obs.append(env.step(action).obs)
    return obs


def test_reset_to_an_init_state_is_deterministic(state_env):
    # The episodes before each replay end with the gripper commanded differently: robosuite keeps
    # that command across soft resets unless the wrapper clears it.
    _episode(state_env, 7, gripper=-1.0)
    first = _episode(state_env, 3, gripper=1.0)
    _episode(state_env, 7, gripper=1.0)
    again = _episode(state_env, 3, gripper=1.0)
    for a, b in zip(first, again, strict=True):
        assert a.keys() == b.keys()
        for key in a:
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    other = state_env.reset(7)
    assert not np.array_equal(other["observation.state"], first[0]["observation.state"])


def test_soft_reset_replays_like_liberos_hard_reset(state_env):
    # LIBERO rebuilds the simulation on every reset by default; the soft reset used here is ~20x faster
    # and must give the same episodes, bit for bit.
    hard = LiberoEnv(SUITE, TASK, cameras=(), hard_reset=True)
    try:
        _episode(hard, 7, gripper=1.0)
        expected = _episode(hard, 3, gripper=-1.0)
    finally:
        hard.close()
    _episode(state_env, 7, gripper=1.0)
    for a, b in zip(_episode(state_env, 3, gripper=-1.0), expected, strict=True):
        for key in a:
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_gl_backend_renders_here():
    assert gl_works(os.environ["MUJOCO_GL"])  # the backend the camera tests use (egl here; osmesa if not)


def test_observations_match_a_converted_libero_store(state_env, camera_env, tmp_path):
    src = write_libero_hdf5(tmp_path / "x_demo.hdf5", "x", 1, 4, image_size=(IMAGE_SIZE, IMAGE_SIZE))
    store_spec = LiberoConverter(src, Declaration()).spec()
    want = {k: (v.dtype, v.shape) for k, v in obs_keys(store_spec).items()}
    assert {k: (v.dtype, v.shape) for k, v in obs_keys(camera_env.spec).items()} == want
    obs = camera_env.reset(0)
    assert {k: (str(v.dtype), v.shape) for k, v in obs.items()} == want
    assert camera_env.spec.action == store_spec.action and camera_env.spec.state == store_spec.state
    assert camera_env.spec.fps == store_spec.fps == 20.0
    assert fit_problems(camera_env.spec, store_spec) == []
    # Without cameras: the same low-dimensional keys, and the fit check says what is missing.
    state_obs = state_env.reset(0)
    assert {k: (str(v.dtype), v.shape) for k, v in state_obs.items()} == {
        k: v for k, v in want.items() if "images" not in k
    }
    with pytest.raises(SimError, match=r"observation\.images\.agentview: the environment does not provide it"):
        check_fits(state_env.spec, store_spec)
    check_fits(state_env.spec, store_spec, keys=["observation.state", "observation.joint_state"])


def test_state_is_eef_pose_axis_angle_and_gripper(state_env):
    obs = state_env.reset(2)
    raw = state_env.raw_obs
    state = obs["observation.state"]
    np.testing.assert_allclose(state[:3], raw["robot0_eef_pos"], atol=1e-6)
    quat = axis_angle_to_quat(state[3:6].astype(np.float64))
    assert min(np.abs(quat - raw["robot0_eef_quat"]).max(), np.abs(quat + raw["robot0_eef_quat"]).max()) < 1e-5
    np.testing.assert_array_equal(state[6:], raw["robot0_gripper_qpos"].astype(np.float32))
    np.testing.assert_array_equal(obs["observation.gripper_state"], raw["robot0_gripper_qpos"])
    np.testing.assert_array_equal(obs["observation.joint_state"], raw["robot0_joint_pos"])


def test_upright_frames_are_raw_renders_rotated_180(camera_env):
    obs = camera_env.reset(0)
    assert [(c.name, c.orientation, c.source_orientation) for c in camera_env.spec.cameras] == [
        ("agentview", "upright", "rotated_180"),
        ("eye_in_hand", "upright", "rotated_180"),
    ]
    for cam, libero_name in CAMERAS.items():
        raw = camera_env.raw_obs[f"{libero_name}_image"]
        upright = obs[f"observation.images.{cam}"]
        assert raw.shape == upright.shape == (IMAGE_SIZE, IMAGE_SIZE, 3) and upright.std() > 5  # a real render
        assert not np.array_equal(upright, raw)  # the rotation is visible in these frames
        np.testing.assert_array_equal(upright, np.rot90(raw, 2))


def test_actions_are_world_frame_osc_deltas(state_env):
    start = state_env.reset(0)["observation.state"]
    for _ in range(6):
        obs, _, info = state_env.step(np.array([1.0, 0.0, 0.0, 0.0, 0.0, 0.0, -1.0]))
    moved = obs["observation.state"][:3] - start[:3]
    # 1.0 asks for 0.05 m per step (robosuite OSC_POSE default); the arm lags but clearly follows +x.
    assert 0.03 < moved[0] < 0.3 and np.abs(moved[1:]).max() < 0.2 * moved[0]
    assert info["step"] == 6 and not info["truncated"]
    with pytest.raises(SimError, match="7 finite numbers"):
        state_env.step(np.zeros(6))


def test_object_poses_for_the_expert(state_env):
    state_env.reset(0)
    pos, quat = state_env.object_pose("cream_cheese_1")
    lo, hi = state_env.object_bounds("cream_cheese_1")
    assert np.all(lo < pos) and np.all(pos < hi) and np.isclose(np.linalg.norm(quat), 1.0)
    basket = state_env.object_pose("basket_1")[0]
    assert np.linalg.norm(state_env.site_position("basket_1_contain_region")[:2] - basket[:2]) < 0.02
    assert set(state_env.object_poses()) >= {"cream_cheese_1", "basket_1"}
    with pytest.raises(SimError, match="no object 'teapot_1'"):
        state_env.object_pose("teapot_1")
