"""The store's self-describing metadata: what every dimension, camera and episode means.

These dataclasses are the schema of docs/store.md. They serialise to plain JSON (the store's
group attributes) and back, so a store carries everything a reader needs without our code.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

from vla.keys import ACTION_KEY, STATE_KEY, camera_key

SCHEMA_VERSION = 1
STORE_FORMAT = "vla-store"

# What an action/state dimension means. `kind` says which physical quantity, `mode` whether it is
# an absolute target or a change relative to the current value.
DimKind = Literal[
    "eef_pos",  # end-effector position (x, y, z)
    "eef_rot_axis_angle",  # end-effector orientation as an axis-angle vector component
    "eef_rot_euler",  # roll / pitch / yaw
    "eef_rot_quat",  # quaternion component (x, y, z, w order, as named)
    "eef_rot_6d",  # 6-D rotation representation component
    "joint_pos",  # joint angle / position
    "joint_vel",  # joint velocity
    "gripper",  # gripper command or opening
    "base_vel",  # mobile base velocity
    "other",
]
DimMode = Literal["absolute", "delta", "velocity"]
DIM_KINDS: tuple[str, ...] = DimKind.__args__  # type: ignore[attr-defined]
DIM_MODES: tuple[str, ...] = DimMode.__args__  # type: ignore[attr-defined]

ImageOrientation = Literal["upright", "rotated_180"]
ORIENTATIONS: tuple[str, ...] = ImageOrientation.__args__  # type: ignore[attr-defined]


@dataclass(frozen=True)
class DimSpec:
    """One dimension of an action or state vector."""

    name: str
    kind: str = "other"
    mode: str = "absolute"
    frame: str = ""  # reference frame: "base", "world", "tool", "" when meaningless (joints)
    unit: str = ""  # "m", "rad", "normalized", ...
    low: float | None = None  # declared physical range (not the data's min/max: those are in stats)
    high: float | None = None

    def problems(self) -> list[str]:
        out = []
        if self.kind not in DIM_KINDS:
            out.append(f"dimension {self.name!r}: unknown kind {self.kind!r} (known: {', '.join(DIM_KINDS)})")
        if self.mode not in DIM_MODES:
            out.append(f"dimension {self.name!r}: unknown mode {self.mode!r} (known: {', '.join(DIM_MODES)})")
        return out


@dataclass(frozen=True)
class CameraSpec:
    """A camera stream stored under `observation.images.<name>` as uint8 HWC frames."""

    name: str
    height: int
    width: int
    channels: int = 3
    # Orientation of the frames AS STORED. Converters store upright images; `source_orientation`
    # records what the source had, so the 180-degree LIBERO flip is never implicit.
    orientation: str = "upright"
    source_orientation: str = "upright"

    @property
    def key(self) -> str:
        return camera_key(self.name)


@dataclass(frozen=True)
class KeySpec:
    """A per-frame array: dtype, per-frame shape and (for vectors) the names of its entries."""

    dtype: str
    shape: tuple[int, ...]
    names: tuple[str, ...] | None = None


@dataclass(frozen=True)
class SourceInfo:
    format: str  # lerobot | libero | calvin | dp-zarr | sim | robot
    path: str = ""
    version: str = ""  # the source's own format version, when it has one
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class StoreSpec:
    """Everything about a dataset that is fixed before the first episode is written."""

    fps: float
    embodiment: str  # e.g. "libero_panda", "so101", "calvin_panda"
    robot_type: str
    action: tuple[DimSpec, ...]
    state: tuple[DimSpec, ...] = ()
    cameras: tuple[CameraSpec, ...] = ()
    # Extra per-frame low-dimensional arrays kept verbatim (e.g. "observation.joint_states").
    extra_keys: dict[str, KeySpec] = field(default_factory=dict)
    source: SourceInfo = field(default_factory=lambda: SourceInfo(format="unknown"))
    # Optional override of the multi-embodiment slot assignment (see slots.py); computed when None.
    action_slots: tuple[int, ...] | None = None
    state_slots: tuple[int, ...] | None = None

    @property
    def action_dim(self) -> int:
        return len(self.action)

    @property
    def state_dim(self) -> int:
        return len(self.state)

    def keys(self) -> dict[str, KeySpec]:
        """Every per-frame array of the store with its per-frame shape."""
        out: dict[str, KeySpec] = {
            ACTION_KEY: KeySpec("float32", (self.action_dim,), tuple(d.name for d in self.action)),
        }
        if self.state:
            out[STATE_KEY] = KeySpec("float32", (self.state_dim,), tuple(d.name for d in self.state))
        for cam in self.cameras:
            out[cam.key] = KeySpec("uint8", (cam.height, cam.width, cam.channels))
        out.update(self.extra_keys)
        return out

    def problems(self) -> list[str]:
        out = []
        if not self.fps or self.fps <= 0:
            out.append(f"fps must be positive, got {self.fps!r}")
        if not self.action:
            out.append("the action space has no dimensions")
        for d in (*self.action, *self.state):
            out.extend(d.problems())
        for cam in self.cameras:
            if cam.orientation not in ORIENTATIONS:
                out.append(f"camera {cam.name!r}: unknown orientation {cam.orientation!r}")
        return out

    # --- JSON round trip -------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["extra_keys"] = {k: dataclasses.asdict(v) for k, v in self.extra_keys.items()}
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> StoreSpec:
        return cls(
            fps=float(d["fps"]),
            embodiment=d["embodiment"],
            robot_type=d.get("robot_type", ""),
            action=tuple(DimSpec(**x) for x in d["action"]),
            state=tuple(DimSpec(**x) for x in d.get("state", ())),
            cameras=tuple(CameraSpec(**x) for x in d.get("cameras", ())),
            extra_keys={
                k: KeySpec(v["dtype"], tuple(v["shape"]), tuple(v["names"]) if v.get("names") else None)
                for k, v in d.get("extra_keys", {}).items()
            },
            source=SourceInfo(**d.get("source", {"format": "unknown"})),
            action_slots=tuple(d["action_slots"]) if d.get("action_slots") is not None else None,
            state_slots=tuple(d["state_slots"]) if d.get("state_slots") is not None else None,
        )


def dims(
    names: list[str] | tuple[str, ...], kind: str = "other", mode: str = "absolute", **kw: Any
) -> tuple[DimSpec, ...]:
    """Shorthand: several dimensions of the same kind and mode."""
    return tuple(DimSpec(name=n, kind=kind, mode=mode, **kw) for n in names)
