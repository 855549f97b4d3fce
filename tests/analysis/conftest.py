"""A tiny MoDE and a tiny HiMoE trained for a few steps on two embodiments of different action sizes (slot
layout)."""

from __future__ import annotations

import pytest

from tests.train.helpers import TINY, write_reach_store
from vla.train import TrainConfig, train

MOE = {**TINY, "n_layers": 2, "n_experts": 4, "top_k": 2}


@pytest.fixture(scope="session")
def two_embodiment_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("routing")
    a = write_reach_store(root / "eef.zarr", episodes=4, length=20)
    b = write_reach_store(root / "joint.zarr", episodes=4, length=20, action="joint5_gripper", embodiment="toy_b")
    tc = TrainConfig(data=(str(a.path), str(b.path)), out=str(root / "run"), steps=4, batch_size=8,
                     warmup_steps=1, progress=False)  # fmt: skip
    train("mode", tc, preset="cpu", overrides=MOE)
    return root, (str(a.path), str(b.path))


HIMOE = {"width": 32, "n_heads": 2, "layer_pattern": "ahda", "num_steps": 3}


@pytest.fixture(scope="session")
def himoe_run(two_embodiment_run):
    """A HiMoE (one layer of each kind) on the same two stores; (run folder, stores)."""
    root, stores = two_embodiment_run
    tc = TrainConfig(data=stores, out=str(root / "himoe"), steps=2, batch_size=8, warmup_steps=1, progress=False)
    train("himoe", tc, preset="cpu", overrides=HIMOE)
    return root / "himoe", stores
