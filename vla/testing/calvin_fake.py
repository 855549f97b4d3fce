"""`FakeCalvinBackend`: a tiny kinematic CALVIN-like scene for tests, with calvin_env's info layout.

No physics: the tool centre point (tcp) moves by the scaled relative action (0.02 m, 0.05 rad per
unit), and the scene reacts by simple rules, enough for a scripted planner to complete subtasks
and for the real oracle to judge them from the info dicts:

- closing the gripper within `GRASP_R` of a block grasps it (it then follows the tcp and touches
  only the robot); opening releases it onto what lies under it: the slider plank, the open
  drawer, another block (stacked) or the table;
- closing the gripper at the sliding door's or the drawer's handle drags that joint with the tcp;
- entering the button's zone toggles the LED; dragging the switch up or down past its midpoint
  turns the lightbulb on or off.

Contacts are PyBullet-style tuples (index 2: other body uid, 4: other link). `ScriptedPlanner`
solves the door, drawer, light, lift-from-table and place subtasks from observations alone
(it leaves the others to fail), so harness tests get chains of varied length.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from vla.datasets.conventions.calvin import SCENE_KEY
from vla.keys import STATE_KEY, TASK_KEY
from vla.policies.runtime import Plan
from vla.sim.calvin.instructions import instructions
from vla.sim.calvin.tasks import BLOCKS

ROBOT_UID, TABLE_UID = 1, 2
BLOCK_UID = {"red": 3, "blue": 4, "pink": 5}
LINKS = {"base_link": -1, "plank_link": 2, "drawer_link": 3}
POS_STEP, ROT_STEP = 0.02, 0.05
GRASP_R, HANDLE_R, BUTTON_R, SWITCH_R = 0.03, 0.04, 0.03, 0.04
TABLE_Z, PLANK_Z, DRAWER_Z, BLOCK_H = 0.46, 0.461, 0.36, 0.05
SLIDER_MAX, DRAWER_MAX, SWITCH_MAX = 0.56, 0.24, 0.088
BUTTON = np.array([-0.12, -0.12, 0.50])
OPEN_WIDTH, HOLD_WIDTH = 0.08, 0.04


def slider_handle(joint: float) -> np.ndarray:
    return np.array([0.1 - joint, 0.12, 0.52])  # "left" (joint up) moves it towards -x


def drawer_handle(joint: float) -> np.ndarray:
    return np.array([0.18, -0.30 - joint, 0.40])  # opening pulls it towards the robot (-y)


def switch_handle(value: float) -> np.ndarray:
    return np.array([0.30, 0.10, 0.53 + value])


def in_slider(xy: np.ndarray) -> bool:
    return bool(-0.32 <= xy[0] <= 0.13 and 0.05 <= xy[1] <= 0.14)


def in_drawer(xy: np.ndarray, joint: float) -> bool:
    return bool(joint > 0.1 and 0.10 <= xy[0] <= 0.26 and -0.30 - joint <= xy[1] <= -0.18 - joint + 0.1)


def quat_from_euler(roll: float, pitch: float, yaw: float) -> tuple[float, float, float, float]:
    """(x, y, z, w) of R = Rz(yaw) Ry(pitch) Rx(roll), PyBullet's `getQuaternionFromEuler`."""
    cr, sr = np.cos(roll / 2), np.sin(roll / 2)
    cp, sp = np.cos(pitch / 2), np.sin(pitch / 2)
    cy, sy = np.cos(yaw / 2), np.sin(yaw / 2)
    return (
        float(sr * cp * cy - cr * sp * sy),
        float(cr * sp * cy + sr * cp * sy),
        float(cr * cp * sy - sr * sp * cy),
        float(cr * cp * cy + sr * sp * sy),
    )


def contact(a: int, b: int, link_b: int = -1) -> tuple:
    """A PyBullet contact point between bodies a and b (flag, A, B, linkA, linkB, posA, posB, normal, dist, force)."""
    return (0, a, b, -1, link_b, (0.0, 0.0, 0.0), (0.0, 0.0, 0.0), (0.0, 0.0, 1.0), 0.0, 1.0)


class FakeCalvinBackend:
    """A `CalvinBackend` without a simulator (see the module docstring)."""

    def __init__(self, static_size: int = 32, gripper_size: int = 16):
        self.static_size, self.gripper_size = static_size, gripper_size
        self.robot = np.zeros(15)
        self.scene = np.zeros(24)
        self.support: dict[str, tuple[int, int]] = {}  # block -> (body uid, link) it rests on
        self.held: str | None = None
        self.offset = np.zeros(3)
        self.door: str | None = None  # a handle being dragged
        self.steps = 0

    # --- CalvinBackend ------------------------------------------------------------------------------
    def reset(self, robot_obs: np.ndarray, scene_obs: np.ndarray) -> dict[str, Any]:
        self.robot = np.asarray(robot_obs, np.float64).copy()
        self.scene = np.asarray(scene_obs, np.float64).copy()
        self.held, self.door = None, None
        self.robot[6], self.robot[14] = OPEN_WIDTH, 1.0
        self.support = {b: self._surface_under(b, place=False) for b in BLOCKS}
        return self._obs()

    def step(self, action: np.ndarray) -> dict[str, Any]:
        a = np.asarray(action, np.float64)
        if a.shape != (7,):
            raise ValueError(f"action must have shape (7,), got {a.shape}")
        self.steps += 1
        close = a[6] <= 0
        before = self.tcp.copy()
        self.robot[0:3] += POS_STEP * np.clip(a[:3], -1, 1)
        self.robot[5] += ROT_STEP * float(np.clip(a[5], -1, 1))
        self.robot[14] = -1.0 if close else 1.0
        if not close:
            self._release()
        elif self.held is None and self.door is None:
            self._grab(before)
        self._drag()
        self._button(before)
        if self.held is not None:
            k = 6 + 6 * BLOCKS.index(self.held)
            self.scene[k : k + 3] = self.tcp + self.offset
            self.scene[k + 5] += ROT_STEP * float(np.clip(a[5], -1, 1))
        self.robot[6] = HOLD_WIDTH if self.held else (0.0 if close else OPEN_WIDTH)
        return self._obs()

    def get_info(self) -> dict[str, Any]:
        robot_contacts = [contact(ROBOT_UID, BLOCK_UID[self.held])] if self.held else []
        movable = {}
        for b in BLOCKS:
            k = 6 + 6 * BLOCKS.index(b)
            if b == self.held:
                contacts = [contact(BLOCK_UID[b], ROBOT_UID)]
            else:
                body, link = self.support[b]
                contacts = [contact(BLOCK_UID[b], body, link)]
                contacts += [
                    contact(BLOCK_UID[b], BLOCK_UID[o]) for o in BLOCKS if self.support.get(o) == (BLOCK_UID[b], -1)
                ]
            movable[f"block_{b}"] = {
                "current_pos": tuple(float(v) for v in self.scene[k : k + 3]),
                "current_orn": quat_from_euler(*self.scene[k + 3 : k + 6]),
                "current_lin_vel": (0.0, 0.0, 0.0),
                "current_ang_vel": (0.0, 0.0, 0.0),
                "contacts": contacts,
                "uid": BLOCK_UID[b],
            }
        table_contacts = [
            contact(TABLE_UID, BLOCK_UID[b], -1) for b in BLOCKS if self.support.get(b, (0, 0))[0] == TABLE_UID
        ]
        return {
            "robot_info": {"uid": ROBOT_UID, "contacts": robot_contacts},
            "scene_info": {
                "fixed_objects": {"table": {"uid": TABLE_UID, "links": dict(LINKS), "contacts": table_contacts}},
                "movable_objects": movable,
                "doors": {
                    "base__slide": {"current_state": float(self.scene[0])},
                    "base__drawer": {"current_state": float(self.scene[1])},
                },
                "buttons": {"base__button": {"joint_state": float(self.scene[2])}},
                "switches": {"base__switch": {"joint_state": float(self.scene[3])}},
                "lights": {
                    "lightbulb": {"logical_state": int(self.scene[4])},
                    "led": {"logical_state": int(self.scene[5])},
                },
            },
        }

    def get_state(self) -> np.ndarray:
        return np.concatenate([self.robot, self.scene])

    def render_state(self, state: np.ndarray) -> dict[str, np.ndarray]:
        """A top view: table grey, lights tint the background, blocks as coloured squares, tcp white."""
        state = np.asarray(state, np.float64)
        robot, scene = state[:15], state[15:]
        n = self.static_size
        img = np.full((n, n, 3), 90, np.uint8)
        img[..., 1] += np.uint8(60 * scene[5])  # green LED
        img[..., 0] += np.uint8(60 * scene[4])  # yellow bulb: red + green
        img[..., 1] += np.uint8(40 * scene[4])
        colours = {"red": (220, 30, 30), "blue": (30, 30, 220), "pink": (230, 120, 200)}
        for b in BLOCKS:
            k = 6 + 6 * BLOCKS.index(b)
            r, c = self._pixel(scene[k : k + 2], n)
            img[max(r - 1, 0) : r + 2, max(c - 1, 0) : c + 2] = colours[b]
        r, c = self._pixel(robot[:2], n)
        img[r, c] = 255
        grip = np.full((self.gripper_size, self.gripper_size, 3), np.uint8(255 * robot[6] / OPEN_WIDTH), np.uint8)
        return {"rgb_static": img, "rgb_gripper": grip}

    def close(self) -> None:
        pass

    # --- the scene's rules --------------------------------------------------------------------------
    @property
    def tcp(self) -> np.ndarray:
        return self.robot[0:3]

    def _block_pos(self, b: str) -> np.ndarray:
        k = 6 + 6 * BLOCKS.index(b)
        return self.scene[k : k + 3]

    def _surface_under(self, b: str, place: bool = True) -> tuple[int, int]:
        """What a block rests on; `place`: also set its height there (a released block drops onto it)."""
        pos = self._block_pos(b) if place else self._block_pos(b).copy()
        for o in BLOCKS:
            near = o not in (b, self.held) and np.linalg.norm(self._block_pos(o)[:2] - pos[:2]) < 0.04
            if near and self.support.get(o, (0, 0))[0] == TABLE_UID and pos[2] > self._block_pos(o)[2] + 0.02:
                pos[2] = self._block_pos(o)[2] + BLOCK_H
                return BLOCK_UID[o], -1
        if in_slider(pos[:2]):
            pos[2] = PLANK_Z
            return TABLE_UID, LINKS["plank_link"]
        if in_drawer(pos[:2], self.scene[1]):
            pos[2] = DRAWER_Z
            return TABLE_UID, LINKS["drawer_link"]
        pos[2] = TABLE_Z
        return TABLE_UID, LINKS["base_link"]

    def _grab(self, tcp: np.ndarray) -> None:
        if np.linalg.norm(tcp - slider_handle(self.scene[0])) < HANDLE_R:
            self.door = "slider"
        elif np.linalg.norm(tcp - drawer_handle(self.scene[1])) < HANDLE_R:
            self.door = "drawer"
        elif np.linalg.norm(tcp - switch_handle(self.scene[3])) < SWITCH_R:
            self.door = "switch"
        else:
            near = [b for b in BLOCKS if np.linalg.norm(self._block_pos(b) - tcp) < GRASP_R]
            if near:
                self.held = near[0]
                self.offset = self._block_pos(near[0]) - tcp
                self.support.pop(near[0], None)
                for o, s in list(self.support.items()):  # whatever rested on it falls to the table
                    if s == (BLOCK_UID[near[0]], -1):
                        self._block_pos(o)[2] = TABLE_Z
                        self.support[o] = (TABLE_UID, LINKS["base_link"])

    def _release(self) -> None:
        if self.held is not None:
            b, self.held = self.held, None
            self.support[b] = self._surface_under(b)
        self.door = None

    def _drag(self) -> None:
        if self.door == "slider":
            self.scene[0] = float(np.clip(0.1 - self.tcp[0], 0.0, SLIDER_MAX))
        elif self.door == "drawer":
            self.scene[1] = float(np.clip(-0.30 - self.tcp[1], 0.0, DRAWER_MAX))
        elif self.door == "switch":
            self.scene[3] = float(np.clip(self.tcp[2] - 0.53, 0.0, SWITCH_MAX))
            self.scene[4] = 1.0 if self.scene[3] > SWITCH_MAX / 2 else 0.0

    def _button(self, before: np.ndarray) -> None:
        was_in = np.linalg.norm(before - BUTTON) < BUTTON_R
        if not was_in and np.linalg.norm(self.tcp - BUTTON) < BUTTON_R:
            self.scene[5] = 1.0 - self.scene[5]

    def _obs(self) -> dict[str, Any]:
        images = self.render_state(self.get_state())
        return {"rgb_obs": images, "robot_obs": self.robot.copy(), "scene_obs": self.scene.copy()}

    @staticmethod
    def _pixel(xy: np.ndarray, n: int) -> tuple[int, int]:
        col = int(np.clip((xy[0] + 0.4) / 0.8 * (n - 1), 0, n - 1))
        row = int(np.clip((0.2 - xy[1]) / 0.7 * (n - 1), 0, n - 1))
        return row, col


@dataclass(frozen=True)
class FakeBackendFactory:
    """Picklable factory of `FakeCalvinBackend`s (worker processes build their own)."""

    static_size: int = 32
    gripper_size: int = 16

    def __call__(self) -> FakeCalvinBackend:
        return FakeCalvinBackend(self.static_size, self.gripper_size)

    @property
    def image_sizes(self) -> dict[str, int]:
        """Camera -> the square size it renders (what the CALVIN protocol asks a given backend)."""
        return {"static": self.static_size, "gripper": self.gripper_size}

    def describe(self) -> dict[str, Any]:
        return {"backend": "fake", "static_size": self.static_size, "gripper_size": self.gripper_size}


# --- a scripted planner that solves some subtasks in the fake scene --------------------------------------


def _toward(tcp: np.ndarray, target: np.ndarray) -> np.ndarray:
    """A relative position action moving the tcp to `target` (full speed, no overshoot)."""
    return np.clip((target - tcp) / POS_STEP, -1.0, 1.0)


def scripted_action(subtask: str, robot_obs: np.ndarray, scene_obs: np.ndarray) -> np.ndarray:
    """One action for `subtask` in the fake scene, from the observation alone (zeros: not scripted)."""
    tcp, holding = robot_obs[:3], bool(np.isclose(robot_obs[6], HOLD_WIDTH))
    act = np.zeros(7)
    act[6] = 1.0

    def drag(handle: np.ndarray, goal: np.ndarray) -> np.ndarray:
        near = np.linalg.norm(tcp - handle) < 0.01 or (robot_obs[14] < 0 and np.linalg.norm(tcp - handle) < HANDLE_R)
        act[:3] = _toward(tcp, goal if near else handle)
        act[6] = -1.0 if near else 1.0
        return act

    if subtask in ("move_slider_left", "move_slider_right"):
        j = scene_obs[0]
        goal = 0.45 if subtask == "move_slider_left" else 0.0
        return drag(slider_handle(j), slider_handle(goal))
    if subtask in ("open_drawer", "close_drawer"):
        goal = DRAWER_MAX if subtask == "open_drawer" else 0.0
        return drag(drawer_handle(scene_obs[1]), drawer_handle(goal))
    if subtask in ("turn_on_lightbulb", "turn_off_lightbulb"):
        goal = SWITCH_MAX if subtask == "turn_on_lightbulb" else 0.0
        return drag(switch_handle(scene_obs[3]), switch_handle(goal))
    if subtask in ("turn_on_led", "turn_off_led"):
        inside = np.linalg.norm(tcp - BUTTON) < BUTTON_R
        act[:3] = _toward(tcp, BUTTON + np.array([0.0, 0.0, 0.08]) if inside else BUTTON)
        return act
    if subtask.startswith("lift_") and subtask.endswith("_table"):
        block = subtask.split("_")[1]
        k = 6 + 6 * BLOCKS.index(block)
        pos = scene_obs[k : k + 3]
        if holding:
            act[:3], act[6] = _toward(tcp, pos + np.array([0.0, 0.0, 0.1])), -1.0
        else:
            act[:3] = _toward(tcp, pos)
            act[6] = -1.0 if np.linalg.norm(tcp - pos) < 0.005 else 1.0
        return act
    if subtask in ("place_in_slider", "place_in_drawer") and holding:
        spot = (
            np.array([0.070341633 if scene_obs[0] < 0.14 else -0.240851662, 0.0924, 0.50])
            if subtask == "place_in_slider"
            else np.array([0.18, -0.24 - scene_obs[1], 0.45])
        )
        there = np.linalg.norm(tcp - spot) < 0.005
        act[:3], act[6] = _toward(tcp, spot), (1.0 if there else -1.0)
        return act
    return np.zeros(7)


class ScriptedPlanner:
    """A `Planner` driving `scripted_action` (one action per plan): reads the state and scene keys."""

    n_obs = 1
    obs_keys: tuple[str, ...] = (STATE_KEY, SCENE_KEY)

    def __init__(self) -> None:
        self.by_language = {text: name for name, text in instructions().items()}

    def plan(self, batch: Mapping[str, Any]) -> Plan:
        rows: Sequence[np.ndarray] = [
            scripted_action(self.by_language.get(text, ""), batch[STATE_KEY][i, -1], batch[SCENE_KEY][i, -1])
            for i, text in enumerate(batch[TASK_KEY])
        ]
        return Plan(np.stack(rows)[:, None, :], np.ones(len(rows), np.int64))

    def describe(self) -> dict[str, Any]:
        return {"type": "scripted-fake"}
