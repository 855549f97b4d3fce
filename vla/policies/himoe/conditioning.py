"""Pluggable conditioning for the HiMoE head: images + instructions -> prefix tokens.

Interface (`ConditioningBackbone`): `out_dim`, and
    forward(images: {camera key: (B, n_obs, 3, H, W) float in [0, 1]}, language: B strings)
        -> tokens (B, N, out_dim), valid (B, N) bool.
Implementations:
- `DefaultBackbone`: the observation encoder MoDE uses too (vla.policies.modules.conditioning): one FiLM
  ResNet per camera, FiLM-conditioned on the instruction from the frozen offline language encoder
  (MiniLM by default): one goal token plus one token per camera and observation frame, all valid.
- "hf_vlm": `vla.policies.modules.vlm.VisionLanguageBackbone` (a PaliGemma-style VLM from a local
  directory), imported only when asked for, so the default path never needs its dependencies.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Protocol

import torch

from vla.errors import PolicyError
from vla.policies.modules.conditioning import ObservationEncoder, embed_instructions

if TYPE_CHECKING:
    from vla.policies.himoe.configuration_himoe import HiMoEConfig


class ConditioningBackbone(Protocol):
    """Images and instructions -> conditioning tokens and their validity (see the module docstring)."""

    out_dim: int

    def __call__(
        self, images: Mapping[str, torch.Tensor], language: Sequence[str]
    ) -> tuple[torch.Tensor, torch.Tensor]: ...


class DefaultBackbone(ObservationEncoder):
    """The shared observation encoder as a conditioning backbone: [goal, camera tokens per frame], all valid."""

    def __init__(self, config: HiMoEConfig):
        super().__init__(
            config.cond_dim,
            config.camera_keys,
            config.vision_widths,
            config.vision_blocks,
            config.vision_norm,
            goal_dim=config.language_dim,
            vision_weights=config.vision_weights,
            vision_backbone=config.vision_backbone,
        )
        self.out_dim = config.cond_dim
        self.language = config  # the language encoder settings (ConditioningFields)

    def forward(  # type: ignore[override]  # the backbone interface: instructions, not their embeddings
        self, images: Mapping[str, torch.Tensor], language: Sequence[str]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        goal_input = embed_instructions(language, self.language, self.goal.weight.device)
        tokens, _ = super().forward(images, goal_input)
        return tokens, torch.ones(tokens.shape[:2], dtype=torch.bool, device=tokens.device)


def build_backbone(config: HiMoEConfig) -> ConditioningBackbone:
    """The config's conditioning backbone."""
    if config.backbone == "default":
        return DefaultBackbone(config)
    if config.backbone == "hf_vlm":
        if not config.backbone_path:
            raise PolicyError("backbone='hf_vlm' needs backbone_path, the local directory of the model")
        from vla.policies.modules.vlm import VisionLanguageBackbone  # heavy, optional: only when asked for

        return VisionLanguageBackbone(
            config.backbone_path,
            camera_keys=config.camera_keys,
            freeze=config.backbone_freeze,
            max_text_tokens=config.backbone_max_text_tokens,
        )
    raise PolicyError(f"unknown backbone {config.backbone!r}")
