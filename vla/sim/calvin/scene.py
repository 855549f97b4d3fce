"""From a symbolic CALVIN start state to the simulator's reset arrays (robot_obs 15, scene_obs 24).

The robot always starts in the same pose. The scene puts the sliding door, drawer, switch and lights
where the symbolic state says and places the blocks on their slider spot or on one of two table
slots; which slot and each block's yaw come from the legacy generator seeded with an FNV-1 hash of
the text of the state's values, exactly as the reference evaluation does, so the same chain starts
from bit-identical block poses.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from vla.sim.calvin.legacy_rng import LegacyRandom, fnv1_32
from vla.sim.calvin.tasks import BLOCKS, STATE_KEYS

# tcp pos 3, tcp euler 3, gripper width, 7 arm joints, gripper action (the reset reads the joints and width).
ROBOT_OBS = (
    0.02586889,
    -0.2313129,
    0.5712808,
    3.09045411,
    -0.02908596,
    1.50013585,
    0.07999963,
    -1.21779124,
    1.03987629,
    2.11978254,
    -2.34205014,
    -0.87015899,
    1.64119093,
    0.55344928,
    1.0,
)
SLIDER_OPEN_LEFT = 0.28  # scene_obs[0] when the sliding door is on the left
DRAWER_OPEN = 0.22  # scene_obs[1]
SWITCH_ON = 0.088  # scene_obs[3] when the lightbulb is on
SLIDER_SPOT = {
    "slider_left": (-0.240851662, 0.0924044687, 0.460990009),
    "slider_right": (0.070341633, 0.0924044687, 0.460990009),
}
TABLE_SLOTS = ((0.0500000896, -0.120000177, 0.459990009), (0.229995412, -0.11999514, 0.45999001))
YAW_RANGE = (math.pi / 2 - math.pi / 8, math.pi / 2 + math.pi / 8)
BLOCK_OFFSET = {"red": 6, "blue": 12, "pink": 18}  # xyz, roll, pitch, yaw in scene_obs


def layout_seed(state: Mapping[str, Any]) -> int:
    """The reference's per-state seed: FNV-1 of the text `dict_values([...])` of the values in key order."""
    values = [state[k] for k in STATE_KEYS]
    return fnv1_32(f"dict_values({values!r})")


def robot_obs() -> np.ndarray:
    return np.array(ROBOT_OBS, dtype=np.float64)


def scene_obs(state: Mapping[str, Any]) -> np.ndarray:
    """The 24-D scene state of a symbolic start state (see the module docstring)."""
    rng = LegacyRandom(layout_seed(state))
    slots = list(TABLE_SLOTS)
    rng.shuffle(slots)
    obs = np.zeros(24)
    obs[0] = SLIDER_OPEN_LEFT if state["slider"] == "left" else 0.0
    obs[1] = DRAWER_OPEN if state["drawer"] == "open" else 0.0
    obs[3] = SWITCH_ON if state["lightbulb"] == 1 else 0.0
    obs[4] = state["lightbulb"]
    obs[5] = state["led"]
    for block in BLOCKS:  # red, blue, pink: the draw order matters
        where = state[f"{block}_block"]
        if where in SLIDER_SPOT:
            pos = SLIDER_SPOT[where]
        elif block == "red":
            pos = slots[0]
        elif block == "blue":  # the second slot when red took the first
            pos = slots[1] if state["red_block"] == "table" else slots[0]
        else:
            pos = slots[1]
        k = BLOCK_OFFSET[block]
        obs[k : k + 3] = pos
        obs[k + 5] = rng.uniform(*YAW_RANGE)  # drawn for every block, on the table or not
    return obs


def reset_arrays(state: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    return robot_obs(), scene_obs(state)
