"""A scripted pick-and-place expert for LIBERO tasks whose goal is one `In`/`On` predicate.

It reads the simulator's object poses and geometry (privileged state, never the camera) and
commands LIBERO's action space: 7-D OSC_POSE deltas (1.0 = 0.05 m / 0.5 rad, world frame) and the
gripper (-1 open, +1 close). Phases: move above the object, descend, close, lift until the
object clears the destination, carry it above the destination, lower, open, retreat. The grasp is
retried when the object stayed behind or slipped out on the way. Solid objects are grasped at their
centre, or off-centre along x when a tall neighbour would hit the wide hand; hollow ones (bowls,
found by casting a ray down their middle) by their wall.

Position control is proportional (action = gain * error in metres, clipped to [-1, 1]); the hand
is held at its starting orientation (pointing down). `rng` adds small per-episode variation
(heights, offsets, gains, action noise) so demonstrations differ.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vla.sim.libero import LiberoEnv
from vla.sim.rotations import relative_rotation

PREDICATES = ("in", "on")
OPEN, CLOSE = -1.0, 1.0
# Panda hand around the grip point: its geoms' box spans +-3.5 cm in x and +-10.5 cm in y (fingers
# close along y) from 2.3 cm above the fingertips' centre; its solid part is narrower in x, and
# grazing a neighbour with the box's edge proved harmless, so 2.5 cm is what must stay clear.
HAND_HALF_X, HAND_HALF_Y, HAND_BOTTOM = 0.025, 0.105, 0.023
FINGER_MARGIN = 0.012  # keep the fingers this far inside the object's ends
CLEAR_GAP = 0.0  # room wanted between the hand and a neighbour tall enough to touch it
DROP_TOLERANCE = 0.04  # the object moved this far relative to the hand: it slipped out


def rotation_error(target_xyzw: np.ndarray, current_xyzw: np.ndarray) -> np.ndarray:
    """World-frame axis-angle rotating `current` onto `target` (the OSC controller's delta convention)."""
    return relative_rotation(target_xyzw, current_xyzw).as_rotvec()  # scipy takes the shortest way round


@dataclass
class Style:
    """Per-episode variation; `Style()` is the nominal expert."""

    hover: float = 0.10  # clearance above the object's top when moving over it (m)
    grasp_depth: float = 0.015  # how far below the object's top the fingertips close (m)
    grasp_offset: tuple[float, float] = (0.0, 0.0)  # xy offset of the grasp from the object's centre (m)
    place_offset: tuple[float, float] = (0.0, 0.0)  # xy offset of the drop point from the target's centre (m)
    clearance: float = 0.04  # how far the object's bottom clears the destination's top when carried (m)
    gain: float = 20.0  # position action per metre of error
    close_steps: int = 10
    open_steps: int = 8
    noise: float = 0.0  # std of Gaussian noise added to the position action

    @classmethod
    def sample(cls, rng: np.random.Generator) -> Style:
        return cls(
            hover=rng.uniform(0.08, 0.12),
            grasp_depth=rng.uniform(0.01, 0.02),
            grasp_offset=tuple(rng.uniform(-0.004, 0.004, 2)),
            place_offset=tuple(rng.uniform(-0.015, 0.015, 2)),
            clearance=rng.uniform(0.035, 0.05),
            gain=rng.uniform(16.0, 24.0),
            close_steps=int(rng.integers(9, 13)),
            open_steps=int(rng.integers(6, 11)),
            noise=0.05,
        )


def pick_place_goal(env: LiberoEnv) -> tuple[str, str, str] | None:
    """(predicate, object, destination) when the task's goal is a single In/On of a movable object."""
    goal = env.goal()
    if len(goal) != 1 or len(goal[0]) != 3 or goal[0][0] not in PREDICATES:
        return None
    pred, obj, dest = goal[0]
    return (pred, obj, dest) if obj in env.robosuite_env.objects_dict else None


class PickPlaceExpert:
    """Call `reset()` after each `env.reset(...)`, then `act()` once per step."""

    def __init__(self, env: LiberoEnv, rng: np.random.Generator | None = None, max_retries: int = 2):
        goal = pick_place_goal(env)
        if goal is None:
            raise ValueError(f"not a single In/On pick-and-place goal: {env.goal()}")
        self.env = env
        self.predicate, self.obj, self.dest = goal
        self.rng = rng
        self.max_retries = max_retries
        self.style = Style()

    # --- the simulator's privileged state ------------------------------------------------------
    def _eef(self) -> tuple[np.ndarray, np.ndarray]:
        raw = self.env.raw_obs
        return np.asarray(raw["robot0_eef_pos"], np.float64), np.asarray(raw["robot0_eef_quat"], np.float64)

    def _dest_xy_top(self) -> tuple[np.ndarray, float]:
        """Where to drop (xy) and the highest point the carried object must clear there."""
        env = self.env
        if self.dest in env.robosuite_env.obj_body_id:  # an object or fixture
            xy = env.object_pose(self.dest)[0][:2]
            return xy, float(env.object_bounds(self.dest)[1][2])
        xy = env.site_position(self.dest)[:2]
        parent = getattr(env.robosuite_env.object_sites_dict.get(self.dest), "parent_name", None)
        if parent in env.robosuite_env.obj_body_id:  # a region of an object, e.g. a basket's inside
            return xy, float(env.object_bounds(parent)[1][2])
        return xy, float(env.site_position(self.dest)[2])

    # --- control -------------------------------------------------------------------------------
    def reset(self) -> None:
        self.style = Style.sample(self.rng) if self.rng is not None else Style()
        self.phase = "approach"
        self.timer = 0
        self.retries = 0
        self.hold_quat = self._eef()[1].copy()  # keep the settled, pointing-down orientation
        self._plan_grasp()

    def _plan_grasp(self) -> None:
        lo, hi = self.env.object_bounds(self.obj)
        centre = (lo[:2] + hi[:2]) / 2
        grasp_z = max(hi[2] - self.style.grasp_depth, lo[2] + 0.01)
        # Hollow (a bowl): pinch its wall, one finger inside, one outside. Solid: slide along the
        # object (x) to keep the wide hand clear of tall neighbours.
        rim = self._rim(centre, hi[2])
        centre = rim if rim is not None else np.array([self._clear_x(centre, lo, hi, grasp_z), centre[1]])
        centre = centre + np.asarray(self.style.grasp_offset)
        self.grasp = np.array([*centre, grasp_z])
        self.hover_z = max(hi[2] + self.style.hover, self._eef()[0][2] - 0.03)
        self.obj_z0 = float(self.env.object_pose(self.obj)[0][2])

    def _clear_x(self, centre: np.ndarray, lo: np.ndarray, hi: np.ndarray, grasp_z: float) -> float:
        """Where along the object (x) to grasp so the hand stays clear of objects tall enough to touch
        it: the centre when nothing is near, else as little off-centre as needed."""
        reach = max(0.0, (hi[0] - lo[0]) / 2 - FINGER_MARGIN)
        hand_y = (centre[1] - HAND_HALF_Y, centre[1] + HAND_HALF_Y)
        obstacles = []
        for name in self.env.object_names():
            if name == self.obj:
                continue
            olo, ohi = self.env.object_bounds(name)
            if ohi[2] > grasp_z + HAND_BOTTOM and olo[1] < hand_y[1] and ohi[1] > hand_y[0]:
                obstacles.append((olo[0], ohi[0]))

        def gap(x: float) -> float:
            gaps = [max(a - (x + HAND_HALF_X), (x - HAND_HALF_X) - b) for a, b in obstacles]
            return min(gaps, default=np.inf)

        # The candidate nearest the centre that leaves CLEAR_GAP; else the one that leaves the most.
        candidates = sorted(centre[0] + np.linspace(-reach, reach, 9), key=lambda x: abs(x - centre[0]))
        roomy = [x for x in candidates if gap(x) >= CLEAR_GAP]
        return float(roomy[0] if roomy else max(candidates, key=gap))

    def _rim(self, centre: np.ndarray, top: float) -> np.ndarray | None:
        """For an object hollow at its centre, the middle of its wall on the side facing the robot's
        -y or +y (the fingers close along y, so they pinch the wall across its thickness)."""
        start = top + 0.005
        floor = self.env.surface_height(*centre, start)
        if floor is not None and top - floor < 0.03:
            return None  # solid enough at the centre: grasp it there
        eef_y = self._eef()[0][1]
        side = -1.0 if eef_y < centre[1] else 1.0
        wall = []  # distances from the centre where the surface is within 2 cm of the top
        for d in np.arange(0.0, 0.15, 0.004):
            h = self.env.surface_height(centre[0], centre[1] + side * d, start)
            if h is not None and top - h < 0.02:
                wall.append(d)
        if not wall:
            return None
        return np.array([centre[0], centre[1] + side * (min(wall) + max(wall)) / 2])

    def _move(self, target: np.ndarray, gripper: float) -> np.ndarray:
        pos, quat = self._eef()
        action = np.zeros(7)
        action[:3] = np.clip(self.style.gain * (target - pos), -1.0, 1.0)
        if self.style.noise and self.rng is not None:
            action[:3] = np.clip(action[:3] + self.rng.normal(0.0, self.style.noise, 3), -1.0, 1.0)
        action[3:6] = np.clip(2.0 * rotation_error(self.hold_quat, quat), -1.0, 1.0)
        action[6] = gripper
        return action

    def _next(self, phase: str) -> None:
        self.phase, self.timer = phase, 0

    def act(self) -> np.ndarray:
        """The next action; `phase` says where in the script it is."""
        self.timer += 1
        pos, _ = self._eef()
        obj_pos = self.env.object_pose(self.obj)[0]
        s = self.style
        if self.phase == "approach":  # over the object, high enough to pass over everything near it
            target = np.array([*self.grasp[:2], self.hover_z])
            if (np.linalg.norm((target - pos)[:2]) < 0.01 and abs(target[2] - pos[2]) < 0.03) or self.timer > 80:
                self._next("descend")
            return self._move(target, OPEN)
        if self.phase == "descend":
            if np.linalg.norm(self.grasp - pos) < 0.006 or self.timer > 40:
                self._next("close")
            return self._move(self.grasp, OPEN)
        if self.phase == "close":
            if self.timer >= s.close_steps:
                self._next("lift")
                self.lift_offset = pos[2] - self.env.object_bounds(self.obj)[0][2]  # eef above object bottom
            return self._move(self.grasp, CLOSE)
        dest_xy, dest_top = self._dest_xy_top()
        carry_z = dest_top + s.clearance + self.lift_offset
        if self.phase == "lift":
            target = np.array([*pos[:2], carry_z])
            lifted = pos[2] - self.grasp[2]
            if lifted > 0.05 and obj_pos[2] - self.obj_z0 < 0.5 * lifted:  # the object stayed behind
                return self._retry()
            if abs(carry_z - pos[2]) < 0.02 or self.timer > 60:
                self._next("carry")
                self.hold = pos - obj_pos  # where the object sits in the hand
            return self._move(target, CLOSE)
        if self.phase in ("carry", "lower") and np.linalg.norm(pos - obj_pos - self.hold) > DROP_TOLERANCE:
            return self._retry()  # it slipped out on the way
        # Drop the OBJECT over the destination: correct for where it sits in the hand.
        in_hand = pos[:2] - obj_pos[:2]
        drop_xy = dest_xy + np.asarray(s.place_offset) + in_hand
        if self.phase == "carry":
            target = np.array([*drop_xy, carry_z])
            if np.linalg.norm((target - pos)[:2]) < 0.01 or self.timer > 80:
                self._next("lower")
            return self._move(target, CLOSE)
        if self.phase == "lower":  # bring the object's bottom just above the destination's top
            # Object bottom 2 cm below the destination's top, the hand never lower than 1.5 cm below it.
            target = np.array([*drop_xy, max(dest_top - 0.02 + self.lift_offset, dest_top - 0.015)])
            if abs(target[2] - pos[2]) < 0.01 or self.timer > 40:
                self._next("release")
            return self._move(target, CLOSE)
        if self.phase == "release":
            if self.timer >= s.open_steps:
                self._next("retreat")
            return self._move(pos, OPEN)
        return self._move(np.array([*pos[:2], pos[2] + 0.05]), OPEN)  # retreat upwards and wait

    def _retry(self) -> np.ndarray:
        self.retries += 1
        if self.retries > self.max_retries:
            self._next("give_up")
            pos, _ = self._eef()
            return self._move(pos, OPEN)
        self._next("approach")
        self._plan_grasp()
        pos, _ = self._eef()
        return self._move(np.array([*pos[:2], self.hover_z]), OPEN)
