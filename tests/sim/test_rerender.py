"""Images that enter training equal what the evaluation loop feeds the policy at the same state.

A short state-only rollout is written as a LIBERO task file, its cameras are re-rendered from the saved
states (vla.sim.rerender), the file is converted into a store (which turns frames upright), and the same
actions are replayed in an evaluation-style env (cameras on, upright): every stored frame must equal the
frame the env returns at that step, pixel for pixel (the store is lossless), for both cameras."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest

from vla.datasets.conventions.libero import CAMERAS, TASK_FILE_SUFFIX
from vla.datasets.convert.base import convert
from vla.datasets.libero_hdf5 import LiberoHdf5Writer
from vla.datasets.store import Store
from vla.keys import camera_key
from vla.sim.libero import LiberoEnv, quat_to_axis_angle
from vla.sim.rerender import RENDERED_ATTR, RenderJob, render_task_file

SUITE, TASK, STATE, SIZE, STEPS = "libero_object", 1, 3, 32, 12


def _state_only_file(path, actions):
    env = LiberoEnv(SUITE, TASK, cameras=())
    env.reset(STATE)
    obs = {k: [] for k in ("ee_pos", "ee_ori", "gripper_states", "joint_states")}
    states = []
    for action in actions:
        raw = env.raw_obs
        obs["ee_pos"].append(raw["robot0_eef_pos"])
        obs["ee_ori"].append(quat_to_axis_angle(raw["robot0_eef_quat"]))
        obs["gripper_states"].append(raw["robot0_gripper_qpos"])
        obs["joint_states"].append(raw["robot0_joint_pos"])
        states.append(env.sim_state())
        env.step(action)
    with LiberoHdf5Writer(path, env.task_language, image_convention="opengl") as writer:
        writer.add_demo(actions, {k: np.asarray(v, np.float64) for k, v in obs.items()}, np.asarray(states))
    env.close()


@pytest.mark.slow
def test_training_frames_equal_evaluation_frames(tmp_path):
    rng = np.random.default_rng(0)
    actions = np.concatenate([rng.uniform(-1, 1, (STEPS, 6)), np.sign(rng.uniform(-1, 1, (STEPS, 1)))], axis=1)
    src = tmp_path / "src" / f"task{TASK_FILE_SUFFIX}"
    _state_only_file(src, actions)
    dst = tmp_path / "rendered" / src.name
    report = render_task_file(RenderJob(SUITE, TASK, src, dst, tuple(CAMERAS), SIZE))
    assert (report.demos, report.frames, report.reused) == (1, STEPS, False)
    with h5py.File(dst, "r") as f:
        assert json.loads(f["data"].attrs[RENDERED_ATTR]) == {"cameras": list(CAMERAS), "image_size": SIZE}
        assert f["data/demo_0/obs/agentview_rgb"].shape == (STEPS, SIZE, SIZE, 3)
    assert render_task_file(RenderJob(SUITE, TASK, src, dst, tuple(CAMERAS), SIZE)).reused  # resumable

    convert("libero", dst.parent, tmp_path / "store.zarr", progress=False)
    store = Store(tmp_path / "store.zarr")
    stored = {cam: np.asarray(store.array(camera_key(cam))[:]) for cam in CAMERAS}

    env = LiberoEnv(SUITE, TASK, cameras=tuple(CAMERAS), image_size=SIZE, image_orientation="upright")
    try:
        obs = env.reset(STATE)
        for t, action in enumerate(actions):
            for cam in CAMERAS:
                live = obs[camera_key(cam)]
                assert live.std() > 3  # a real picture
                np.testing.assert_array_equal(stored[cam][t], live, err_msg=f"{cam} frame {t}")
            obs = env.step(action).obs
    finally:
        env.close()
