"""The conditioning encoder the policies share: a goal and camera frames -> context tokens.

The goal is an instruction embedded by a frozen language encoder (MiniLM by default; projected to the
token width) or a goal image (its own ResNet). Every camera has a FiLM ResNet conditioned on the goal,
giving one token per camera and observation frame; an optional state projection adds one token per
frame. Tokens: [goal, camera tokens (per camera, per frame), state tokens (per frame)].
MoDE uses it as its observation encoder, HiMoE as its default conditioning backbone.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

import torch
from torch import nn

from vla.errors import PolicyError
from vla.policies.modules.language import get_language_encoder
from vla.policies.modules.vision import FiLMResNet, to_float_images
from vla.policies.modules.vision_timm import make_camera_encoder


class LanguageSettings(Protocol):
    """What `embed_instructions` reads (a config with `ConditioningFields`)."""

    language_encoder: str
    language_path: str | None
    language_dim: int


def embed_instructions(tasks: Sequence[str], settings: LanguageSettings, device: torch.device) -> torch.Tensor:
    """(B, language_dim) frozen embeddings of the instructions. An all-"" batch needs no encoder: it is
    the zero "no goal" vector (goal-free tasks and tests stay light)."""
    texts = [str(t) for t in tasks]
    if not any(texts):
        return torch.zeros(len(texts), settings.language_dim, device=device)
    encoder = get_language_encoder(settings.language_encoder, settings.language_path)
    if encoder.dim != settings.language_dim:
        raise PolicyError(
            f"language encoder {settings.language_encoder!r} gives {encoder.dim}-d embeddings but "
            f"language_dim is {settings.language_dim}; set language_dim={encoder.dim}"
        )
    return encoder(texts).to(device)


def _module_key(camera_key: str) -> str:
    return camera_key.replace(".", "__")  # ModuleDict keys cannot contain dots


class ObservationEncoder(nn.Module):
    """Goal, camera frames and (optionally) state -> context tokens (B, N, dim) and the goal vector (B, dim)."""

    def __init__(
        self,
        dim: int,
        camera_keys: Sequence[str],
        vision_widths: Sequence[int],
        vision_blocks: Sequence[int],
        vision_norm: str,
        goal_dim: int | None,
        state_dim: int | None = None,
        vision_weights: str | Sequence[str] | None = None,
        vision_backbone: str = "film_resnet",
    ):
        """`goal_dim`: the instruction embedding size (a linear projection); None: goal images, encoded by a
        ResNet. `vision_weights`: optional local weight files, one for every camera or one per camera.
        `vision_backbone`: "film_resnet" or a timm ResNet name (vla.policies.modules.vision_timm)."""
        super().__init__()
        self.camera_keys = tuple(camera_keys)
        if goal_dim is not None:
            self.goal: nn.Module = nn.Linear(goal_dim, dim)
        else:
            self.goal = FiLMResNet(dim, None, vision_widths, vision_blocks, vision_norm)
        self.cameras = nn.ModuleDict(
            {
                _module_key(k): make_camera_encoder(
                    vision_backbone, dim, dim, vision_widths, vision_blocks, vision_norm
                )
                for k in self.camera_keys
            }
        )
        if vision_weights:
            paths = [vision_weights] * len(self.camera_keys) if isinstance(vision_weights, str) else vision_weights
            for k, path in zip(self.camera_keys, paths, strict=True):
                self.cameras[_module_key(k)].load_weights(path)
        self.state = nn.Linear(state_dim, dim) if state_dim is not None else None

    @property
    def language_goal(self) -> bool:
        return isinstance(self.goal, nn.Linear)

    def forward(
        self,
        images: Mapping[str, torch.Tensor],
        goal_input: torch.Tensor,
        state: torch.Tensor | None = None,
        keep_goal: torch.Tensor | None = None,
        goal_element_dropout: float = 0.0,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """`images[key]` (B, n_obs, 3, H, W) in [0, 1]; `goal_input`: instruction embeddings (B, goal_dim) or
        goal images (B, 3, H, W) in [0, 1]; `state` (B, n_obs, state_dim) normalised; `keep_goal` (B,) bool:
        False drops the whole goal, FiLM included (goal dropout per sequence); `goal_element_dropout` p > 0:
        each element of the goal embedding (the instruction embedding, or the encoded goal image) is zeroed
        with probability p in the goal token only, the camera encoders' FiLM still gets the full goal."""
        if self.language_goal:
            if keep_goal is not None:
                goal_input = goal_input * keep_goal.unsqueeze(-1).to(goal_input)
            goal = film = self.goal(goal_input)
            if goal_element_dropout > 0:
                goal = self.goal(_drop_elements(goal_input, goal_element_dropout))
        else:
            goal = film = self.goal(goal_input)
            if keep_goal is not None:
                goal = film = goal * keep_goal.unsqueeze(-1).to(goal)
            if goal_element_dropout > 0:
                goal = _drop_elements(goal, goal_element_dropout)
        tokens = [goal.unsqueeze(1)]
        for key in self.camera_keys:
            x = images[key].to(goal)
            b, n = x.shape[:2]
            feats = self.cameras[_module_key(key)](x.flatten(0, 1), film.repeat_interleave(n, dim=0))
            tokens.append(feats.view(b, n, -1))
        if self.state is not None:
            if state is None:
                raise PolicyError("this encoder reads the state: pass observation.state")
            tokens.append(self.state(state.to(goal)))  # (B, n_obs, dim)
        return torch.cat(tokens, dim=1), goal


def _drop_elements(x: torch.Tensor, p: float) -> torch.Tensor:
    """Each element zeroed with probability p (no rescaling: zeros are the "no goal" value)."""
    return x * (torch.rand_like(x) >= p).to(x)


def camera_frames(
    batch: Mapping[str, torch.Tensor], camera_keys: Sequence[str], n_obs: int, size: tuple[int, int] | None
) -> dict[str, torch.Tensor]:
    """Each camera's frames in a batch as (B, n_obs, 3, H, W) floats in [0, 1], resized to `size` (None: as
    they come, for an encoder that resizes itself)."""
    out = {}
    for key in camera_keys:
        if key not in batch:
            raise PolicyError(f"the batch is missing camera {key!r}")
        x = to_float_images(batch[key], size)
        if x.dim() != 5 or x.shape[1] != n_obs:
            raise PolicyError(f"{key!r} should be (B, n_obs={n_obs}, 3, H, W), got {tuple(x.shape)}")
        out[key] = x
    return out
