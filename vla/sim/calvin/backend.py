"""What the CALVIN protocol code needs from a simulator: the contract between `vla.sim.calvin`
(chains, oracle, environment wrapper, all pure Python) and a backend (the real PyBullet
simulator from a user's `calvin_env` checkout, or the fake one tests use).

Observations and infos keep calvin_env's own structure (`PlayTableSimEnv.get_obs()` /
`get_info()`), so the oracle reads exactly what the reference oracle reads and the converter's
observation conventions apply unchanged:

- obs: {"rgb_obs": {"rgb_static": (H, W, 3) uint8, "rgb_gripper": (h, w, 3) uint8},
        "robot_obs": (15,) float, "scene_obs": (24,) float}
- info: {"robot_info": {"uid": int, "contacts": ...},
         "scene_info": {"fixed_objects": {...}, "movable_objects": {name: {"current_pos",
         "current_orn", "current_lin_vel", "current_ang_vel", "contacts", "uid"}},
         "doors": {name: {"current_state"}}, "buttons": ..., "switches": ...,
         "lights": {name: {"logical_state"}}}}
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class CalvinBackend(Protocol):
    def reset(self, robot_obs: np.ndarray, scene_obs: np.ndarray) -> dict[str, Any]:
        """Place the robot (15-D robot_obs) and the scene (24-D scene_obs); return the observation."""
        ...

    def step(self, action: np.ndarray) -> dict[str, Any]:
        """One control step with a 7-D relative action (dpos 3, deuler 3, gripper); the observation."""
        ...

    def get_info(self) -> dict[str, Any]:
        """The scene information the subtask oracle compares (calvin_env's `get_info()` layout)."""
        ...

    def get_state(self) -> np.ndarray:
        """A flat state (robot_obs + scene_obs) that `render_state` can show again (videos afterwards)."""
        ...

    def render_state(self, state: np.ndarray) -> dict[str, np.ndarray]:
        """Camera name -> (H, W, 3) uint8 of a state from `get_state` (for videos)."""
        ...

    def close(self) -> None: ...


REL_POS_SCALE, REL_ORN_SCALE = 0.02, 0.05  # metres / radians per unit of a relative action


class TargetPose:
    """calvin_env's tcp target under relative actions (`use_target_pose`): it starts at the tcp pose of a
    reset and each action adds its scaled deltas, whether the arm got there or not. `apply` returns the
    absolute action CALVIN's datasets store next to the relative one (target xyz, euler xyz, gripper)."""

    def __init__(self, pose: np.ndarray):
        self.pose = np.asarray(pose, np.float64)[:6].copy()

    @classmethod
    def at(cls, robot_obs: np.ndarray) -> TargetPose:
        return cls(np.asarray(robot_obs, np.float64)[:6])

    def apply(self, rel_action: np.ndarray) -> np.ndarray:
        rel = np.asarray(rel_action, np.float64)
        self.pose[:3] += REL_POS_SCALE * rel[:3]
        self.pose[3:6] += REL_ORN_SCALE * rel[3:6]
        return np.concatenate([self.pose, [1.0 if rel[6] > 0 else -1.0]])
