"""Leader-arm teleoperation for the servo arms: a hand-moved leader (torque off) drives the follower through
the same safety layer, and the demonstrations are recorded like deployed episodes."""

from __future__ import annotations

import numpy as np

from vla.real_robot.robot import Robot
from vla.real_robot.workers import Observation


class LeaderPlanner:
    """A planner whose 'plan' is the leader arm's current joints (a one-step chunk), mapped joint by joint.

    Both arms are calibrated to the same zero, so the leader's radians are the follower's targets."""

    def __init__(self, leader: Robot):
        self.leader = leader

    def __call__(self, obs: Observation) -> np.ndarray:
        return self.leader.read_state().joints[None]
