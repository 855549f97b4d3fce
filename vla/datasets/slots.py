"""The unified multi-embodiment slot layout (HiMoE's 24 slots).

Every robot's action (and state) vector is placed into NUM_SLOTS slots: slots 0-7 form the
end-effector block (position 0-2, rotation 3-6, gripper 7), slots 8-23 the joint block (joints in
order, then joint-space grippers). A boolean mask says which slots a robot uses; padded slots are
excluded from losses and zeroed at the output. The assignment is derived from the store's
per-dimension descriptors, so converters never write it by hand; a spec may override it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from vla.datasets.spec import DimSpec

NUM_SLOTS = 24
EEF_POS_SLOTS = (0, 1, 2)
EEF_ROT_SLOTS = (3, 4, 5, 6)
EEF_GRIPPER_SLOT = 7
JOINT_SLOTS = tuple(range(8, NUM_SLOTS))


def assign_slots(dims: Sequence[DimSpec]) -> tuple[int, ...]:
    """Slot index for each native dimension, from what the dimensions mean.

    A vector with any joint dimension is a joint-space vector: its grippers go into the joint block
    after the joints. Otherwise grippers go to the end-effector block's gripper slot.
    """
    joint_space = any(d.kind in ("joint_pos", "joint_vel") for d in dims)
    pos, rot, joint = iter(EEF_POS_SLOTS), iter(EEF_ROT_SLOTS), iter(JOINT_SLOTS)
    eef_gripper_used = False
    out: list[int] = []
    for d in dims:
        try:
            if d.kind == "eef_pos":
                out.append(next(pos))
            elif d.kind.startswith("eef_rot"):
                out.append(next(rot))
            elif d.kind == "gripper" and not joint_space and not eef_gripper_used:
                out.append(EEF_GRIPPER_SLOT)
                eef_gripper_used = True
            else:  # joints, joint-space grippers, anything else: next free joint slot
                out.append(next(joint))
        except StopIteration:
            raise ValueError(
                f"cannot place dimension {d.name!r} ({d.kind}) into the {NUM_SLOTS}-slot layout: "
                "its block is full; declare explicit slots in the spec"
            ) from None
    return tuple(out)


def slot_mask(slots: Sequence[int]) -> np.ndarray:
    mask = np.zeros(NUM_SLOTS, dtype=bool)
    mask[list(slots)] = True
    return mask


def to_slots(x: np.ndarray, slots: Sequence[int]) -> np.ndarray:
    """Native (..., D) -> slot layout (..., NUM_SLOTS), zeros in unused slots."""
    out = np.zeros((*x.shape[:-1], NUM_SLOTS), dtype=x.dtype)
    out[..., list(slots)] = x
    return out


def from_slots(x: np.ndarray, slots: Sequence[int]) -> np.ndarray:
    """Slot layout (..., NUM_SLOTS) -> the robot's native (..., D) layout."""
    return x[..., list(slots)]


def check_slots(slots: Sequence[int], dim: int) -> list[str]:
    problems = []
    if len(slots) != dim:
        problems.append(f"{len(slots)} slots for {dim} dimensions")
    if len(set(slots)) != len(slots):
        problems.append("a slot is used twice")
    if any(not 0 <= s < NUM_SLOTS for s in slots):
        problems.append(f"slot index outside 0..{NUM_SLOTS - 1}")
    return problems
