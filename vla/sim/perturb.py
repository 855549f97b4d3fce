"""Perturbed layouts: a LIBERO initial state with the task's movable objects displaced in the plane.

In the spirit of LIBERO-PRO and LIBERO-Plus (which show that policies trained on LIBERO's fixed
layouts often fail when objects move), `displace_objects` moves EVERY movable object of a fixed
initial state by exactly `distance` metres in a random horizontal direction (height and orientation
kept). A layout is accepted only if, for every object:

- its new footprint (axis-aligned box in the plane, 1 cm clearance) overlaps no other object's;
- it stays inside the extent of the original layout (the box around all objects' footprints)
  widened by `distance`, so nothing wanders far from the robot's workspace;
- after an episode's reset and settle steps in the simulator it still sits where it was put (within
  1 cm, and within 1 cm of its height: nothing fell off the surface, toppled or was pushed), touching
  no other object.

Directions are drawn from a generator seeded by (seed, task id, initial state id), so the same
arguments give the same layout on any machine and in any run; a rejected layout draws again (up to
`MAX_TRIES` layouts, then an error names the state).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from vla.sim.base import SimError

if TYPE_CHECKING:
    from vla.sim.libero import LiberoEnv

MAX_TRIES = 200
CLEARANCE = 0.01  # m between footprints
SETTLE_TOLERANCE = 0.01  # m an object may drift while settling
_SPEC = re.compile(r"^\s*objects\s*=\s*([0-9]*\.?[0-9]+)\s*$")


@dataclass(frozen=True)
class Perturbation:
    """`objects`: displacement of every movable object in metres; `seed`: which random directions."""

    objects: float
    seed: int = 0

    def to_json(self) -> dict[str, Any]:
        return {"objects": self.objects, "seed": self.seed, "method": "fixed-distance random direction"}


def parse_perturbation(text: str, seed: int = 0) -> Perturbation:
    """'objects=0.05' -> Perturbation(0.05, seed)."""
    match = _SPEC.match(text)
    if match is None:
        raise SimError(f"--perturb {text!r}: expected objects=D with D in metres, e.g. objects=0.05")
    distance = float(match.group(1))
    if not 0.0 <= distance <= 0.5:
        raise SimError(f"--perturb objects={distance}: use a distance between 0 and 0.5 m")
    return Perturbation(distance, seed)


def layout_rng(seed: int, task_id: int, init_state_id: int) -> np.random.Generator:
    return np.random.default_rng([seed, task_id, init_state_id, 0x9E37])


def displace_objects(
    env: LiberoEnv, state: np.ndarray, distance: float, rng: np.random.Generator
) -> tuple[np.ndarray, dict[str, list[float]]]:
    """The flattened state with every movable object moved `distance` m; and each object's (dx, dy)."""
    names = list(env.robosuite_env.objects_dict)
    env.reset(state=state, images=False)  # where the objects rest unperturbed, after the settle steps
    start = {n: env.object_pose(n)[0] for n in names}
    boxes = {n: env.object_bounds(n) for n in names}
    lo = np.min([b[0][:2] for b in boxes.values()], axis=0) - distance
    hi = np.max([b[1][:2] for b in boxes.values()], axis=0) + distance
    for _ in range(MAX_TRIES):
        shifts = _draw_layout(names, boxes, lo, hi, distance, rng)
        if shifts is None:
            continue
        env.load_state(state)
        for n, d in shifts.items():
            _shift_free_joint(env, n, d)
        env.robosuite_env.sim.forward()
        candidate = env.sim_state()
        if _settles(env, candidate, names, start, shifts):
            return candidate, {n: [round(float(v), 6) for v in d] for n, d in shifts.items()}
    raise SimError(
        f"no layout with every object of {env.task.name} moved {distance} m fits (tried {MAX_TRIES}); "
        "use a smaller distance"
    )


def _draw_layout(
    names: list[str],
    boxes: dict[str, tuple[np.ndarray, np.ndarray]],
    lo: np.ndarray,
    hi: np.ndarray,
    distance: float,
    rng: np.random.Generator,
    tries: int = 100,
) -> dict[str, np.ndarray] | None:
    """Objects placed one after another, each in the first random direction whose footprint stays in
    [lo, hi] and clear of the footprints placed so far; None when one finds no such direction."""
    shifts: dict[str, np.ndarray] = {}
    placed: list[tuple[np.ndarray, np.ndarray]] = []
    for n in names:
        for _ in range(tries):
            angle = rng.uniform(0.0, 2.0 * np.pi)
            d = distance * np.array([np.cos(angle), np.sin(angle)])
            a_lo, a_hi = boxes[n][0][:2] + d, boxes[n][1][:2] + d
            if (a_lo < lo).any() or (a_hi > hi).any():
                continue
            if any((a_lo < b_hi + CLEARANCE).all() and (b_lo < a_hi + CLEARANCE).all() for b_lo, b_hi in placed):
                continue
            shifts[n] = d
            placed.append((a_lo, a_hi))
            break
        else:
            return None
    return shifts


def _shift_free_joint(env: LiberoEnv, name: str, shift: np.ndarray) -> None:
    sim = env.robosuite_env.sim
    joint = env.robosuite_env.objects_dict[name].joints[-1]
    qpos = np.array(sim.data.get_joint_qpos(joint))
    qpos[:2] += shift
    sim.data.set_joint_qpos(joint, qpos)
    sim.data.set_joint_qvel(joint, np.zeros(6))


def _settles(
    env: LiberoEnv, state: np.ndarray, names: list[str], start: dict[str, np.ndarray], shifts: dict[str, np.ndarray]
) -> bool:
    """Whether the layout stays put through an episode's reset and settle steps (an object without support
    falls, one pressed into another is pushed), with no two objects touching."""
    env.reset(state=state, images=False)
    for n in names:
        pos = env.object_pose(n)[0]
        target = start[n] + np.r_[shifts[n], 0.0]
        if np.linalg.norm(pos[:2] - target[:2]) > SETTLE_TOLERANCE or abs(pos[2] - target[2]) > SETTLE_TOLERANCE:
            return False
    return not objects_touching(env, names)


def objects_touching(env: LiberoEnv, names: list[str]) -> list[tuple[str, str]]:
    """Pairs of the named objects in contact now."""
    model, data = env.robosuite_env.sim.model, env.robosuite_env.sim.data
    owner = np.full(model.nbody, -1)
    for i, n in enumerate(names):
        owner[env.robosuite_env.obj_body_id[n]] = i
    for b in range(model.nbody):  # parents come first: children inherit their object
        parent = model.body_parentid[b]
        if owner[b] < 0 and b != parent and owner[parent] >= 0:
            owner[b] = owner[parent]
    pairs = set()
    for c in data.contact[: data.ncon]:
        a, b = owner[model.geom_bodyid[c.geom1]], owner[model.geom_bodyid[c.geom2]]
        if a >= 0 and b >= 0 and a != b:
            pairs.add((names[min(a, b)], names[max(a, b)]))
    return sorted(pairs)
