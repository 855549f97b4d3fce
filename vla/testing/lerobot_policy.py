"""A tiny LeRobot ACT policy with random weights, saved as LeRobot saves a trained one: the policy with
`save_pretrained` and its pre/post-processor pipelines (normalisation statistics included) next to it."""

from __future__ import annotations

from pathlib import Path

import torch


def write_tiny_act(
    directory: Path,
    state_dim: int | None,
    action_dim: int,
    cameras: dict[str, tuple[int, int]],
    chunk: int = 4,
    seed: int = 0,
) -> Path:
    """`cameras`: feature name (the store's key) -> (height, width) the policy reads."""
    from lerobot.configs.types import FeatureType, PolicyFeature
    from lerobot.policies.act.configuration_act import ACTConfig
    from lerobot.policies.act.modeling_act import ACTPolicy
    from lerobot.policies.factory import make_pre_post_processors

    inputs = {k: PolicyFeature(FeatureType.VISUAL, (3, h, w)) for k, (h, w) in cameras.items()}
    if state_dim is not None:
        inputs["observation.state"] = PolicyFeature(FeatureType.STATE, (state_dim,))
    config = ACTConfig(
        input_features=inputs,
        output_features={"action": PolicyFeature(FeatureType.ACTION, (action_dim,))},
        chunk_size=chunk,
        n_action_steps=chunk,
        dim_model=32,
        n_heads=2,
        dim_feedforward=64,
        n_encoder_layers=1,
        n_decoder_layers=1,
        use_vae=False,
        pretrained_backbone_weights=None,  # no download: random weights
        device="cpu",
    )
    torch.manual_seed(seed)
    policy = ACTPolicy(config)
    stats = {k: {"mean": torch.full((3, 1, 1), 0.5), "std": torch.full((3, 1, 1), 0.25)} for k in cameras}
    if state_dim is not None:
        stats["observation.state"] = {"mean": torch.zeros(state_dim), "std": torch.ones(state_dim)}
    # Actions: a small spread around zero, so random weights give actions in a sane range.
    stats["action"] = {"mean": torch.zeros(action_dim), "std": torch.full((action_dim,), 0.1)}
    pre, post = make_pre_post_processors(config, dataset_stats=stats)
    directory.mkdir(parents=True, exist_ok=True)
    policy.save_pretrained(directory)
    pre.save_pretrained(directory)
    post.save_pretrained(directory)
    return directory


def write_tiny_diffusion(directory: Path, state_dim: int, action_dim: int, camera: str, size: int = 32) -> Path:
    """A tiny LeRobot Diffusion Policy reading two observation frames (n_obs_steps=2), random weights."""
    from lerobot.configs.types import FeatureType, PolicyFeature
    from lerobot.policies.diffusion.configuration_diffusion import DiffusionConfig
    from lerobot.policies.diffusion.modeling_diffusion import DiffusionPolicy
    from lerobot.policies.factory import make_pre_post_processors

    inputs = {camera: PolicyFeature(FeatureType.VISUAL, (3, size, size)),
              "observation.state": PolicyFeature(FeatureType.STATE, (state_dim,))}  # fmt: skip
    config = DiffusionConfig(
        input_features=inputs,
        output_features={"action": PolicyFeature(FeatureType.ACTION, (action_dim,))},
        n_obs_steps=2,
        horizon=8,
        n_action_steps=4,
        down_dims=(16, 32),
        pretrained_backbone_weights=None,
        crop_shape=None,
        num_inference_steps=2,
        use_group_norm=True,
        spatial_softmax_num_keypoints=8,
        diffusion_step_embed_dim=16,
        device="cpu",
    )
    torch.manual_seed(0)
    policy = DiffusionPolicy(config)
    bounds = {"min": -torch.ones(action_dim), "max": torch.ones(action_dim)}
    stats = {
        camera: {"mean": torch.full((3, 1, 1), 0.5), "std": torch.full((3, 1, 1), 0.25)},
        "observation.state": {"min": -torch.ones(state_dim), "max": torch.ones(state_dim)},
        "action": bounds,
    }
    pre, post = make_pre_post_processors(config, dataset_stats=stats)
    directory.mkdir(parents=True, exist_ok=True)
    for part in (policy, pre, post):
        part.save_pretrained(directory)
    return directory
