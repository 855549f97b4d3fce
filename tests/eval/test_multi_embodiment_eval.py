"""A policy trained on a mixture of embodiments (24-slot layout) runs in LIBERO as LIBERO's arm:
native 8-D state in, native 7-D actions out, checked against that embodiment's training spec."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from tests.datasets.store_helpers import write_toy_store
from tests.eval.helpers import eval_config, fitting_data_spec
from vla.datasets.store import Episode, StoreWriter
from vla.errors import PolicyError
from vla.eval.protocols.libero import evaluate_libero, prepare
from vla.policies.policy import Policy
from vla.policies.runtime import PolicyPlanner
from vla.train import TrainConfig, train

TINY_HIMOE = {"width": 32, "n_heads": 2, "layer_pattern": "ahda", "num_steps": 2, "chunk_size": 6, "n_action_steps": 6}


def write_libero_like(path: Path, episodes: int = 3, length: int = 20) -> str:
    spec = fitting_data_spec()
    rng = np.random.default_rng(0)
    w = StoreWriter(path, spec)
    for i in range(episodes):
        frames = {k: rng.uniform(-1, 1, (length, *ks.shape)).astype(ks.dtype) for k, ks in spec.keys().items()}
        w.add_episode(Episode(frames=frames, task="pick up the alphabet soup and place it in the basket",
                              source_id=str(i)))  # fmt: skip
    return str(w.finalize().path)


def train_mixture(root: Path, stores: list[str]) -> Path:
    tc = TrainConfig(data=tuple(stores), out=str(root / "run"), steps=2, batch_size=4, warmup_steps=1,
                     progress=False)  # fmt: skip
    train("himoe", tc, preset="cpu", overrides=TINY_HIMOE)
    return root / "run" / "last"


@pytest.fixture(scope="module")
def mixture_ckpt(tmp_path_factory):
    root = tmp_path_factory.mktemp("mixture")
    libero = write_libero_like(root / "libero.zarr")
    joint = write_toy_store(root / "joint.zarr", [20, 20], cameras=(), action="joint5_gripper", embodiment="toy_b")
    return train_mixture(root, [libero, str(joint.path)])


def test_mixture_policy_runs_in_libero_with_native_actions(mixture_ckpt, tmp_path):
    policy = Policy.from_pretrained(mixture_ckpt)
    assert policy.config.action_dim == 24 and policy.config.state_dim == 24
    summary = evaluate_libero(eval_config(tmp_path / "eval", policy=str(mixture_ckpt), init_states=[0]),
                              progress=False)  # fmt: skip
    assert summary["episodes"] == 1
    planner = PolicyPlanner(policy, embodiment="libero_panda")
    batch = {"observation.state": np.zeros((2, 1, 8), np.float32), "task": ["pick up the soup"] * 2}
    plan = planner.plan(batch)
    assert plan.actions.shape == (2, 6, 7)  # the LIBERO arm's own 7 action dimensions
    # the same rows through the policy directly: the LIBERO arm's slots of the 24-slot chunk
    torch.manual_seed(0)
    again = PolicyPlanner(policy, embodiment="libero_panda").plan(batch)
    torch.manual_seed(0)
    inputs = planner.layout.to_policy({"observation.state": torch.zeros(2, 1, 8), "task": batch["task"],
                                       "observation_is_pad": torch.zeros(2, 1, dtype=torch.bool)})  # fmt: skip
    direct = policy.predict_chunk(inputs)[..., list(planner.layout.action_slots)]
    np.testing.assert_allclose(again.actions, direct.numpy(), atol=1e-5)


def test_a_mixture_without_the_envs_robot_is_refused(tmp_path):
    a = write_toy_store(tmp_path / "a.zarr", [20], cameras=(), embodiment="toy_a")
    b = write_toy_store(tmp_path / "b.zarr", [20], cameras=(), action="joint5_gripper", embodiment="toy_b")
    ckpt = train_mixture(tmp_path, [str(a.path), str(b.path)])
    with pytest.raises(PolicyError, match=r"several embodiments \(toy_a, toy_b\).*'libero_panda'"):
        prepare(eval_config(tmp_path / "eval", policy=str(ckpt)))
