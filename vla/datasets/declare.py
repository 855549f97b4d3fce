"""What a user declares about a source that does not describe itself.

A Declaration comes from command-line flags and/or a small YAML file, e.g.::

    fps: 10
    embodiment: pusht
    action: pusht_xy            # a preset name, or a list of dimensions:
    # action:
    #   - {name: x, kind: eef_pos, mode: absolute, frame: world, unit: px}
    state: [{name: agent_x, kind: eef_pos}, {name: agent_y, kind: eef_pos}]
    cameras: {img: {source_orientation: upright}}
    keys: {img: observation.images.img, state: observation.state, action: action}

Anything a source states itself wins over inference from names; a declaration wins over both.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from vla.datasets.spec import DimSpec, dims
from vla.datasets.store import check_text
from vla.errors import DataError

_XYZ = ("x", "y", "z")
ACTION_PRESETS: dict[str, tuple[DimSpec, ...]] = {
    # LIBERO / robosuite OSC_POSE: scaled delta position and axis-angle, gripper -1 open / +1 close.
    "eef_delta_axis_angle_gripper": (
        *dims(_XYZ, "eef_pos", "delta", frame="base", unit="normalized"),
        *dims(("rx", "ry", "rz"), "eef_rot_axis_angle", "delta", frame="base", unit="normalized"),
        DimSpec("gripper", "gripper", "absolute", unit="-1 open, +1 close", low=-1.0, high=1.0),
    ),
    # CALVIN absolute actions: tcp position, euler angles, gripper.
    "eef_abs_euler_gripper": (
        *dims(_XYZ, "eef_pos", "absolute", frame="world", unit="m"),
        *dims(("roll", "pitch", "yaw"), "eef_rot_euler", "absolute", frame="world", unit="rad"),
        DimSpec("gripper", "gripper", "absolute", unit="-1 close, +1 open", low=-1.0, high=1.0),
    ),
    # CALVIN relative actions: scaled deltas in [-1, 1].
    "eef_rel_euler_gripper": (
        *dims(_XYZ, "eef_pos", "delta", frame="world", unit="normalized", low=-1.0, high=1.0),
        *dims(("roll", "pitch", "yaw"), "eef_rot_euler", "delta", frame="world", unit="normalized", low=-1.0, high=1.0),
        DimSpec("gripper", "gripper", "absolute", unit="-1 close, +1 open", low=-1.0, high=1.0),
    ),
    # Push-T style planar position targets.
    "pusht_xy": dims(("x", "y"), "eef_pos", "absolute", frame="world", unit="px"),
}


def joint_preset(n_joints: int, gripper: bool = True) -> tuple[DimSpec, ...]:
    out = dims([f"joint_{i}" for i in range(n_joints)], "joint_pos", "absolute", unit="rad")
    return (*out, DimSpec("gripper", "gripper", "absolute")) if gripper else out


def preset(name: str) -> tuple[DimSpec, ...]:
    m = re.fullmatch(r"joint(\d+)(_gripper)?", name)
    if m:
        return joint_preset(int(m.group(1)), bool(m.group(2)))
    if name not in ACTION_PRESETS:
        raise ValueError(
            f"unknown action-space preset {name!r}; known: {', '.join(ACTION_PRESETS)}, jointN, jointN_gripper"
        )
    return ACTION_PRESETS[name]


def infer_dim(name: str) -> DimSpec:
    """Best guess of a dimension's meaning from its feature name (e.g. lerobot's 'shoulder_pan.pos')."""
    n = name.lower()
    if "gripper" in n or "finger" in n:
        return DimSpec(name, "gripper", "absolute")
    if n.endswith((".vel", "_vel")) or "velocity" in n:
        return DimSpec(name, "joint_vel", "velocity")
    if n.endswith((".pos", "_pos")) or "joint" in n:
        return DimSpec(name, "joint_pos", "absolute")
    if n in _XYZ or n.startswith(("eef_pos", "ee_pos", "tcp_pos")):
        return DimSpec(name, "eef_pos", "absolute")
    if n in ("roll", "pitch", "yaw"):
        return DimSpec(name, "eef_rot_euler", "absolute")
    if n.startswith(("qx", "qy", "qz", "qw", "quat")):
        return DimSpec(name, "eef_rot_quat", "absolute")
    return DimSpec(name, "other", "absolute")


def infer_dims(names: list[str]) -> tuple[DimSpec, ...]:
    return tuple(infer_dim(n) for n in names)


def _parse_dims(value: Any, where: str) -> tuple[DimSpec, ...]:
    if isinstance(value, str):
        return preset(value)
    if isinstance(value, list):
        out = []
        for i, item in enumerate(value):
            if isinstance(item, str):
                out.append(DimSpec(item))
            elif isinstance(item, dict) and "name" in item:
                try:
                    out.append(DimSpec(**item))
                except TypeError as e:
                    raise DataError(where, f"{i}", f"bad dimension entry: {e}") from None
            else:
                raise DataError(where, f"{i}", "each dimension needs at least a 'name'")
        problems = [p for d in out for p in d.problems()]
        if problems:
            raise DataError(where, None, "; ".join(problems))
        return tuple(out)
    raise DataError(where, None, "expected a preset name or a list of dimensions")


def check_fps(value: Any, where: str | Path) -> float:
    """A control rate: a finite number above zero (NaN and inf would reach every timestamp)."""
    try:
        fps = float(value)
    except (TypeError, ValueError):
        fps = math.nan
    if isinstance(value, bool) or not math.isfinite(fps) or fps <= 0:
        raise DataError(where, "fps", f"must be a finite number of frames per second above 0, got {value!r}")
    return fps


@dataclass(frozen=True)
class Declaration:
    fps: float | None = None
    embodiment: str | None = None
    robot_type: str | None = None
    action: tuple[DimSpec, ...] | None = None
    state: tuple[DimSpec, ...] | None = None
    # camera name -> orientation of the SOURCE frames ("upright" or "rotated_180")
    camera_orientation: dict[str, str] = field(default_factory=dict)
    # source key -> store key (for sources whose names are not the store's vocabulary)
    keys: dict[str, str] = field(default_factory=dict)
    task: str | None = None  # one instruction for sources without language

    def __post_init__(self) -> None:
        # Every way a declaration is made (flags, YAML, the API) passes here.
        if self.fps is not None:
            check_fps(self.fps, "declaration")
        if self.task is not None:
            check_text("declaration", "task", self.task)

    @classmethod
    def from_yaml(cls, path: str | Path) -> Declaration:
        path = Path(path)
        try:
            d = yaml.safe_load(path.read_text()) or {}
        except (OSError, yaml.YAMLError) as e:
            raise DataError(path, None, f"cannot read declaration: {e}") from None
        if not isinstance(d, dict):
            raise DataError(path, None, "a declaration must be a mapping")
        known = {"fps", "embodiment", "robot_type", "action", "state", "cameras", "keys", "task"}
        unknown = set(d) - known
        if unknown:
            raise DataError(path, sorted(unknown)[0], f"unknown field; known fields: {', '.join(sorted(known))}")
        cams = d.get("cameras") or {}
        return cls(
            fps=check_fps(d["fps"], path) if d.get("fps") is not None else None,
            embodiment=d.get("embodiment"),
            robot_type=d.get("robot_type"),
            action=_parse_dims(d["action"], f"{path}: action") if d.get("action") is not None else None,
            state=_parse_dims(d["state"], f"{path}: state") if d.get("state") is not None else None,
            camera_orientation={k: (v or {}).get("source_orientation", "upright") for k, v in cams.items()},
            keys=dict(d.get("keys") or {}),
            task=d.get("task"),
        )

    def updated(self, **flags: Any) -> Declaration:
        """Flags from the command line override the YAML file (None means 'not given')."""
        return replace(self, **{k: v for k, v in flags.items() if v is not None})
