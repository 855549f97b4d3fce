"""One `vla.train` run of HiMoE on a mixture of two robots with different action spaces (a 7-D delta
end-effector arm at 10 fps and a 6-D joint-space arm at 30 fps): every batch mixes them, and
afterwards the action-space routers send each robot's tokens to its own expert."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from tests.datasets.store_helpers import small_spec
from tests.train.helpers import reach_episode
from vla.datasets.sampler import MixtureDataset, WindowConfig, WindowDataset
from vla.datasets.store import Episode, Store, StoreWriter
from vla.policies.himoe import HiMoEPolicy
from vla.policies.policy import Policy
from vla.train import TrainConfig, train

TINY = {"width": 32, "n_heads": 2, "num_steps": 4}  # the cpu preset (one layer of each kind), narrower


def write_store(path: Path, action: str, embodiment: str, fps: float, seed: int) -> Store:
    spec = small_spec(cameras=(), action=action, embodiment=embodiment, fps=fps)
    rng = np.random.default_rng(seed)
    w = StoreWriter(path, spec)
    for i in range(6):
        s, a = reach_episode(rng, 24)
        # no instruction: the test needs no language model
        w.add_episode(
            Episode(frames={"observation.state": s, "action": a[:, : spec.action_dim]}, task="", source_id=f"{i}")
        )
    return w.finalize()


def routing_purity(policy: HiMoEPolicy, batch: dict) -> list[tuple[list[int], list[float]]]:
    """Per AS-MoE layer: (majority expert per embodiment, fraction of its tokens that go there)."""
    out = []
    ids = batch["embodiment_id"]
    for record in policy.inspect_routing(batch, torch.full((len(ids),), 0.5)):
        if record.kind != "action_space":
            continue
        choice = record.weights.argmax(-1)  # (B, T)
        majority, purity = [], []
        for e in ids.unique().tolist():
            counts = torch.bincount(choice[ids == e].reshape(-1), minlength=record.weights.shape[-1])
            majority.append(int(counts.argmax()))
            purity.append(float(counts.max() / counts.sum()))
        out.append((majority, purity))
    return out


def test_routers_separate_the_action_spaces_after_one_mixed_run(tmp_path, monkeypatch):
    eef = write_store(tmp_path / "eef.zarr", "eef_delta_axis_angle_gripper", "toy_eef", 10, 0)
    joint = write_store(tmp_path / "joint.zarr", "joint5_gripper", "toy_joint", 30, 1)
    assert (eef.fps, joint.fps, eef.spec.action_dim, joint.spec.action_dim) == (10, 30, 7, 6)
    seen: list[torch.Tensor] = []
    forward = HiMoEPolicy.forward

    def recording(self, batch):
        seen.append(batch["embodiment_id"].clone())
        return forward(self, batch)

    monkeypatch.setattr(HiMoEPolicy, "forward", recording)
    run = {"steps": 100, "batch_size": 16, "warmup_steps": 10, "lr": 1e-3, "ema_decay": 0.0, "save_every": 1000}
    tc = TrainConfig(data=(str(eef.path), str(joint.path)), out=str(tmp_path / "run"), progress=False, **run)
    result = train("himoe", tc, preset="cpu", overrides=TINY)
    assert len(seen) == 100 and all(len(ids.unique()) == 2 for ids in seen)  # every batch mixes both robots
    assert result.last_loss < result.first_loss

    policy = Policy.from_pretrained(tmp_path / "run" / "last").eval()
    assert isinstance(policy, HiMoEPolicy) and policy.config.action_dim == 24
    window = WindowConfig(horizons=(policy.config.chunk_size,))
    mixture = MixtureDataset([WindowDataset(eef, window), WindowDataset(joint, window)], slots=True)
    batch = torch.utils.data.default_collate([mixture[i] for i in range(0, len(mixture), 5)])
    layers = routing_purity(policy, batch)
    assert len(layers) == 2
    for majority, purity in layers:
        assert len(set(majority)) == 2, layers  # distinct experts for the two action spaces
        assert min(purity) >= 0.95, layers
    # the native layouts come back per robot
    native = policy.predict_native({k: v[:4] if hasattr(v, "__getitem__") else v for k, v in batch.items()})
    dims = {0: 7, 1: 6}
    expected = [dims[int(e)] for e in batch["embodiment_id"][:4]]
    assert [a.shape[-1] for a in native] == expected
