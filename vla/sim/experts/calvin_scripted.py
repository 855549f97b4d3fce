"""A scripted expert for the CALVIN subtasks a fixed path solves: the sliding door, the drawer, the LED
button and the lightbulb switch, in environment D (the evaluation's scene).

It reads only the observation (robot_obs, scene_obs): where each handle is follows from its joint
value in scene_obs (`handle`, measured in calvin_env's scene D; the table never moves), never from
the camera. It commands CALVIN's 7-D relative action (0.02 m / 0.05 rad per unit, gripper +1 open /
-1 close) and keeps the hand at its start orientation. Each subtask is a list of waypoints (`plan`):
the hand moves to each in turn, proportionally and at most `speed` units a step, and goes on when it is
within the waypoint's tolerance or the waypoint's step budget ran out (a push against a handle stops
short of its target on purpose). Positions are steered through calvin_env's accumulated target
(`TargetPose`), so a hand held back by contact does not make the commands grow.

`rng` adds per-episode variation (contact offsets, approach height, speed, action noise) so that
demonstrations differ; `rng=None` is the nominal script.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vla.sim.calvin.backend import REL_POS_SCALE, TargetPose

EXPERT = "calvin_scripted/v1"  # recorded with the demos
OPEN, CLOSE = 1.0, -1.0
# Scene D, measured in calvin_env (link bounding boxes at both joint limits):
SLIDER_KNOB = np.array([0.04, -0.025, 0.51])  # where a finger pushes the sliding door sideways, door right (0)
DRAWER_HANDLE = np.array([0.18, -0.27, 0.365])  # front of the drawer handle, drawer closed; opens along -y
BUTTON_TOP = np.array([-0.12, -0.12, 0.487])  # the LED button; pressing it 2 cm toggles the LED
SWITCH_FRONT = np.array([0.30, -0.01, 0.50])  # the lightbulb switch lever's lower front edge, switch down (0)
SWITCH_DIR = np.array([0.0, 0.5, 0.866])  # the switch slides up-and-back along this; 0.088 = on
SCRIPTED = (
    "move_slider_left",
    "move_slider_right",
    "open_drawer",
    "close_drawer",
    "turn_on_led",
    "turn_off_led",
    "turn_on_lightbulb",
    "turn_off_lightbulb",
)


@dataclass(frozen=True)
class Waypoint:
    pos: np.ndarray  # tcp target (m, world)
    gripper: float  # OPEN or CLOSE while moving there
    tol: float = 0.01  # reached within this distance (m)
    steps: int = 60  # at most this many steps, then the next waypoint


def handle(name: str, scene_obs: np.ndarray) -> np.ndarray:
    """Where the expert touches `name` ('slider', 'drawer', 'button', 'switch') in the scene `scene_obs`."""
    if name == "slider":
        return SLIDER_KNOB - np.array([scene_obs[0], 0.0, 0.0])  # the door slides towards -x
    if name == "drawer":
        return DRAWER_HANDLE - np.array([0.0, scene_obs[1], 0.0])
    if name == "button":
        return BUTTON_TOP.copy()
    if name == "switch":
        return SWITCH_FRONT + SWITCH_DIR * scene_obs[3]
    raise ValueError(f"no handle {name!r}")


def plan(subtask: str, scene_obs: np.ndarray, rng: np.random.Generator | None = None) -> list[Waypoint]:
    """The waypoints that solve `subtask` from the scene `scene_obs`."""

    def jitter(scale: float, n: int = 3) -> np.ndarray:
        return rng.uniform(-scale, scale, n) if rng is not None else np.zeros(n)

    up = 0.08 + (float(rng.uniform(-0.02, 0.02)) if rng is not None else 0.0)  # clearance above a handle
    if subtask in ("move_slider_left", "move_slider_right"):
        side = 1.0 if subtask == "move_slider_left" else -1.0  # push from the right to move it left
        knob = handle("slider", scene_obs) + jitter(0.005) * np.array([1, 1, 1])
        beside = knob + np.array([side * 0.06, 0.0, 0.0])
        end = knob + np.array([-side * 0.21, 0.0, 0.0])
        return [
            Waypoint(beside + np.array([0.0, -0.08, up]), CLOSE, 0.02),
            Waypoint(beside + np.array([0.0, 0.0, up]), CLOSE, 0.02),
            Waypoint(beside, CLOSE, 0.01),
            Waypoint(end, CLOSE, 0.01, steps=50),
            Waypoint(end + np.array([0.0, -0.06, up]), CLOSE, 0.02, steps=20),
        ]
    if subtask == "open_drawer":
        grip = handle("drawer", scene_obs) + np.array([0.0, 0.015, 0.0]) + jitter(0.004) * np.array([1, 0.5, 0.5])
        pulled = grip - np.array([0.0, 0.20, 0.0])
        return [
            Waypoint(grip + np.array([0.0, -0.02, up]), OPEN, 0.02),
            Waypoint(grip, OPEN, 0.008, steps=40),
            Waypoint(grip, CLOSE, 0.0, steps=8),  # close on the handle
            Waypoint(pulled, CLOSE, 0.01, steps=50),
            Waypoint(pulled, OPEN, 0.0, steps=6),
            Waypoint(pulled + np.array([0.0, -0.04, up]), OPEN, 0.02, steps=20),
        ]
    if subtask == "close_drawer":
        front = handle("drawer", scene_obs) + jitter(0.004) * np.array([1, 0, 0.5])
        start = front - np.array([0.0, 0.05, 0.0])
        end = handle("drawer", np.zeros(24)) - np.array([0.0, 0.03, 0.0])  # nearly shut
        return [
            Waypoint(start + np.array([0.0, 0.0, up]), CLOSE, 0.02),
            Waypoint(start, CLOSE, 0.01),
            Waypoint(end, CLOSE, 0.01, steps=50),
            Waypoint(end + np.array([0.0, -0.06, up]), CLOSE, 0.02, steps=20),
        ]
    if subtask in ("turn_on_led", "turn_off_led"):
        top = handle("button", scene_obs) + jitter(0.008) * np.array([1, 1, 0])
        return [
            Waypoint(top + np.array([0.0, 0.0, up]), CLOSE, 0.015),
            Waypoint(top - np.array([0.0, 0.0, 0.035]), CLOSE, 0.005, steps=25),
            Waypoint(top + np.array([0.0, 0.0, up]), CLOSE, 0.02, steps=25),
        ]
    if subtask in ("turn_on_lightbulb", "turn_off_lightbulb"):
        edge = handle("switch", scene_obs)
        if subtask == "turn_on_lightbulb":  # under the lever's front edge, from the front, then up the slot
            start = edge + np.array([0.0, 0.025, -0.03]) + jitter(0.005)
            approach, stroke = start + np.array([0.0, -0.08, up]), SWITCH_DIR * 0.12
        else:  # onto the lever's back from above, then down the slot
            start = edge + np.array([-0.01, 0.09, 0.08]) + jitter(0.005)
            approach, stroke = start + np.array([0.0, 0.0, 0.06]), -SWITCH_DIR * 0.14
        return [
            Waypoint(approach, CLOSE, 0.02),
            Waypoint(start, CLOSE, 0.01),
            Waypoint(start + stroke, CLOSE, 0.01, steps=60),
            Waypoint(start + stroke + np.array([0.0, -0.08, 0.02]), CLOSE, 0.02, steps=20),
        ]
    raise ValueError(f"no script for CALVIN subtask {subtask!r}; scripted: {', '.join(SCRIPTED)}")


class CalvinExpert:
    """`reset(robot_obs, scene_obs)` at the start state, then `act(robot_obs, scene_obs)` once per step."""

    def __init__(self, subtask: str, rng: np.random.Generator | None = None):
        if subtask not in SCRIPTED:
            raise ValueError(f"no script for CALVIN subtask {subtask!r}; scripted: {', '.join(SCRIPTED)}")
        self.subtask, self.rng = subtask, rng
        self.speed, self.noise = (1.0, 0.0) if rng is None else (float(rng.uniform(0.6, 1.0)), 0.05)

    @classmethod
    def for_subtask(cls, subtask: str, rng: np.random.Generator | None = None) -> CalvinExpert:
        return cls(subtask, rng)

    def reset(self, robot_obs: np.ndarray, scene_obs: np.ndarray) -> None:
        self.waypoints = plan(self.subtask, np.asarray(scene_obs, np.float64), self.rng)
        self.target = TargetPose.at(robot_obs)
        self.hold = np.asarray(robot_obs, np.float64)[3:6].copy()
        self.index, self.timer = 0, 0

    @property
    def done(self) -> bool:
        return self.index >= len(self.waypoints)

    def act(self, robot_obs: np.ndarray, scene_obs: np.ndarray) -> np.ndarray:
        tcp = np.asarray(robot_obs, np.float64)[:3]
        while not self.done:
            wp = self.waypoints[self.index]
            if self.timer >= wp.steps or (np.linalg.norm(wp.pos - tcp) <= wp.tol and self.timer > 0):
                self.index, self.timer = self.index + 1, 0
                continue
            break
        action = np.zeros(7)
        if self.done:  # hold still, gripper as last commanded
            action[6] = self.waypoints[-1].gripper
            self.target.apply(action)
            return action
        wp = self.waypoints[self.index]
        self.timer += 1
        # steer the accumulated target, not the tcp: contact holds the tcp back, the target would run away
        error = wp.pos - self.target.pose[:3]
        action[:3] = np.clip(error / REL_POS_SCALE, -self.speed, self.speed)
        if self.noise and self.rng is not None:
            action[:3] = np.clip(action[:3] + self.rng.normal(0.0, self.noise, 3), -1.0, 1.0)
        action[3:6] = np.clip((self.hold - self.target.pose[3:6]) / 0.05, -1.0, 1.0)
        action[6] = wp.gripper
        self.target.apply(action)
        return action
