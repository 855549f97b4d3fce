"""Shared builders for the real-robot tests: arms, emulators, deterministic planners, a tiny MoDE checkpoint."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from vla.policies.runtime import ObservationHistory
from vla.real_robot.arm import ArmSpec, load_arm
from vla.real_robot.dryrun import EMULATOR_LATENCY_MS

STATE = "observation.state"


def servo_arm(driver: str) -> ArmSpec:
    """The built-in arm, with the SDK's answer timeout widened as in dry runs (shared CI cores are slow)."""
    spec = load_arm("so101" if driver == "feetech" else "koch")
    return spec.replace(extra={**spec.extra, "latency_timer_ms": EMULATOR_LATENCY_MS})


class RampPlanner:
    """Deterministic: action[i] = state + step * (i + 1). The deploy/server side of the runtime's PolicyPlanner."""

    def __init__(self, dof: int = 6, horizon: int = 8, step: float = 0.01):
        self.native_config = SimpleNamespace(camera_keys=(), state_dim=dof, action_dim=dof)
        self.horizon, self.step = horizon, step
        self.calls = 0

    def new_history(self) -> ObservationHistory:
        return ObservationHistory(1, (STATE,))

    def expected(self, state: np.ndarray) -> np.ndarray:
        ramp = self.step * np.arange(1, self.horizon + 1)[:, None]
        return np.asarray(state, dtype=np.float64)[None] + ramp

    def __call__(self, obs: dict[str, Any]) -> np.ndarray:
        self.calls += 1
        return self.expected(obs[STATE])

    def plan_streams(self, items: list[tuple[dict[str, Any], ObservationHistory]]) -> list[np.ndarray]:
        self.calls += 1
        return [self.expected(obs[STATE]) for obs, _ in items]


def tiny_mode_checkpoint(directory: Path, dof: int = 6, camera_keys: tuple[str, ...] = (), **overrides: Any) -> Path:
    from vla.policies.mode import MoDEConfig, MoDEPolicy

    sizes: dict[str, Any] = {
        "camera_keys": camera_keys,
        "state_dim": dof,
        "action_dim": dof,
        "chunk_size": 6,
        "n_action_steps": 6,
        "width": 32,
        "n_heads": 2,
        "n_layers": 1,
        "num_sampling_steps": 2,
        "vision_widths": (8, 16),
        "vision_blocks": (1, 1),
        "image_size": (32, 32),
    }
    config = MoDEConfig.from_preset("cpu", **{**sizes, **overrides})
    stats = {
        "action": {"min": [-0.5] * dof, "max": [0.5] * dof},
        STATE: {"mean": [0.0] * dof, "std": [1.0] * dof},
    }
    return MoDEPolicy(config, stats).save_pretrained(directory)
