"""Pluggable conditioning for the HiMoE head: images + instructions -> prefix tokens.

Interface (`ConditioningBackbone`): `out_dim`, and
    forward(images: {camera key: (B, n_obs, 3, H, W) float in [0, 1]}, language: B strings)
        -> tokens (B, N, out_dim), valid (B, N) bool.
Implementations:
- `DefaultBackbone`: one FiLM ResNet per camera (FiLM-conditioned on the instruction) and the
  frozen offline language encoder (MiniLM by default), as MoDE uses them: one goal token plus one
  token per camera and observation frame, all valid.
- "hf_vlm": `vla.policies.modules.vlm.VisionLanguageBackbone` (a PaliGemma-style VLM from a local
  directory), imported only when asked for, so the default path never needs its dependencies.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from vla.errors import PolicyError
from vla.policies.modules.language import get_language_encoder
from vla.policies.modules.vision import FiLMResNet


class ConditioningBackbone(nn.Module):
    """Images and instructions -> conditioning tokens and their validity (see the module docstring)."""

    out_dim: int

    def forward(
        self, images: Mapping[str, torch.Tensor], language: Sequence[str]
    ) -> tuple[torch.Tensor, torch.Tensor]:  # pragma: no cover
        raise NotImplementedError


def _module_key(camera_key: str) -> str:
    return camera_key.replace(".", "__")


class DefaultBackbone(ConditioningBackbone):
    """FiLM ResNet per camera + frozen language encoder -> [goal, camera tokens per frame]."""

    def __init__(
        self,
        camera_keys: Sequence[str],
        out_dim: int,
        language_encoder: str = "minilm",
        language_path: str | None = None,
        language_dim: int = 384,
        vision_widths: Sequence[int] = (64, 128, 256, 512),
        vision_blocks: Sequence[int] = (2, 2, 2, 2),
        vision_norm: str = "group",
    ):
        super().__init__()
        self.out_dim = out_dim
        self.camera_keys = tuple(camera_keys)
        self.language_encoder, self.language_path, self.language_dim = language_encoder, language_path, language_dim
        self.goal = nn.Linear(language_dim, out_dim)
        self.cameras = nn.ModuleDict(
            {
                _module_key(k): FiLMResNet(out_dim, out_dim, vision_widths, vision_blocks, vision_norm)
                for k in self.camera_keys
            }
        )

    def embed_language(self, language: Sequence[str], device: torch.device) -> torch.Tensor:
        texts = [str(t) for t in language]
        if not any(texts):  # all-"" batches need no encoder: "" is the zero "no goal" vector anyway
            return torch.zeros(len(texts), self.language_dim, device=device)
        encoder = get_language_encoder(self.language_encoder, self.language_path)
        if encoder.dim != self.language_dim:
            raise PolicyError(
                f"language encoder {self.language_encoder!r} gives {encoder.dim}-d embeddings but "
                f"language_dim is {self.language_dim}; set language_dim={encoder.dim}"
            )
        return encoder(texts).to(device)

    def forward(self, images: Mapping[str, torch.Tensor], language: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        device = self.goal.weight.device
        goal = self.goal(self.embed_language(language, device))  # (B, d)
        tokens = [goal.unsqueeze(1)]
        for key in self.camera_keys:
            x = images[key].to(goal)
            if x.dim() != 5:
                raise PolicyError(f"{key!r} should be (B, n_obs, 3, H, W), got {tuple(x.shape)}")
            b, n = x.shape[:2]
            feats = self.cameras[_module_key(key)](x.flatten(0, 1), goal.repeat_interleave(n, dim=0))
            tokens.append(feats.view(b, n, -1))
        out = torch.cat(tokens, dim=1)
        return out, torch.ones(out.shape[:2], dtype=torch.bool, device=out.device)


def build_backbone(config) -> ConditioningBackbone:
    """The config's conditioning backbone (config: HiMoEConfig)."""
    if config.backbone == "default":
        return DefaultBackbone(
            config.camera_keys,
            config.cond_dim,
            config.language_encoder,
            config.language_path,
            config.language_dim,
            config.vision_widths,
            config.vision_blocks,
            config.vision_norm,
        )
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
