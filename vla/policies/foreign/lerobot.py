"""`--policy lerobot:DIR`: a LeRobot `PreTrainedPolicy` saved with `save_pretrained` (config.json,
model.safetensors) and its processor pipelines (policy_preprocessor.json, policy_postprocessor.json and
their state files), run through our harness.

The policy's `input_features` name what it reads; they must be the store's key names (`observation.state`,
`observation.images.<camera>`), as LeRobot datasets use. Images arrive uint8 HWC at the environment's size
and leave here as LeRobot's policies take them: float CHW in [0, 1], resized to the feature's shape. The
preprocessor normalises (and tokenises, for language policies, from `task`), the postprocessor
unnormalises: actions come back in the dataset's, i.e. the environment's, units and layout.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from vla.errors import PolicyError
from vla.keys import STATE_KEY, TASK_KEY
from vla.policies.foreign import LEROBOT_PREFIX, ForeignConfig
from vla.policies.runtime import ObservationHistory, Plan

PROCESSOR_FILES = ("policy_preprocessor.json", "policy_postprocessor.json")


def _check_directory(path: Path) -> None:
    missing = [f for f in ("config.json", "model.safetensors", *PROCESSOR_FILES) if not (path / f).is_file()]
    if missing:
        raise PolicyError(
            f"{LEROBOT_PREFIX}{path}: missing {', '.join(missing)}; save the policy with LeRobot's "
            "policy.save_pretrained(DIR) and its processors with preprocessor.save_pretrained(DIR) / "
            "postprocessor.save_pretrained(DIR)"
        )


class LeRobotPlanner:
    def __init__(self, directory: str | Path, device: str = "cpu", replan_steps: int | None = None):
        path = Path(directory)
        _check_directory(path)
        from lerobot.configs.policies import PreTrainedConfig
        from lerobot.configs.types import FeatureType
        from lerobot.policies.factory import get_policy_class, make_pre_post_processors

        self.source = f"{LEROBOT_PREFIX}{path}"
        from vla.policies.pretrained import resolve_device

        device = str(resolve_device(device))  # lerobot takes a concrete device, not "auto"
        try:
            cfg = PreTrainedConfig.from_pretrained(path, local_files_only=True)
            cfg.device = device
            self.policy = get_policy_class(cfg.type).from_pretrained(path, config=cfg, local_files_only=True).eval()
            self.pre, self.post = make_pre_post_processors(
                cfg, pretrained_path=str(path), preprocessor_overrides={"device_processor": {"device": device}}
            )
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise PolicyError(f"{self.source}: cannot load the LeRobot policy: {type(e).__name__}: {e}") from None
        self.device = device
        feats = cfg.input_features
        self.image_shapes = {k: tuple(f.shape) for k, f in feats.items() if f.type is FeatureType.VISUAL}
        other = {k: tuple(f.shape) for k, f in feats.items() if f.type in (FeatureType.STATE, FeatureType.ENV)}
        unknown = sorted(k for k in feats if k not in self.image_shapes and k not in other)
        if unknown:
            raise PolicyError(f"{self.source}: input features {unknown} are neither images nor vectors")
        if STATE_KEY in other and len(other[STATE_KEY]) != 1:
            raise PolicyError(f"{self.source}: {STATE_KEY} has shape {other[STATE_KEY]}, expected a vector")
        state = other.pop(STATE_KEY, None)
        action = cfg.output_features.get("action")
        # ACT returns its whole chunk from predict_action_chunk; the others (diffusion...) return n_action_steps.
        chunk = int(getattr(cfg, "chunk_size", None) or cfg.n_action_steps)
        first = next(iter(self.image_shapes.values()), (3, 224, 224))
        self.config = ForeignConfig(
            name=f"lerobot/{cfg.type}",
            camera_keys=tuple(self.image_shapes),
            state_dim=None if state is None else int(state[0]),
            action_dim=None if action is None else int(action.shape[0]),
            chunk_size=chunk,
            n_action_steps=int(cfg.n_action_steps),
            n_obs=int(cfg.n_obs_steps),
            image_size=(int(first[1]), int(first[2])),
            source=self.source,
            extra_shapes=other,
        )
        self.n_obs = self.config.n_obs
        self.obs_keys = self.config.observation_keys
        self.replan_steps = min(replan_steps or self.config.n_action_steps, chunk)

    @property
    def native_config(self) -> ForeignConfig:
        return self.config

    def _inputs(self, batch: Mapping[str, Any]) -> dict[str, Any]:
        import torch
        import torch.nn.functional as F

        out: dict[str, Any] = {TASK_KEY: [str(t) for t in batch[TASK_KEY]]}
        for key in self.obs_keys:
            x = torch.from_numpy(np.ascontiguousarray(batch[key]))  # (B, n_obs, ...)
            if key in self.image_shapes:
                b, n, h, w, c = x.shape
                _, th, tw = self.image_shapes[key]
                x = x.reshape(b * n, h, w, c).permute(0, 3, 1, 2).float() / 255.0
                if (h, w) != (th, tw):
                    x = F.interpolate(x, size=(th, tw), mode="bilinear", align_corners=False, antialias=True)
                x = x.reshape(b, n, c, th, tw)
            else:
                x = x.float()
            out[key] = x[:, 0] if self.n_obs == 1 else x  # LeRobot takes (B, ...) when it reads one frame
        return out

    def plan(self, batch: Mapping[str, Any]) -> Plan:
        import torch

        with torch.no_grad():
            inputs = self.pre(self._inputs(batch))
            chunk = self.post(self.policy.predict_action_chunk(inputs))
        actions = torch.as_tensor(chunk).detach().float().cpu().numpy().astype(np.float64)
        if actions.ndim == 2:  # a policy that returns one action per row
            actions = actions[:, None]
        return Plan(actions, np.full(actions.shape[0], min(self.replan_steps, actions.shape[1])))

    def new_history(self) -> ObservationHistory:
        return ObservationHistory(self.n_obs, self.obs_keys)

    def describe(self) -> dict[str, Any]:
        return {
            "type": self.config.name,
            "chunk_size": self.config.chunk_size,
            "n_obs": self.n_obs,
            "replan_steps": self.replan_steps,
            "parameters": int(sum(p.numel() for p in self.policy.parameters())),
        }
