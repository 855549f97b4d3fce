"""Small builders shared by the MoDE tests: configs, synthetic batches, statistics."""

from __future__ import annotations

from typing import Any

import torch

from vla.policies.mode import MoDEConfig, MoDEPolicy

CAM_A, CAM_B = "observation.images.front", "observation.images.wrist"


def tiny_config(**overrides: Any) -> MoDEConfig:
    """The CPU preset, made smaller still where it does not matter for the test."""
    base = {
        "camera_keys": (CAM_A,),
        "state_dim": 5,
        "action_dim": 4,
        "chunk_size": 6,
        "n_action_steps": 6,
        "width": 64,
        "n_heads": 4,
        "n_layers": 2,
        "vision_widths": (8, 16),
        "vision_blocks": (1, 1),
        "image_size": (32, 32),
        "language_dim": 16,
        "num_sampling_steps": 4,
    }
    return MoDEConfig.from_preset("cpu", **{**base, **overrides})


def stats_for(config: MoDEConfig) -> dict[str, dict[str, list[float]]]:
    out = {"action": {"min": [-2.0] * config.action_dim, "max": [3.0] * config.action_dim}}
    if config.state_dim is not None:
        out["observation.state"] = {"mean": [0.5] * config.state_dim, "std": [2.0] * config.state_dim}
    return out


def make_batch(config: MoDEConfig, batch_size: int = 2, seed: int = 0, with_action: bool = True) -> dict[str, Any]:
    g = torch.Generator().manual_seed(seed)
    n = config.n_obs
    batch: dict[str, Any] = {}
    for i, key in enumerate(config.camera_keys):
        size = 40 + 8 * i  # not the policy's image size: the policy resizes
        batch[key] = torch.randint(0, 256, (batch_size, n, 3, size, size), dtype=torch.uint8, generator=g)
    if config.state_dim is not None:
        batch["observation.state"] = torch.randn(batch_size, n, config.state_dim, generator=g)
    if config.goal_type == "image":
        batch[config.goal_image_key] = torch.randint(0, 256, (batch_size, 3, 36, 36), dtype=torch.uint8, generator=g)
    batch["observation_is_pad"] = torch.zeros(batch_size, n, dtype=torch.bool)
    if with_action:
        batch["action"] = torch.rand(batch_size, config.chunk_size, config.action_dim, generator=g) * 5 - 2
        batch["action_is_pad"] = torch.zeros(batch_size, config.chunk_size, dtype=torch.bool)
    batch["task"] = [""] * batch_size
    batch["embodiment_id"] = torch.zeros(batch_size, dtype=torch.long)
    return batch


def make_policy(config: MoDEConfig | None = None, seed: int = 0) -> MoDEPolicy:
    torch.manual_seed(seed)
    config = config or tiny_config()
    return MoDEPolicy(config, stats_for(config))


def sharpen_routers(policy: MoDEPolicy, std: float = 1.0, seed: int = 0) -> None:
    """Random routers with real preferences, so the expert choice changes with the noise level."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        modules = [policy.transformer.noise_emb, *(b.ffn.router for b in policy.transformer.blocks)]
        for module in modules:
            for name, p in module.named_parameters():
                p.copy_(torch.zeros_like(p) if name.endswith("bias") else torch.randn(p.shape, generator=g) * std)
