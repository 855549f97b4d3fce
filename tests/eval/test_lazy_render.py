"""Environments that render on demand draw only the frames a plan reads (the last n_obs of each chunk)."""

from __future__ import annotations

import numpy as np
import pytest

from vla.eval.episodes import EpisodeSpec
from vla.eval.worker import EpisodeSlot, SlotConfig
from vla.sim.base import StepResult

CAM = "observation.images.agentview"


class CountingEnv:
    """A tiny env whose frame shows the step number; records which steps were rendered."""

    renders_on_demand = True
    task_language = "count"
    max_steps = 40

    def __init__(self):
        self.t, self.rendered = 0, []

    def _obs(self, images: bool):
        obs = {"observation.state": np.full(2, self.t, np.float32)}
        if images:
            self.rendered.append(self.t)
            obs[CAM] = np.full((4, 4, 3), self.t, np.uint8)
        return obs

    def reset(self, init_state_id):
        self.t = 0
        return self._obs(True)

    def step(self, action, images=True):
        self.t += 1
        return StepResult(self._obs(images), False, {})

    def sim_state(self):
        return None

    def close(self):
        pass


class Factory:
    def __init__(self):
        self.env = CountingEnv()

    def __call__(self, spec):
        return self.env


@pytest.mark.parametrize(("n_obs", "chunk"), [(1, 5), (2, 5), (3, 2)])
def test_plans_see_rendered_current_frames_and_nothing_else_is_drawn(n_obs, chunk):
    factory = Factory()
    slot = EpisodeSlot(SlotConfig(factory, n_obs, (CAM, "observation.state")))
    reply = slot.start(EpisodeSpec("e", "k", "t", 0, 0))
    for _ in range(6):
        frames = reply.history[CAM][:, 0, 0, 0]
        states = reply.history["observation.state"][:, 0]
        # The images are the newest n_obs frames, the same ones the state history holds.
        np.testing.assert_array_equal(frames, states)
        assert frames[-1] == factory.env.t
        reply = slot.act(np.zeros((chunk, 7)), chunk)
    wanted = {0} | {t for t in range(1, factory.env.t + 1) if (t - 1) % chunk >= chunk - n_obs}
    assert set(factory.env.rendered) == wanted
    if chunk > n_obs:
        assert len(factory.env.rendered) < factory.env.t + 1  # some frames were skipped
