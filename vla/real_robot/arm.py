"""Arm description files: joints, limits, calibration and rates as data (YAML or JSON), not code."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from vla.errors import VlaError
from vla.files import atomic_write_text

ARMS_DIR = Path(__file__).parent / "arms"
LEROBOT_PREFIX = "lerobot:"  # `--robot lerobot:TYPE`: LeRobot's driver for that robot type (arms/lerobot_TYPE.yaml)
# Joint units an arm file may declare (LeRobot's motor normalisations included), see vla.real_robot.units.
UNITS = ("rad", "deg", "m", "normalized_0_100", "normalized_-100_100")


class ArmFileError(VlaError):
    """An arm description file that cannot be used: says which field and why."""


@dataclass(frozen=True)
class JointSpec:
    """One joint. Servo joints map ticks to radians: rad = sign * (ticks - offset) * 2π / ticks_per_rev."""

    name: str
    low: float  # radians (or the gripper's unit), hard limit the safety layer clamps to
    high: float
    id: int = 0  # servo bus id; unused for Franka
    offset: int = 2048  # calibration: the tick reading at the joint's zero
    sign: int = 1
    max_step: float = 0.2  # largest change of the command per control tick
    unit: str = "rad"  # of low/high/max_step and of every value read or sent: rad | deg | m | normalized_0_100 ...

    def problems(self) -> list[str]:
        where = f"joint {self.name!r}"
        out = [f"{where} {key}: must be a finite number, got {v!r}"
               for key, v in (("low", self.low), ("high", self.high), ("max_step", self.max_step))
               if not _finite(v)]  # fmt: skip
        if not out and not self.low < self.high:
            out.append(f"{where} low ({self.low}) must be below high ({self.high})")
        if _finite(self.max_step) and not self.max_step > 0:
            out.append(f"{where} max_step: must be above 0, got {self.max_step}")
        if self.unit not in UNITS:
            out.append(f"{where} unit: {self.unit!r} is not one of {', '.join(UNITS)}")
        if self.sign not in (1, -1) or isinstance(self.sign, bool):
            out.append(f"{where} sign: must be 1 or -1, got {self.sign!r}")
        for key, v in (("id", self.id), ("offset", self.offset)):
            if not _integer(v):
                out.append(f"{where} {key}: must be an integer, got {v!r}")
        return out


def _finite(v: object) -> bool:
    """A real, finite number: NaN or inf would switch off the clamp or the rate limit of the safety layer."""
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _integer(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


# The joint ranges the Franka arms accept (radians), from Franka's robot specifications: an arm file must stay inside.
FRANKA_RANGES: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "fr3": ((-2.7437, -1.7837, -2.9007, -3.0421, -2.8065, 0.5445, -3.0159),
            (2.7437, 1.7837, 2.9007, -0.1518, 2.8065, 4.5169, 3.0159)),
    "panda": ((-2.8973, -1.7628, -2.8973, -3.0718, -2.8973, -0.0175, -2.8973),
              (2.8973, 1.7628, 2.8973, -0.0698, 2.8973, 3.7525, 2.8973)),
}  # fmt: skip


@dataclass(frozen=True)
class ArmSpec:
    """A whole arm: which driver, where it is connected, its joints and its control rate."""

    name: str
    driver: str
    joints: tuple[JointSpec, ...]
    port: str = ""  # serial device (servo arms) or host name / IP (Franka)
    baudrate: int = 1_000_000
    model: str = ""  # servo model (sts3215, xl330) or robot model (fr3)
    ticks_per_rev: int = 4096
    rate_hz: float = 30.0
    # Workspace box for the end effector, [[xmin, ymin, zmin], [xmax, ymax, zmax]] in metres (arms with kinematics).
    workspace: tuple[tuple[float, float, float], tuple[float, float, float]] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def dof(self) -> int:
        return len(self.joints)

    @property
    def low(self) -> np.ndarray:
        return np.array([j.low for j in self.joints], dtype=np.float64)

    @property
    def high(self) -> np.ndarray:
        return np.array([j.high for j in self.joints], dtype=np.float64)

    @property
    def max_step(self) -> np.ndarray:
        return np.array([j.max_step for j in self.joints], dtype=np.float64)

    @property
    def joint_names(self) -> tuple[str, ...]:
        return tuple(j.name for j in self.joints)

    def problems(self) -> list[str]:
        out = [p for j in self.joints for p in j.problems()]
        if not self.joints:
            out.append("the arm has no joints")
        if not _finite(self.rate_hz) or not self.rate_hz > 0:
            out.append(f"rate_hz: must be a finite number above 0, got {self.rate_hz!r}")
        if not _integer(self.ticks_per_rev) or not self.ticks_per_rev > 0:
            out.append(f"ticks_per_rev: must be a positive integer, got {self.ticks_per_rev!r}")
        if len({j.name for j in self.joints}) != len(self.joints):
            out.append("joint names must be unique")
        if self.driver in ("feetech", "dynamixel") and len({j.id for j in self.joints}) != len(self.joints):
            out.append("servo ids must be unique")
        out += self._workspace_problems()
        if not out:  # ranges are only meaningful once every number is sound
            out += self._range_problems()
        return out

    def _workspace_problems(self) -> list[str]:
        if self.workspace is None:
            return []
        lo, hi = self.workspace
        if not (len(lo) == len(hi) == 3 and all(_finite(v) for v in (*lo, *hi))):
            return [f"workspace: must be [[xmin, ymin, zmin], [xmax, ymax, zmax]] of finite numbers, got {lo}, {hi}"]
        if not all(a < b for a, b in zip(lo, hi, strict=True)):
            return [f"workspace: each minimum must be below its maximum, got {list(lo)}, {list(hi)}"]
        return []

    def _range_problems(self) -> list[str]:
        """Limits the hardware cannot reach: a servo's goal register range, a Franka's joint range."""
        if self.driver in ("feetech", "dynamixel"):
            return self._servo_range_problems()
        if self.driver == "franka" and self.model in FRANKA_RANGES:
            lows, highs = FRANKA_RANGES[self.model]
            if len(self.joints) != len(lows):
                return [f"a {self.model} has {len(lows)} joints, the file lists {len(self.joints)}"]
            return [f"joint {j.name!r} {key}: {v} is outside the {self.model}'s range [{lo}, {hi}]"
                    for j, lo, hi in zip(self.joints, lows, highs, strict=True)
                    for key, v in (("low", j.low), ("high", j.high)) if not lo <= v <= hi]  # fmt: skip
        return []

    def _servo_range_problems(self) -> list[str]:
        from vla.real_robot.control_tables import TABLES

        table = TABLES.get(self.model)
        if table is None or table.protocol != self.driver:
            known = sorted(t.model for t in TABLES.values() if t.protocol == self.driver)
            return [f"model: {self.model!r} is not a {self.driver} servo we drive (known: {', '.join(known)})"]
        # Position control mode: goals are ticks in [0, max_ticks]; a limit past them would be clipped or wrap.
        scale = 2 * math.pi / self.ticks_per_rev
        out = []
        for j in self.joints:
            for key, v in (("low", j.low), ("high", j.high)):
                ticks = j.offset + j.sign * v / scale  # a float: a huge limit must not overflow an int
                if not -0.5 <= ticks < table.max_ticks + 0.5:
                    out.append(f"joint {j.name!r} {key}: {v} rad is tick {ticks:.0f}, outside the {self.model}'s "
                               f"range [0, {table.max_ticks}] for offset {j.offset}")  # fmt: skip
        return out

    def replace(self, **changes: Any) -> ArmSpec:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["joints"] = [dataclasses.asdict(j) for j in self.joints]
        if self.workspace is not None:
            d["workspace"] = [list(self.workspace[0]), list(self.workspace[1])]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "<dict>") -> ArmSpec:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ArmFileError(f"{source}: unknown fields {unknown}")
        try:
            joints = tuple(JointSpec(**j) for j in d.get("joints", ()))
            ws = d.get("workspace")
            workspace = (tuple(ws[0]), tuple(ws[1])) if ws is not None else None
            spec = cls(**{**d, "joints": joints, "workspace": workspace})
            problems = spec.problems()
        except (TypeError, IndexError, KeyError) as e:
            raise ArmFileError(f"{source}: malformed arm description ({e})") from None
        if problems:
            raise ArmFileError(f"{source}: " + "; ".join(problems) + " (fix the arm file)")
        return spec


def load_arm(path_or_name: str | Path, calibration: str | Path | None = None) -> ArmSpec:
    """Read an arm file (.yaml/.yml/.json), a built-in one by name (so101, koch, fr3), LeRobot's driver for a
    robot type (`lerobot:so101_follower`; `calibration`: its LeRobot calibration file), or a LeRobot
    calibration file (the built-in arm with the same motors, calibrated from it)."""
    if str(path_or_name).startswith(LEROBOT_PREFIX):
        return _lerobot_arm(str(path_or_name).removeprefix(LEROBOT_PREFIX), calibration)
    path = Path(path_or_name)
    if not path.exists() and (ARMS_DIR / f"{path_or_name}.yaml").exists():
        path = ARMS_DIR / f"{path_or_name}.yaml"
    if not path.exists():
        builtin = sorted(p.stem for p in ARMS_DIR.glob("*.yaml"))
        raise ArmFileError(f"{path}: no such arm file (built-in arms: {', '.join(builtin)})")
    try:
        text = path.read_text()
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (OSError, json.JSONDecodeError, yaml.YAMLError) as e:
        raise ArmFileError(f"{path}: unreadable arm file ({e})") from None
    if not isinstance(data, dict):
        raise ArmFileError(f"{path}: an arm file must hold a mapping at the top level")
    if is_lerobot_calibration(data):
        return arm_from_lerobot_calibration(data, source=str(path))
    spec = ArmSpec.from_dict(data, source=str(path))
    if spec.driver == "lerobot" and calibration is not None:
        spec = spec.replace(extra={**spec.extra, "calibration": str(calibration)})
    return spec


def is_lerobot_calibration(data: dict[str, Any]) -> bool:
    """LeRobot's calibration JSON: motor name -> {id, drive_mode, homing_offset, range_min, range_max}."""
    keys = {"id", "drive_mode", "homing_offset", "range_min", "range_max"}
    return bool(data) and all(isinstance(v, dict) and set(v) == keys for v in data.values())


def arm_from_lerobot_calibration(data: dict[str, Any], source: str = "<dict>", margin: float = 0.05) -> ArmSpec:
    """Our built-in arm with the same motors, calibrated from LeRobot's calibration file.

    LeRobot writes each motor's homing offset into the servo, so the ticks it reports are already homed, and
    records the range of motion in those ticks; its degrees are (ticks - middle of the range) * 360 / 4095.
    Our zero is that middle (offset), our limits the range less `margin` of it at each end, in radians."""
    names = set(data)
    bases = [load_arm(p) for p in sorted(ARMS_DIR.glob("*.yaml")) if not p.stem.startswith("lerobot_")]
    bases = [b for b in bases if set(b.joint_names) == names and b.driver in ("feetech", "dynamixel")]
    # SO-101 and Koch share motor names: LeRobot keeps the file under calibration/robots/<type>/, which says.
    bases.sort(key=lambda b: (b.name not in source, b.name != "so101"))
    if bases:
        base = bases[0]
    else:
        raise ArmFileError(f"{source}: a LeRobot calibration for motors {sorted(names)}, which match no built-in "
                           "arm; write an arm file for this arm")  # fmt: skip
    scale = 2 * math.pi / base.ticks_per_rev
    joints = []
    for j in base.joints:
        c = data[j.name]
        lo, hi = c["range_min"], c["range_max"]
        if not (_integer(lo) and _integer(hi) and _integer(c["id"]) and lo < hi):
            raise ArmFileError(f"{source}: {j.name}: range_min/range_max/id must be integers with range_min < "
                               f"range_max, got {lo!r}, {hi!r}, {c['id']!r}")  # fmt: skip
        mid, half = (lo + hi) / 2, (hi - lo) / 2 * (1 - 2 * margin)
        joints.append(dataclasses.replace(j, id=c["id"], offset=round(mid), sign=-1 if c["drive_mode"] else 1,
                                          low=round(-half * scale, 4), high=round(half * scale, 4)))  # fmt: skip
    spec = base.replace(joints=tuple(joints), extra={**base.extra, "lerobot_calibration": source})
    problems = spec.problems()
    if problems:
        raise ArmFileError(f"{source}: " + "; ".join(problems))
    return spec


def _lerobot_arm(kind: str, calibration: str | Path | None) -> ArmSpec:
    path = ARMS_DIR / f"lerobot_{kind}.yaml"
    if not path.exists():
        builtin = sorted(p.stem.removeprefix("lerobot_") for p in ARMS_DIR.glob("lerobot_*.yaml"))
        raise ArmFileError(
            f"lerobot:{kind}: no built-in description (built-in: {', '.join(builtin)}); for another LeRobot robot "
            "write an arm file with `driver: lerobot`, `extra: {type: TYPE}` and its joints, limits and units"
        )
    spec = load_arm(path)
    return spec if calibration is None else spec.replace(extra={**spec.extra, "calibration": str(calibration)})


def save_arm(spec: ArmSpec, path: str | Path) -> Path:
    """Write an arm file; JSON when the name ends in .json, YAML otherwise. Atomic (temp file + rename)."""
    path = Path(path)
    d = spec.to_dict()
    text = json.dumps(d, indent=2) if path.suffix == ".json" else yaml.safe_dump(d, sort_keys=False)
    return atomic_write_text(path, text)
