"""The one small robot interface every driver implements."""

from __future__ import annotations

import abc
from dataclasses import dataclass

import numpy as np

from vla.errors import VlaError
from vla.real_robot.arm import ArmSpec


class RobotError(VlaError):
    """A robot that cannot be reached or refuses a command."""


class CommError(RobotError):
    """One failed exchange on the bus or the network (timeout, corrupt packet): the loop may retry next tick."""


class ServoFault(RobotError):
    """A servo reported a hardware fault (overload, overheat, voltage): the loop stops the arm."""


@dataclass(frozen=True)
class RobotState:
    joints: np.ndarray  # (dof,) in the arm file's units (radians, gripper unit)
    eef: np.ndarray | None = None  # (3,) end-effector position in metres, where the arm has kinematics


class Robot(abc.ABC):
    """connect -> read_state / send_action (native joint targets) -> hold / stop -> disconnect."""

    def __init__(self, spec: ArmSpec):
        self.spec = spec

    @property
    def dof(self) -> int:
        return self.spec.dof

    @property
    def limits(self) -> tuple[np.ndarray, np.ndarray]:
        return self.spec.low, self.spec.high

    def forward_kinematics(self, joints: np.ndarray) -> np.ndarray | None:
        """End-effector position for `joints`, or None where the arm has no kinematic model."""
        return None

    @abc.abstractmethod
    def connect(self) -> None: ...

    @abc.abstractmethod
    def read_state(self) -> RobotState:
        """Raises CommError on a failed read, ServoFault on a hardware fault."""

    @abc.abstractmethod
    def send_action(self, joints: np.ndarray) -> None:
        """Command joint targets (already checked by the safety layer). Raises CommError on failure."""

    def hold(self) -> None:
        """Keep the current position (servo arms: command the last read position)."""
        state = self.read_state()
        self.send_action(state.joints)

    @abc.abstractmethod
    def stop(self) -> None:
        """Stop moving now and stay stopped (servo arms: torque off; Franka: stop the motion)."""

    @abc.abstractmethod
    def disconnect(self) -> None: ...

    def __enter__(self) -> Robot:
        self.connect()
        return self

    def __exit__(self, *exc: object) -> None:
        self.disconnect()
