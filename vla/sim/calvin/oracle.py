"""Which CALVIN subtask a scene change achieved, decided from two `get_info()` dicts (before, now).

The rules are those of calvin_env's task definitions (`conf/tasks/new_playtable_tasks.yaml` over
`calvin_env/envs/tasks.py`), rewritten here so the oracle runs on any backend whose info dicts
have calvin_env's structure (see `backend.py`), the fake one included. Contacts are PyBullet
contact-point tuples: index 2 is the other body's uid, index 4 the other body's link index.

The evaluation checks only the subtask it asked for (`subtask_done`); side effects are ignored.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from vla.sim.base import SimError
from vla.sim.calvin.tasks import BLOCKS, SUBTASKS
from vla.sim.rotations import relative_rotation

Info = Mapping[str, Any]
SLIDER_JOINT, DRAWER_JOINT = "base__slide", "base__drawer"
TABLE = "table"  # the fixed body holding the slider plank, the drawer and the base
ROTATE_DEG, ROTATE_TILT_DEG, ROTATE_MAX_DEG, ROTATE_MAX_MOVE = 60.0, 30.0, 180.0, 0.1
PUSH_M = 0.1
SLIDER_M, DRAWER_M = 0.15, 0.12
LIFT_M = {"table": 0.05, "slider": 0.03, "drawer": 0.05}
SURFACE_LINK = {"table": "base_link", "slider": "plank_link", "drawer": "drawer_link"}
STACK_MAX_VEL = 1.0


def block_name(color: str) -> str:
    return f"block_{color}"


# --- reading info dicts ---------------------------------------------------------------------------


def _obj(info: Info, name: str) -> Mapping[str, Any]:
    return info["scene_info"]["movable_objects"][name]


def _robot_uid(info: Info) -> int:
    return int(info["robot_info"]["uid"])


def _bodies(contacts: Iterable[Sequence[Any]]) -> set[int]:
    return {int(c[2]) for c in contacts}


def _body_links(contacts: Iterable[Sequence[Any]]) -> set[tuple[int, int]]:
    return {(int(c[2]), int(c[4])) for c in contacts}


def _surface(info: Info, body: str, link: str) -> tuple[int, int]:
    fixed = info["scene_info"]["fixed_objects"][body]
    return int(fixed["uid"]), int(fixed["links"][link])


def _pos_change(start: Info, end: Info, name: str) -> np.ndarray:
    return np.asarray(_obj(end, name)["current_pos"], float) - np.asarray(_obj(start, name)["current_pos"], float)


# --- quaternions (x, y, z, w, PyBullet's order) -------------------------------------------------------


def relative_euler_xyz(start_orn: Sequence[float], end_orn: Sequence[float]) -> np.ndarray:
    """Degrees (x, y, z) of the rotation taking `start_orn` to `end_orn` (end * start^-1), as
    extrinsic x-y-z angles (R = Rz Ry Rx), the convention of the reference's scipy call."""
    return relative_rotation(end_orn, start_orn).as_euler("xyz", degrees=True)  # scipy normalises both


# --- the base checks ----------------------------------------------------------------------------------


def rotated(name: str, z_deg: float, start: Info, end: Info) -> bool:
    """Turned beyond `z_deg` about z (sign = direction), hardly tilted, hardly moved, and resting on
    something other than the robot at the end."""
    if np.linalg.norm(_pos_change(start, end, name)) > ROTATE_MAX_MOVE:
        return False
    if not _bodies(_obj(end, name)["contacts"]) - {_robot_uid(start)}:
        return False
    x, y, z = relative_euler_xyz(_obj(start, name)["current_orn"], _obj(end, name)["current_orn"])
    level = abs(x) < ROTATE_TILT_DEG and abs(y) < ROTATE_TILT_DEG
    turned = z_deg < z < ROTATE_MAX_DEG if z_deg > 0 else -ROTATE_MAX_DEG < z < z_deg
    return bool(level and turned)


def pushed(name: str, dx: float, start: Info, end: Info) -> bool:
    """Moved beyond `dx` along x while keeping (at least) the surfaces it touched at the start."""
    robot = _robot_uid(start)
    before = {c for c in _body_links(_obj(start, name)["contacts"]) if c[0] != robot}
    after = {c for c in _body_links(_obj(end, name)["contacts"]) if c[0] != robot}
    if not (before and after and before <= after):
        return False
    moved = float(_pos_change(start, end, name)[0])
    return moved > dx if dx > 0 else moved < dx


def lifted(name: str, where: str, start: Info, end: Info) -> bool:
    """Raised beyond the surface's threshold, held by the robot alone at the end, and resting on
    that surface (table base, slider plank or drawer) at the start."""
    rise = float(_pos_change(start, end, name)[2])
    end_bodies = _bodies(_obj(end, name)["contacts"])
    on_surface = _surface(start, TABLE, SURFACE_LINK[where]) in _body_links(_obj(start, name)["contacts"])
    return rise > LIFT_M[where] and end_bodies == {_robot_uid(start)} and on_surface


def placed(where: str, start: Info, end: Info) -> bool:
    """The one object the robot held at the start (touching nothing else) is released and rests on
    the slider plank or in the drawer at the end."""
    robot = _robot_uid(start)
    held = _bodies(start["robot_info"]["contacts"])
    if len(held) != 1:
        return False
    (uid,) = held
    if uid in _bodies(end["robot_info"]["contacts"]):
        return False
    names = [n for n, o in start["scene_info"]["movable_objects"].items() if int(o["uid"]) == uid]
    if len(names) != 1:
        return False
    if _bodies(_obj(start, names[0])["contacts"]) != {robot}:
        return False
    return _surface(end, TABLE, SURFACE_LINK[where]) in _body_links(_obj(end, names[0])["contacts"])


def pushed_into_drawer(start: Info, end: Info) -> bool:
    """Some block went from touching only the table base to touching the drawer.

    (The reference also tries to exclude robot contact, but compares a uid with (uid, link) pairs,
    so that test never fires; leaving it out keeps the reference's behaviour.)"""
    base = _surface(start, TABLE, "base_link")
    drawer = _surface(end, TABLE, "drawer_link")
    for color in BLOCKS:
        before = _body_links(_obj(start, block_name(color))["contacts"])
        after = _body_links(_obj(end, block_name(color))["contacts"])
        if before == {base} and drawer in after:
            return True
    return False


def door_moved(joint: str, delta: float, start: Info, end: Info) -> bool:
    change = float(end["scene_info"]["doors"][joint]["current_state"]) - float(
        start["scene_info"]["doors"][joint]["current_state"]
    )
    return change > delta if delta > 0 else change < delta


def light_toggled(light: str, before: int, after: int, start: Info, end: Info) -> bool:
    lights = "lights"
    return (
        int(start["scene_info"][lights][light]["logical_state"]) == before
        and int(end["scene_info"][lights][light]["logical_state"]) == after
    )


def _slow(obj: Mapping[str, Any]) -> bool:
    return bool(
        np.all(np.abs(obj["current_lin_vel"]) < STACK_MAX_VEL)
        and np.all(np.abs(obj["current_ang_vel"]) < STACK_MAX_VEL)
    )


def stacked(start: Info, end: Info) -> bool:
    """A block that touched no block at the start rests only on blocks at the end, and is still."""
    objs = start["scene_info"]["movable_objects"]
    uids = {int(o["uid"]) for o in objs.values()}
    for name in objs:
        before, after = _bodies(_obj(start, name)["contacts"]), _bodies(_obj(end, name)["contacts"])
        if not before & uids and after & uids and not after - uids and _slow(_obj(end, name)):
            return True
    return False


def unstacked(start: Info, end: Info) -> bool:
    """A block that rested only on blocks (and was still) at the start touches no block at the end."""
    objs = start["scene_info"]["movable_objects"]
    uids = {int(o["uid"]) for o in objs.values()}
    for name in objs:
        before, after = _bodies(_obj(start, name)["contacts"]), _bodies(_obj(end, name)["contacts"])
        if before & uids and not before - uids and not after & uids and _slow(_obj(start, name)):
            return True
    return False


# --- the 34 subtasks ----------------------------------------------------------------------------------


def _checks() -> dict[str, Callable[[Info, Info], bool]]:
    def bind(f: Callable[..., bool], *args: Any) -> Callable[[Info, Info], bool]:
        return lambda start, end: f(*args, start, end)

    out: dict[str, Callable[[Info, Info], bool]] = {}
    for color in BLOCKS:
        name = block_name(color)
        for side, sign in (("right", -1.0), ("left", 1.0)):  # right = clockwise seen from above
            out[f"rotate_{color}_block_{side}"] = bind(rotated, name, sign * ROTATE_DEG)
        for side, sign in (("right", 1.0), ("left", -1.0)):  # right = +x facing the table
            out[f"push_{color}_block_{side}"] = bind(pushed, name, sign * PUSH_M)
        for where in ("table", "slider", "drawer"):
            out[f"lift_{color}_block_{where}"] = bind(lifted, name, where)
    out.update(
        move_slider_left=bind(door_moved, SLIDER_JOINT, SLIDER_M),
        move_slider_right=bind(door_moved, SLIDER_JOINT, -SLIDER_M),
        open_drawer=bind(door_moved, DRAWER_JOINT, DRAWER_M),
        close_drawer=bind(door_moved, DRAWER_JOINT, -DRAWER_M),
        place_in_slider=bind(placed, "slider"),
        place_in_drawer=bind(placed, "drawer"),
        stack_block=stacked,
        unstack_block=unstacked,
        turn_on_lightbulb=bind(light_toggled, "lightbulb", 0, 1),
        turn_off_lightbulb=bind(light_toggled, "lightbulb", 1, 0),
        turn_on_led=bind(light_toggled, "led", 0, 1),
        turn_off_led=bind(light_toggled, "led", 1, 0),
        push_into_drawer=pushed_into_drawer,
    )
    return {name: out[name] for name in SUBTASKS}


CHECKS = _checks()


def subtask_done(subtask: str, start: Info, end: Info) -> bool:
    """Whether the change from `start` to `end` achieves `subtask`."""
    if subtask not in CHECKS:
        raise SimError(f"unknown CALVIN subtask {subtask!r}; known: {', '.join(CHECKS)}")
    try:
        return bool(CHECKS[subtask](start, end))
    except (KeyError, TypeError, IndexError) as e:
        raise SimError(f"CALVIN info dict lacks what the {subtask} check reads ({type(e).__name__}: {e})") from None


def achieved(start: Info, end: Info, subtasks: Iterable[str] = SUBTASKS) -> set[str]:
    """Every subtask (of `subtasks`) the change achieves."""
    return {t for t in subtasks if subtask_done(t, start, end)}
