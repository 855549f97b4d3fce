"""Policies that are not ours, behind the planner interface: a LeRobot `PreTrainedPolicy` directory
(`lerobot:DIR`) and any openpi-style websocket policy server (`ws://HOST:PORT`).

Both take observation histories in the store's key names and return `Plan`s in the environment's action
layout, so the evaluation harness (and the deploy loop) runs them like our own checkpoints. Their
`native_config` is a `ForeignConfig`: the few fields the harness's fit checks read.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from vla.errors import PolicyError
from vla.keys import STATE_KEY

LEROBOT_PREFIX = "lerobot:"
WEBSOCKET_PREFIXES = ("ws://", "wss://")


def is_foreign(policy: str) -> bool:
    """Whether a `--policy` value names a foreign policy rather than a checkpoint directory."""
    return policy.startswith(LEROBOT_PREFIX) or policy.startswith(WEBSOCKET_PREFIXES)


@dataclass(frozen=True)
class ForeignConfig:
    """What a foreign policy reads and returns, in the store's key names."""

    name: str
    camera_keys: tuple[str, ...]
    state_dim: int | None
    action_dim: int | None
    chunk_size: int  # the most actions one plan returns
    n_action_steps: int  # the actions executed per plan when nothing else is asked
    n_obs: int = 1
    image_size: tuple[int, int] = (224, 224)
    source: str = ""  # what to name in errors
    extra_shapes: Mapping[str, tuple[int, ...]] = field(default_factory=dict)  # other keys read, e.g. env state

    @property
    def observation_keys(self) -> tuple[str, ...]:
        state = (STATE_KEY,) if self.state_dim is not None else ()
        return (*self.camera_keys, *state, *self.extra_shapes)

    def check_features(self, features: Mapping[str, Any]) -> None:
        """Raise PolicyError naming every key the environment lacks or gives in another shape."""
        problems = []
        for key in self.observation_keys:
            if key not in features:
                problems.append(f"missing {key!r}")
                continue
            shape = tuple(getattr(features[key], "shape", features[key]))
            if key in self.camera_keys:
                if len(shape) != 3 or shape[-1] != 3:
                    problems.append(f"{key!r} should be an HWC RGB image, has per-frame shape {shape}")
            elif key == STATE_KEY and shape != (self.state_dim,):
                problems.append(f"{key!r} has per-frame shape {shape}, the policy reads ({self.state_dim},)")
            elif key in self.extra_shapes and shape != tuple(self.extra_shapes[key]):
                problems.append(f"{key!r} has per-frame shape {shape}, the policy reads {self.extra_shapes[key]}")
        if problems:
            have = ", ".join(sorted(features))
            raise PolicyError(
                f"{self.source}: the policy's input features do not match this environment: {'; '.join(problems)} "
                f"(the environment gives: {have}); rename the policy's features to the store's key names"
            )


def build_foreign(policy: str, device: str = "cpu", replan_steps: int | None = None, api_key: str | None = None) -> Any:
    """The planner for a `lerobot:DIR` or `ws://HOST:PORT` policy."""
    if policy.startswith(LEROBOT_PREFIX):
        from vla.policies.foreign.lerobot import LeRobotPlanner

        return LeRobotPlanner(policy.removeprefix(LEROBOT_PREFIX), device=device, replan_steps=replan_steps)
    if policy.startswith(WEBSOCKET_PREFIXES):
        from vla.policies.foreign.websocket import WebsocketPlanner

        return WebsocketPlanner(policy, api_key=api_key, replan_steps=replan_steps)
    raise PolicyError(f"--policy {policy!r}: not a foreign policy (lerobot:DIR or ws://HOST:PORT)")
