"""Small builders shared by the HiMoE tests: tiny configs, synthetic batches (native and 24-slot), stats."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from vla.datasets import slots as slotlib
from vla.datasets.normalize import MultiNormalizer, Normalizer
from vla.policies.himoe import HiMoEConfig, HiMoEPolicy

CAM = "observation.images.front"
# Two robots in the slot layout: a 7-D end-effector arm and a 6-D joint-space arm.
EEF_SLOTS = (0, 1, 2, 3, 4, 5, 7)
JOINT_SLOTS = (8, 9, 10, 11, 12, 13)
STATE_SLOTS = ((8, 9, 10, 11), (8, 9, 10, 11, 12))


def tiny_config(**overrides: Any) -> HiMoEConfig:
    """The CPU preset, smaller still: one layer of each kind."""
    base = {
        "camera_keys": (CAM,),
        "state_dim": 5,
        "action_dim": 4,
        "chunk_size": 6,
        "n_action_steps": 6,
        "width": 32,
        "n_heads": 2,
        "layer_pattern": "ahda",
        "as_hidden": 32,
        "hb_experts": 4,
        "hb_hidden": 16,
        "hb_top_k": 2,
        "hb_shared_hidden": 16,
        "dense_hidden": 32,
        "cond_dim": 32,
        "vision_widths": (8, 16),
        "vision_blocks": (1, 1),
        "image_size": (32, 32),
        "language_dim": 16,
        "num_steps": 4,
    }
    return HiMoEConfig.from_preset("cpu", **{**base, **overrides})


def slot_config(**overrides: Any) -> HiMoEConfig:
    return tiny_config(**{"state_dim": 24, "action_dim": 24, **overrides})


def native_stats(config: HiMoEConfig) -> dict[str, dict[str, list[float]]]:
    out = {"action": {"min": [-2.0] * config.action_dim, "max": [3.0] * config.action_dim}}
    if config.state_dim is not None:
        out["observation.state"] = {"mean": [0.5] * config.state_dim, "std": [2.0] * config.state_dim}
    return out


def two_robot_normalizer() -> MultiNormalizer:
    """Embodiment 0: EEF arm (7-D action, 4-D state); 1: joint arm (6-D action, 5-D state)."""
    norms = []
    for action_slots, state_slots, lo in ((EEF_SLOTS, STATE_SLOTS[0], -1.0), (JOINT_SLOTS, STATE_SLOTS[1], -3.0)):
        stats = {
            "action": {"min": [lo] * len(action_slots), "max": [2.0] * len(action_slots)},
            "observation.state": {"mean": [0.1] * len(state_slots), "std": [1.5] * len(state_slots)},
        }
        norms.append(Normalizer.from_stats(stats, {"action": "min_max", "observation.state": "mean_std"}))
    slots = {"action": [list(EEF_SLOTS), list(JOINT_SLOTS)], "observation.state": [list(s) for s in STATE_SLOTS]}
    return MultiNormalizer(norms, slots, ["eef_arm", "joint_arm"])


def make_batch(config: HiMoEConfig, batch_size: int = 2, seed: int = 0, with_action: bool = True) -> dict[str, Any]:
    g = torch.Generator().manual_seed(seed)
    n = config.n_obs
    batch: dict[str, Any] = {}
    for key in config.camera_keys:
        batch[key] = torch.randint(0, 256, (batch_size, n, 3, 40, 40), dtype=torch.uint8, generator=g)
    if config.state_dim is not None:
        batch["observation.state"] = torch.randn(batch_size, n, config.state_dim, generator=g)
    batch["observation_is_pad"] = torch.zeros(batch_size, n, dtype=torch.bool)
    if with_action:
        batch["action"] = torch.rand(batch_size, config.chunk_size, config.action_dim, generator=g) * 4 - 1
        batch["action_is_pad"] = torch.zeros(batch_size, config.chunk_size, dtype=torch.bool)
    batch["task"] = [""] * batch_size
    batch["embodiment_id"] = torch.zeros(batch_size, dtype=torch.long)
    return batch


def make_slot_batch(config: HiMoEConfig, ids: list[int], seed: int = 0, with_action: bool = True) -> dict[str, Any]:
    """A 24-slot batch of the two robots of `two_robot_normalizer` (zeros in unused slots)."""
    batch = make_batch(config, len(ids), seed, with_action)
    eid = torch.tensor(ids)
    amask = torch.stack([torch.from_numpy(slotlib.slot_mask([EEF_SLOTS, JOINT_SLOTS][e])) for e in ids])
    smask = torch.stack([torch.from_numpy(slotlib.slot_mask(STATE_SLOTS[e])) for e in ids])
    batch["observation.state"] = batch["observation.state"] * smask[:, None, :]
    if with_action:
        batch["action"] = batch["action"] * amask[:, None, :]
    batch.update(embodiment_id=eid, action_slot_mask=amask, state_slot_mask=smask)
    return batch


def make_policy(config: HiMoEConfig | None = None, seed: int = 0) -> HiMoEPolicy:
    torch.manual_seed(seed)
    config = config or tiny_config()
    if config.action_dim == slotlib.NUM_SLOTS:
        policy = HiMoEPolicy(config)
        policy.set_normalization(two_robot_normalizer())
        return policy
    return HiMoEPolicy(config, native_stats(config))


def fixed_noise(config: HiMoEConfig, batch_size: int, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch_size, config.chunk_size, config.action_dim, generator=g)


def native_frames(config: HiMoEConfig, batch_size: int) -> dict[str, Any]:
    """An evaluation harness's batch: numpy, images (B, n_obs, H, W, 3) uint8."""
    rng = np.random.default_rng(0)
    out: dict[str, Any] = {
        k: rng.integers(0, 256, (batch_size, config.n_obs, 48, 48, 3), np.uint8) for k in config.camera_keys
    }
    if config.state_dim is not None:
        out["observation.state"] = rng.normal(size=(batch_size, config.n_obs, config.state_dim)).astype(np.float32)
    out.update(task=[""] * batch_size, episode_id=[str(i) for i in range(batch_size)],
               plan_index=[0] * batch_size, policy_seed=list(range(batch_size)))  # fmt: skip
    return out
