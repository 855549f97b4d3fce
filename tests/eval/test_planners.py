"""Planners: the random policy's bounds and reproducibility, a real policy behind the planner
interface (HWC -> CHW, re-plan interval), and a policy that picks its own horizon."""

from __future__ import annotations

import numpy as np
import torch

from tests.eval.helpers import tiny_mode
from vla.eval.planners import PlannerSpec, RandomPlanner
from vla.policies.mode import MoDEPolicy
from vla.policies.runtime import PolicyPlanner


def batch(rows: int, **obs: np.ndarray) -> dict:
    return {
        **obs,
        "task": [""] * rows,  # empty goals: MoDE skips the language encoder
        "episode_id": [f"e/{i}" for i in range(rows)],
        "plan_index": list(range(rows)),
        "policy_seed": [11 * i for i in range(rows)],
    }


def test_random_planner_is_bounded_and_reproducible_per_episode():
    planner = RandomPlanner([-1, -1, 0], [1, 1, 0.5], chunk=4)
    plan = planner.plan(batch(3))
    assert plan.actions.shape == (3, 4, 3) and plan.n_exec.tolist() == [4, 4, 4]
    assert (plan.actions >= [-1, -1, 0]).all() and (plan.actions <= [1, 1, 0.5]).all()
    alone = planner.plan({**batch(3), "policy_seed": [22], "plan_index": [2], "episode_id": ["e/2"]})
    np.testing.assert_array_equal(alone.actions[0], plan.actions[2])  # same row whatever the batch
    assert not np.array_equal(plan.actions[0], plan.actions[1])
    assert PlannerSpec("random", 2, (-1.0,), (1.0,)).build().plan(batch(1)).actions.shape == (1, 2, 1)


class ImageCheckingMoDE(MoDEPolicy):
    """MoDE that records what reaches it, to check the harness's HWC -> CHW boundary."""

    def predict_chunk(self, batch, **kw):
        self.seen = {k: tuple(v.shape) for k, v in batch.items() if isinstance(v, torch.Tensor)}
        self.seen_dtype = batch["observation.images.agentview"].dtype
        return super().predict_chunk(batch, **kw)


def test_policy_planner_converts_images_and_keeps_the_replan_interval():
    base = tiny_mode(camera_keys=("observation.images.agentview",), n_obs=2)
    policy = ImageCheckingMoDE(base.config)
    policy.load_state_dict(base.state_dict())
    policy.normalizer = base.normalizer
    planner = PolicyPlanner(policy, replan_steps=4)
    assert planner.obs_keys == ("observation.images.agentview", "observation.state") and planner.n_obs == 2
    images = np.random.default_rng(0).integers(0, 255, (3, 2, 40, 36, 3), dtype=np.uint8)
    plan = planner.plan(
        batch(3, **{"observation.images.agentview": images}, **{"observation.state": np.zeros((3, 2, 8))})
    )
    assert policy.seen["observation.images.agentview"] == (3, 2, 3, 40, 36)
    assert policy.seen_dtype == torch.uint8 and policy.seen["observation.state"] == (3, 2, 8)
    assert plan.actions.shape == (3, 6, 7) and plan.n_exec.tolist() == [4, 4, 4]
    assert np.isfinite(plan.actions).all()
    assert PolicyPlanner(policy, replan_steps=50).replan_steps == 6, "never past the predicted chunk"


class HorizonMoDE(MoDEPolicy):
    """A Mixture-of-Horizons-style policy: it says how many actions of each chunk to execute."""

    def predict_plan(self, batch):
        chunk = self.predict_chunk(batch)
        return chunk, torch.tensor([1, 3, 99])[: chunk.shape[0]]


def test_a_policy_can_choose_how_many_actions_to_execute():
    base = tiny_mode()
    policy = HorizonMoDE(base.config)
    planner = PolicyPlanner(policy, replan_steps=5)
    plan = planner.plan(batch(3, **{"observation.state": np.zeros((3, 1, 8), np.float32)}))
    assert plan.n_exec.tolist() == [1, 3, 6], "clipped to the chunk"
    assert planner.describe()["replan_steps"] == "policy-decided"


def test_simulator_workers_import_no_torch():
    """A worker process imports the episode machinery and its environment factory; torch and the checkpoint
    code load only where a policy runs (seconds and hundreds of MB per worker otherwise)."""
    import subprocess
    import sys

    code = (
        "import sys, vla.eval.worker, vla.eval.planners, vla.eval.protocols.libero, vla.eval.protocols.calvin; "
        "assert 'torch' not in sys.modules, sorted(m for m in sys.modules if m.startswith('vla.'))"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
