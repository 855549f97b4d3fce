"""CALVIN's observation and action conventions, shared by the dataset converter, `CalvinEnv` and the
CALVIN evaluation protocol.

One place decides which CALVIN array becomes which store key, with which dtype, names and camera
names, so a policy trained on a converted CALVIN store runs in the simulator unchanged:

- `action`: `rel_actions` (7: scaled tcp delta xyz, delta euler, gripper -1 close / +1 open; preset
  `eef_rel_euler_gripper`); the absolute `actions` array is the store's `action.absolute`.
- `observation.state`: `robot_obs` (15, named `ROBOT_OBS_DIMS`), float32.
- `observation.scene_obs`: `scene_obs` (24, named `SCENE_OBS_NAMES`), float32.
- cameras: `rgb_static` -> `observation.images.static`, `rgb_gripper` -> `observation.images.gripper`,
  uint8 HWC, upright as CALVIN renders them (200x200 and 84x84 by default).
- fps 30 (one frame per control step), embodiment `calvin_panda`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from vla.datasets.declare import preset
from vla.datasets.spec import CameraSpec, DimSpec, KeySpec, SourceInfo, StoreSpec, dims
from vla.keys import ACTION_KEY, STATE_KEY
from vla.keys import camera_key as store_camera_key

FPS = 30.0  # calvin_env's control_freq: one recorded frame per control step
EMBODIMENT = "calvin_panda"
ROBOT_TYPE = "franka_panda"
REL_PRESET, ABS_PRESET = "eef_rel_euler_gripper", "eef_abs_euler_gripper"
# CALVIN image key (npz member, or `rgb_obs` entry of an env observation) -> store camera name.
CAMERAS = {"rgb_static": "static", "rgb_gripper": "gripper"}
IMAGE_SIZES = {"rgb_static": 200, "rgb_gripper": 84}  # calvin_env's default renders (square)
SCENE_KEY = "observation.scene_obs"
# CALVIN low-dimensional array -> per-frame width.
LOWDIM_WIDTH = {"actions": 7, "rel_actions": 7, "robot_obs": 15, "scene_obs": 24}
STATE_DTYPE = np.float32

_XYZ = ("x", "y", "z")
# robot_obs as calvin_env's Robot.get_observation builds it (euler_obs), named after its labels.
ROBOT_OBS_DIMS: tuple[DimSpec, ...] = (
    *dims([f"tcp_pos_{a}" for a in _XYZ], "eef_pos", "absolute", frame="world", unit="m"),
    *dims([f"tcp_orn_{a}" for a in _XYZ], "eef_rot_euler", "absolute", frame="world", unit="rad"),
    DimSpec("gripper_opening_width", "gripper", "absolute", unit="m", low=0.0, high=0.08),
    *dims([f"robot_joint_{i}" for i in range(7)], "joint_pos", "absolute", unit="rad"),
    DimSpec("gripper_action", "gripper", "absolute", unit="-1 close, +1 open", low=-1.0, high=1.0),
)
SCENE_OBS_NAMES: tuple[str, ...] = (
    "sliding_door",
    "drawer",
    "button",
    "switch",
    "lightbulb",
    "green_light",
    *(f"{block}_block_{q}" for block in ("red", "blue", "pink") for q in (*_XYZ, "euler_x", "euler_y", "euler_z")),
)


def camera_key(calvin_key: str) -> str:
    """`rgb_static` -> `observation.images.static`."""
    return store_camera_key(CAMERAS[calvin_key])


def lowdim_targets(action_source: str = "rel_actions") -> dict[str, str]:
    """CALVIN array -> store key; `action_source` is the array the store's `action` holds."""
    other = "actions" if action_source == "rel_actions" else "rel_actions"
    return {
        action_source: ACTION_KEY,
        other: "action.absolute" if other == "actions" else "action.relative",
        "robot_obs": STATE_KEY,
        "scene_obs": SCENE_KEY,
    }


def scene_obs_key() -> KeySpec:
    return KeySpec("float32", (24,), SCENE_OBS_NAMES)


def calvin_spec(
    image_shapes: Mapping[str, tuple[int, int, int]],
    orientations: Mapping[str, str] | None = None,
    *,
    action: tuple[DimSpec, ...] | None = None,
    state: tuple[DimSpec, ...] = ROBOT_OBS_DIMS,
    extra_keys: Mapping[str, KeySpec] | None = None,
    fps: float = FPS,
    embodiment: str = EMBODIMENT,
    robot_type: str = ROBOT_TYPE,
    source: SourceInfo | None = None,
) -> StoreSpec:
    """The spec of CALVIN data: `image_shapes` maps a CALVIN image key (`rgb_static`) to (H, W, C);
    `orientations` maps a camera name to how the source delivered it (stored frames are upright)."""
    orientations = orientations or {}
    cameras = tuple(
        CameraSpec(CAMERAS[key], h, w, c, "upright", orientations.get(CAMERAS[key], "upright"))
        for key, (h, w, c) in image_shapes.items()
    )
    return StoreSpec(
        fps=fps,
        embodiment=embodiment,
        robot_type=robot_type,
        action=action or preset(REL_PRESET),
        state=state,
        cameras=cameras,
        extra_keys={**(extra_keys or {}), SCENE_KEY: scene_obs_key()},
        source=source or SourceInfo("calvin"),
    )


def store_observation(obs: Mapping[str, Any], cameras: tuple[str, ...] | None = None) -> dict[str, np.ndarray]:
    """A calvin_env observation (`rgb_obs` dict, `robot_obs`, `scene_obs`) in the store's vocabulary.

    `cameras`: the CALVIN image keys to keep (default: every one of `CAMERAS` present)."""
    rgb = obs.get("rgb_obs", {})
    keys = tuple(k for k in CAMERAS if k in rgb) if cameras is None else cameras
    out = {
        STATE_KEY: np.asarray(obs["robot_obs"], STATE_DTYPE),
        SCENE_KEY: np.asarray(obs["scene_obs"], STATE_DTYPE),
    }
    for key in keys:
        out[camera_key(key)] = np.ascontiguousarray(rgb[key], dtype=np.uint8)
    return out


def env_action(action: np.ndarray) -> np.ndarray:
    """A store `action` (rel_actions layout) -> what the simulator steps with: float64, the gripper
    binarised to +1 (open) when positive, else -1, as CALVIN's evaluated models do."""
    a = np.asarray(action, np.float64).reshape(-1)
    if a.shape != (7,):
        raise ValueError(f"a CALVIN action has 7 values (dpos 3, deuler 3, gripper), got shape {a.shape}")
    a = a.copy()
    a[6] = 1.0 if a[6] > 0 else -1.0
    return a
