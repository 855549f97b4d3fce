"""Planners: observation -> action chunk (H, A) in raw units. `PolicyPlanner` wraps any policy with the
`predict_chunk` interface; this is the one place of the deploy path that imports torch."""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from vla.real_robot.loop import STATE_KEY
from vla.real_robot.workers import Observation


class ObsHistory:
    """The last `n` frames per key, the first frame repeated after a reset (as in training)."""

    def __init__(self, n: int):
        self.n = n
        self._frames: dict[str, deque[np.ndarray]] = {}

    def push(self, key: str, frame: np.ndarray) -> np.ndarray:
        hist = self._frames.get(key)
        if hist is None:
            hist = self._frames[key] = deque([frame] * self.n, maxlen=self.n)
        else:
            hist.append(frame)
        return np.stack(list(hist))


class PolicyPlanner:
    """`embodiment`: for a policy trained on several robots (24-slot layout), which of them this arm
    is; it then reads this arm's native state and returns its native actions."""

    def __init__(self, policy: Any, device: str = "cpu", embodiment: str | None = None):
        import torch

        from vla.policies.embodiment import EmbodimentLayout
        from vla.policies.policy import Policy

        self.torch = torch
        if isinstance(policy, str | Path):
            policy = Policy.from_pretrained(policy, map_location=device)
        self.policy = policy
        if hasattr(policy, "eval"):
            policy.eval()
        self.config = policy.config
        self.device = device
        self.layout = EmbodimentLayout.of(policy, embodiment) if hasattr(policy, "normalizer") else None
        self.history = self.new_history()

    @property
    def camera_keys(self) -> tuple[str, ...]:
        return tuple(self.config.camera_keys)

    @property
    def state_dim(self) -> int | None:
        return self.layout.state_dim if self.layout is not None else self.config.state_dim

    @property
    def action_dim(self) -> int:
        return self.layout.action_dim if self.layout is not None else self.config.action_dim

    def warmup(self, task: str = "") -> None:
        """One throw-away plan: the language encoder and kernels load now, not on the first control tick."""
        obs: Observation = {k: np.zeros((*self.config.image_size, 3), np.uint8) for k in self.camera_keys}
        if self.state_dim is not None:
            obs[STATE_KEY] = np.zeros(self.state_dim, np.float32)
        obs["task"] = task
        self.predict_batch([(obs, self.new_history())])

    def new_history(self) -> ObsHistory:
        return ObsHistory(self.config.n_obs)

    def reset(self) -> None:
        self.history = self.new_history()

    def __call__(self, obs: Observation) -> np.ndarray:
        return self.predict_batch([(obs, self.history)])[0]

    def predict_batch(self, items: Sequence[tuple[Observation, ObsHistory]]) -> list[np.ndarray]:
        """One forward pass for several clients' observations (the server batches with this)."""
        from vla.policies.runtime import observation_batch

        torch = self.torch
        keys = self.config.observation_keys
        frames = {k: np.stack([hist.push(k, np.asarray(obs[k])) for obs, hist in items]) for k in keys}
        tasks = [str(obs.get("task", "")) for obs, _ in items]
        batch = observation_batch(self.config, frames, tasks, self.device, self.layout)
        with torch.no_grad():
            out = self.policy.predict_chunk(batch)
            if self.layout is not None:
                out = self.layout.to_native(out)
        arr = out.detach().float().cpu().numpy()
        return list(arr)
