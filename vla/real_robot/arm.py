"""Arm description files: joints, limits, calibration and rates as data (YAML or JSON), not code."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from vla.errors import VlaError

ARMS_DIR = Path(__file__).parent / "arms"


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

    def problems(self) -> list[str]:
        out = []
        if not self.low < self.high:
            out.append(f"joint {self.name!r}: low ({self.low}) must be below high ({self.high})")
        if self.sign not in (1, -1):
            out.append(f"joint {self.name!r}: sign must be 1 or -1, got {self.sign}")
        if self.max_step <= 0:
            out.append(f"joint {self.name!r}: max_step must be positive")
        return out


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
        if self.rate_hz <= 0:
            out.append(f"rate_hz must be positive, got {self.rate_hz}")
        if len({j.name for j in self.joints}) != len(self.joints):
            out.append("joint names must be unique")
        if self.driver in ("feetech", "dynamixel") and len({j.id for j in self.joints}) != len(self.joints):
            out.append("servo ids must be unique")
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
        except (TypeError, IndexError, KeyError) as e:
            raise ArmFileError(f"{source}: malformed arm description ({e})") from None
        problems = spec.problems()
        if problems:
            raise ArmFileError(f"{source}: " + "; ".join(problems))
        return spec


def load_arm(path_or_name: str | Path) -> ArmSpec:
    """Read an arm file (.yaml/.yml/.json), or a built-in one by name (so101, koch, fr3)."""
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
    return ArmSpec.from_dict(data, source=str(path))


def save_arm(spec: ArmSpec, path: str | Path) -> Path:
    """Write an arm file; JSON when the name ends in .json, YAML otherwise. Atomic (temp file + rename)."""
    path = Path(path)
    d = spec.to_dict()
    text = json.dumps(d, indent=2) if path.suffix == ".json" else yaml.safe_dump(d, sort_keys=False)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)
    return path
