"""A policy trained on several robots' stores deploys on one of them: the arm file's name picks its
slots, the safety layer sees native joint commands, and an arm the policy never saw is refused."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.datasets.store_helpers import write_toy_store
from vla.datasets.store import Episode, StoreWriter
from vla.errors import VlaError
from vla.real_robot.arm import load_arm
from vla.real_robot.deploy import DeployOptions, deploy, load_policy_planner
from vla.real_robot.recorder import store_spec
from vla.train import TrainConfig, train

TINY = {"width": 32, "n_heads": 2, "n_layers": 1, "num_sampling_steps": 2, "chunk_size": 6, "n_action_steps": 6}


def write_arm_store(path: Path, arm_name: str) -> str:
    arm = load_arm(arm_name)
    spec = store_spec(arm, arm.rate_hz, {})
    rng = np.random.default_rng(0)
    w = StoreWriter(path, spec)
    for i in range(2):
        q = rng.uniform(arm.low, arm.high, (20, arm.dof)).astype(np.float32)
        w.add_episode(Episode(frames={"observation.state": q, "action": q}, task="pick", source_id=str(i)))
    return str(w.finalize().path)


@pytest.fixture(scope="module")
def mixture(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("mix")
    so101 = write_arm_store(root / "so101.zarr", "so101")
    other = write_toy_store(root / "eef.zarr", [20, 20], cameras=(), embodiment="toy_eef")
    tc = TrainConfig(data=(so101, str(other.path)), out=str(root / "run"), steps=2, batch_size=4, warmup_steps=1,
                     progress=False)  # fmt: skip
    train("mode", tc, preset="cpu", overrides=TINY)
    return root / "run" / "last"


def test_mixture_policy_acts_in_the_arms_native_joints(mixture):
    arm = load_arm("so101")
    planner = load_policy_planner(str(mixture), embodiment="so101")
    native = planner.native_config
    assert planner.policy.config.action_dim == 24 and (native.state_dim, native.action_dim) == (arm.dof, arm.dof)
    obs = {"observation.state": np.zeros(arm.dof, np.float32), "task": "pick"}
    assert planner(obs).shape == (6, arm.dof)
    (report,) = deploy(DeployOptions(robot="so101", policy=str(mixture), dry_run=True, seconds=0.4, fps=10.0,
                                     task="pick"))  # fmt: skip
    assert report.ended == "finished"


def test_an_arm_the_mixture_never_saw_is_refused_before_it_moves(mixture):
    with pytest.raises(VlaError, match=r"several embodiments \(so101, toy_eef\).*'koch'"):
        deploy(DeployOptions(robot="koch", policy=str(mixture), dry_run=True, seconds=0.2))
