"""Units between a policy's training data and an arm: converted where a factor does it, refused otherwise.

The store descriptor gives each action and state dimension a `unit` (rad, deg, m, normalized_0_100,
normalized_-100_100; "" for a store that did not say); an arm file gives each joint one. Degrees and radians
convert by a factor. LeRobot's normalised units (a position as a share of the calibrated range of motion)
have no fixed relation to radians without that calibration: a policy in them is refused for an arm in other
units, and runs on LeRobot's own driver for that robot (`--robot lerobot:TYPE`), which speaks them.
Data from LeRobot's servo arms (SO-100/101, Koch) that does not state its units is refused too: depending on
the LeRobot version it recorded degrees or -100..100, and either would be read as radians.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from vla.errors import VlaError
from vla.keys import STATE_KEY
from vla.real_robot.arm import ArmSpec

# Length of one unit in radians, for the angle units that convert by a factor.
_ANGLE = {"rad": 1.0, "deg": math.pi / 180.0}
# robot_type prefixes of LeRobot datasets recorded through LeRobot's normalising motor buses.
LEROBOT_SERVO_ARMS = ("so100", "so101", "so_100", "so_101", "koch", "bi_so")


class UnitError(VlaError):
    """A policy whose numbers would reach the arm in the wrong unit."""


def conversion(data_units: Sequence[str], arm: ArmSpec, robot_type: str = "", what: str = "action") -> np.ndarray:
    """Per joint, the factor that turns the data's values into the arm's (value_arm = value_data * factor)."""
    if len(data_units) != arm.dof:
        raise UnitError(f"the policy's {what} has {len(data_units)} dimensions, arm {arm.name} has {arm.dof} joints")
    lerobot_data = robot_type.lower().startswith(LEROBOT_SERVO_ARMS)
    factors, problems = [], []
    for unit, joint in zip(data_units, arm.joints, strict=True):
        if not unit:
            if lerobot_data and joint.unit == "rad":
                problems.append(f"{joint.name}: the data does not say its unit (LeRobot {robot_type} data is in "
                                "degrees or -100..100), the arm drives radians")  # fmt: skip
            factors.append(1.0)  # a store from before units were recorded: the arm's own units
        elif unit == joint.unit:
            factors.append(1.0)
        elif unit in _ANGLE and joint.unit in _ANGLE:
            factors.append(_ANGLE[unit] / _ANGLE[joint.unit])
        else:
            problems.append(f"{joint.name}: the data is in {unit}, the arm in {joint.unit}")
    if problems:
        raise UnitError(
            f"the policy's {what} cannot drive arm {arm.name}: " + "; ".join(problems) + ". Declare the data's units "
            "when converting (dimension `unit`), or deploy on LeRobot's driver (--robot lerobot:TYPE), which speaks "
            "LeRobot's normalised units"
        )
    return np.asarray(factors, np.float64)


def unit_factors(data_spec: Any, arm: ArmSpec) -> tuple[np.ndarray, np.ndarray | None]:
    """(action factors, state factors or None) for a policy trained on a store with spec `data_spec`."""
    robot_type = getattr(data_spec, "robot_type", "") or ""
    action = conversion([d.unit for d in data_spec.action], arm, robot_type, "action")
    state = None
    if data_spec.state and len(data_spec.state) == arm.dof:
        state = conversion([d.unit for d in data_spec.state], arm, robot_type, "state")
    return action, state


class UnitAdapter:
    """A deploy-loop planner in the data's units behind one in the arm's: state in, actions out, converted."""

    def __init__(self, planner: Any, action_factors: np.ndarray, state_factors: np.ndarray | None):
        self.planner, self.action, self.state = planner, action_factors, state_factors

    def __call__(self, obs: dict[str, Any]) -> np.ndarray:
        if self.state is not None and STATE_KEY in obs:
            obs = {**obs, STATE_KEY: (np.asarray(obs[STATE_KEY], np.float64) / self.state).astype(np.float32)}
        return np.asarray(self.planner(obs), np.float64) * self.action

    def reset(self) -> None:
        if hasattr(self.planner, "reset"):
            self.planner.reset()

    def __getattr__(self, name: str) -> Any:  # native_config, warmup, ... of the wrapped planner
        return getattr(self.planner, name)
