"""LIBERO's observation and action conventions, shared by the HDF5 converter, `LiberoEnv` and the
LIBERO evaluation protocol, so a policy trained on a converted LIBERO store runs in the simulator unchanged:

- `action`: 7-D OSC_POSE deltas in [-1, 1] (xyz, axis-angle; 1 = 0.05 m / 0.5 rad per step, world frame)
  + gripper (-1 open, +1 close); preset `eef_delta_axis_angle_gripper`.
- `observation.state` float32 (8): eef pos (3) + axis-angle of the eef quaternion (3) + gripper qpos (2),
  the state openpi's LIBERO policies use.
- `observation.joint_state` float64 (7), `observation.gripper_state` float64 (2).
- cameras `agentview` and `eye_in_hand`, uint8 HWC, stored upright (LIBERO renders upside down).
- 20 fps (LIBERO's control_freq), embodiment `libero_panda`.
"""

from __future__ import annotations

from typing import Any

from vla.datasets.declare import preset
from vla.datasets.spec import CameraSpec, DimSpec, KeySpec, SourceInfo, StoreSpec, dims

FPS = 20.0  # LIBERO's control_freq
EMBODIMENT = "libero_panda"
ROBOT_TYPE = "panda"
ACTION_PRESET = "eef_delta_axis_angle_gripper"
ACTION_DIM = 7
# Store camera name -> LIBERO camera name (the converter names cameras after the HDF5's obs keys).
CAMERAS = {"agentview": "agentview", "eye_in_hand": "robot0_eye_in_hand"}
RAW_ORIENTATION = "rotated_180"  # LIBERO renders in robosuite's "opengl" convention: upside down
JOINT_STATE_KEY = "observation.joint_state"
GRIPPER_STATE_KEY = "observation.gripper_state"
TASK_FILE_SUFFIX = "_demo.hdf5"  # `<task_name>_demo.hdf5`, as LIBERO names its task files
STATE_DIMS: tuple[DimSpec, ...] = (
    *dims(("eef_pos_x", "eef_pos_y", "eef_pos_z"), "eef_pos", "absolute", frame="world", unit="m"),
    *dims(("eef_rot_x", "eef_rot_y", "eef_rot_z"), "eef_rot_axis_angle", "absolute", frame="world", unit="rad"),
    *dims(("gripper_finger_left", "gripper_finger_right"), "gripper", "absolute", unit="m"),
)


def libero_spec(
    cameras: tuple[str, ...], image_hw: tuple[int, int], orientation: str, details: dict[str, Any] | None = None
) -> StoreSpec:
    """What a `LiberoEnv` observes, described as converted LIBERO stores describe themselves."""
    h, w = image_hw
    return StoreSpec(
        fps=FPS,
        embodiment=EMBODIMENT,
        robot_type=ROBOT_TYPE,
        action=preset(ACTION_PRESET),
        state=STATE_DIMS,
        cameras=tuple(CameraSpec(c, h, w, 3, orientation, RAW_ORIENTATION) for c in cameras),
        extra_keys={
            JOINT_STATE_KEY: KeySpec("float64", (7,), tuple(f"joint_{i}" for i in range(7))),
            GRIPPER_STATE_KEY: KeySpec("float64", (2,), ("finger_left", "finger_right")),
        },
        source=SourceInfo(format="sim", path="libero", details=details or {}),
    )
