"""Franka (FR3/Panda) through franky-control (libfranka). The same code drives franky-sim on 127.0.0.1.

Actions are joint position targets; each tick starts a new asynchronous joint motion that preempts the
previous one, so franky's trajectory generator keeps motion smooth and within the robot's own limits.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

import numpy as np

from vla.real_robot.arm import ArmSpec
from vla.real_robot.robot import CommError, Robot, RobotError, RobotState

log = logging.getLogger("vla.real_robot.franka")


class FrankaArm(Robot):
    def __init__(self, spec: ArmSpec, host: str | None = None, torque: bool = True):
        # `torque` is the drivers' shared signature (a servo leader arm is moved by hand); a Franka always holds.
        super().__init__(spec)
        self.host = host or spec.port
        self.robot: Any = None
        self.stopped = False

    def connect(self) -> None:
        import franky

        self.franky = franky
        realtime = franky.RealtimeConfig.Ignore if self.spec.extra.get("ignore_realtime", False) else None
        try:
            kwargs = {"realtime_config": realtime} if realtime is not None else {}
            self.robot = franky.Robot(self.host, **kwargs)
            self.robot.recover_from_errors()
            self.robot.relative_dynamics_factor = float(self.spec.extra.get("relative_dynamics_factor", 0.1))
        except Exception as e:  # franky raises its own exception types from C++
            raise RobotError(f"cannot connect to the Franka at {self.host}: {e}") from None
        self.stopped = False

    def read_state(self) -> RobotState:
        try:
            q = np.asarray(self.robot.current_joint_state.position, dtype=np.float64)
            eef = np.asarray(self.robot.current_cartesian_state.pose.end_effector_pose.translation, dtype=np.float64)
        except Exception as e:
            raise CommError(f"Franka state read failed: {e}") from None
        return RobotState(q, eef)

    def forward_kinematics(self, joints: np.ndarray) -> np.ndarray | None:
        state = self.robot.state
        pose = self.robot.model.pose(self.franky.Frame.EndEffector, np.asarray(joints, dtype=np.float64),
                                     state.F_T_EE, state.EE_T_K)  # fmt: skip
        return np.asarray(pose.translation, dtype=np.float64)

    def send_action(self, joints: np.ndarray) -> None:
        if self.stopped:
            raise RobotError("the arm is stopped; reconnect to move it again")
        f = self.franky
        motion = f.JointWaypointMotion([f.JointWaypoint(np.asarray(joints, dtype=np.float64).tolist())])
        try:
            self.robot.move(motion, asynchronous=True)
        except Exception as e:  # a reflex or control error: recover so the next tick can try again
            log.warning("Franka motion failed (%s); recovering", e)
            with contextlib.suppress(Exception):
                self.robot.recover_from_errors()
            raise CommError(f"Franka motion failed: {e}") from None

    def hold(self) -> None:
        self.send_action(self.read_state().joints)

    def stop(self) -> None:
        self.stopped = True
        if self.robot is None:
            return
        try:
            self.robot.stop()
        except Exception as e:
            log.error("Franka stop failed: %s", e)

    def disconnect(self) -> None:
        if self.robot is not None:
            self.stop()
            self.robot = None
