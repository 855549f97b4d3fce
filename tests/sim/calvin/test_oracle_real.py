"""Our oracle against calvin_env's own task checker on info dicts of the real simulator (runs where
the optional simulator is installed: `vla sim calvin-setup PATH`)."""

from __future__ import annotations

import numpy as np
import pytest

from vla.sim.calvin.chains import evaluation_chains
from vla.sim.calvin.oracle import achieved
from vla.sim.calvin.scene import reset_arrays

pytest.importorskip("calvin_env", reason="the optional CALVIN simulator is not installed")

OPEN = np.array([0, 0, 0, 0, 0, 0, 1.0])


def changed_scenes(scene: np.ndarray) -> list[np.ndarray]:
    doors_lights = scene.copy()
    doors_lights[0], doors_lights[1] = 0.28 - scene[0], 0.22 - scene[1]
    doors_lights[3], doors_lights[4], doors_lights[5] = 0.088 - scene[3], 1 - scene[4], 1 - scene[5]
    turned = scene.copy()
    turned[11] += np.radians(75)
    turned[17] -= np.radians(75)
    turned[18] += 0.15
    shifted = scene.copy()
    shifted[6] -= 0.15
    shifted[12] += 0.12
    return [doors_lights, turned, shifted]


def test_oracle_agrees_with_calvin_env_on_real_info_dicts():
    from calvin_env.envs.tasks import Tasks
    from omegaconf import OmegaConf

    from vla.sim.calvin.simulator import CalvinSimulator, SimulatorConfig, checkout_path

    reference = Tasks(OmegaConf.load(checkout_path() / "conf/tasks/new_playtable_tasks.yaml").tasks)
    sim = CalvinSimulator(SimulatorConfig(cameras=("static",), static_size=32, renderer="tiny"))
    rng = np.random.default_rng(0)
    seen: set[str] = set()
    try:
        for chain in evaluation_chains(2):
            robot, scene = reset_arrays(chain.state_dict)
            for other in changed_scenes(scene):
                sim.reset(robot, scene)
                sim.step(OPEN)  # one physics step: contacts exist
                start = sim.get_info()
                sim.reset(robot, other)
                sim.step(OPEN)
                end = sim.get_info()
                ours = achieved(start, end)
                assert ours == reference.get_task_info(start, end)
                seen |= ours
            sim.reset(robot, scene)
            start = sim.get_info()
            for _ in range(10):
                sim.step(np.concatenate([rng.uniform(-1, 1, 6), [rng.choice([-1.0, 1.0])]]))
                end = sim.get_info()
                assert achieved(start, end) == reference.get_task_info(start, end)
    finally:
        sim.close()
    assert {"open_drawer", "close_drawer", "move_slider_left", "move_slider_right"} & seen
    assert any(t.startswith("rotate_") for t in seen) and any(t.startswith("push_") for t in seen)
