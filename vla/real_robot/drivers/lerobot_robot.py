"""A LeRobot `Robot` (lerobot.robots: SO-100/101, Koch, OMX, OpenArm, ...) behind our `Robot` interface.

LeRobot's own driver talks to the arm (its motor bus, its calibration file); our control loop, safety layer,
watchdog and recorder run on top, exactly as for our own drivers. Joint values are in LeRobot's units for
that robot, and the arm spec says so per joint (`unit`: deg for SO-101 body joints with `use_degrees`,
normalized_0_100 for its gripper, ...), so a policy trained in other units is converted or refused at
deploy (vla.real_robot.units), never fed numbers in the wrong unit.

The arm spec's `extra` holds: `type` (LeRobot's robot type, e.g. so101_follower), `calibration` (LeRobot's
calibration JSON for this arm: `<calibration_dir>/<id>.json`) and `config` (other fields of the LeRobot
robot config). LeRobot's interactive calibration never runs here: an arm whose motors disagree with the
file gets the file's calibration written, as LeRobot does when its user accepts the file.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import numpy as np

from vla.real_robot.arm import ArmFileError, ArmSpec
from vla.real_robot.robot import CommError, Robot, RobotError, RobotState


def _register_lerobot_robots() -> None:
    """Robot types register when their package is imported: import each (a missing optional SDK skips one)."""
    import importlib
    import pkgutil

    import lerobot.robots

    for mod in pkgutil.iter_modules(lerobot.robots.__path__):
        if mod.ispkg:
            with contextlib.suppress(Exception):
                importlib.import_module(f"lerobot.robots.{mod.name}")


def lerobot_config(spec: ArmSpec, port: str | None) -> Any:
    """The LeRobot robot config of an arm spec with `driver: lerobot`."""
    from lerobot.robots.config import RobotConfig

    kind = spec.extra.get("type")
    if kind not in RobotConfig.get_known_choices():
        _register_lerobot_robots()
    try:
        cls = RobotConfig.get_choice_class(kind)
    except Exception:  # draccus' error for an unknown choice
        known = ", ".join(sorted(RobotConfig.get_known_choices()))
        raise ArmFileError(f"{spec.name}: {kind!r} is not a LeRobot robot type (known: {known})") from None
    calibration = spec.extra.get("calibration")
    if not calibration:
        raise ArmFileError(f"{spec.name}: LeRobot robots need their calibration file: pass --calibration FILE.json "
                           "(written by lerobot-calibrate, or `vla robot calibrate`)")  # fmt: skip
    path = Path(calibration)
    if not path.is_file():
        raise ArmFileError(f"{spec.name}: calibration file {path} does not exist")
    fields = {"port": port or spec.port, "id": path.stem, "calibration_dir": path.parent}
    fields.update(spec.extra.get("config", {}))
    if "use_degrees" in cls.__dataclass_fields__:
        fields.setdefault("use_degrees", spec.extra.get("use_degrees", True))
    try:
        return cls(**fields)
    except TypeError as e:
        raise ArmFileError(f"{spec.name}: bad LeRobot {kind} config ({e})") from None


CONNECT_TRIES = 3  # a servo that misses the bus-wide ping (busy host, slow USB adapter) answers the next one


def _connect_with_retries(robot: Any) -> None:
    """LeRobot's connect (never its calibration prompts: the file is the calibration), tried again when the
    motor check misses a servo; the last failure is raised."""
    for attempt in range(CONNECT_TRIES):
        try:
            robot.connect(calibrate=False)
            return
        # lerobot's motor check raises RuntimeError; the Feetech SDK indexes a short (truncated) reply to a ping
        # without checking its length and raises IndexError: both are a missed answer, which the next try gets
        except (ConnectionError, RuntimeError, IndexError):
            if attempt == CONNECT_TRIES - 1:
                raise
            bus = getattr(robot, "bus", None)
            port = getattr(bus, "port_handler", None)
            if port is not None and getattr(port, "is_open", False):
                port.closePort()  # the failed check left the port open; connect opens it again


class LeRobotArm(Robot):
    def __init__(self, spec: ArmSpec, port: str | None = None, torque: bool = True):
        super().__init__(spec)
        self.config = lerobot_config(spec, port)
        self.torque = torque
        self.robot: Any = None
        self.keys = [f"{j.name}.pos" for j in spec.joints]

    def connect(self) -> None:
        from lerobot.robots.utils import make_robot_from_config

        try:
            robot = make_robot_from_config(self.config)
        except (ValueError, TypeError, OSError) as e:
            raise RobotError(f"{self.spec.name}: LeRobot cannot build a {self.config.type}: {e}") from None
        missing = [k for k in self.keys if k not in robot.action_features]
        if missing:
            raise ArmFileError(f"{self.spec.name}: a LeRobot {self.config.type} has no joints {missing} "
                               f"(it has {sorted(robot.action_features)})")  # fmt: skip
        if not robot.calibration:
            raise ArmFileError(f"{self.spec.name}: calibration file {self.spec.extra['calibration']} is empty "
                               "or not LeRobot's calibration format")  # fmt: skip
        try:
            _connect_with_retries(robot)
            if hasattr(robot, "bus") and not robot.is_calibrated:
                robot.bus.write_calibration(robot.calibration)
            if not self.torque and hasattr(robot, "bus"):
                robot.bus.disable_torque()
        except (ConnectionError, RuntimeError, OSError, IndexError) as e:
            raise CommError(f"{self.spec.name}: LeRobot {self.config.type} on {self.config.port}: {e}") from None
        self.robot = robot

    def read_state(self) -> RobotState:
        try:
            obs = self.robot.get_observation()
        except (ConnectionError, RuntimeError, OSError) as e:
            raise CommError(f"{self.spec.name}: read failed: {e}") from None
        return RobotState(np.array([float(obs[k]) for k in self.keys], dtype=np.float64))

    def send_action(self, joints: np.ndarray) -> None:
        try:
            self.robot.send_action({k: float(v) for k, v in zip(self.keys, joints, strict=True)})
        except (ConnectionError, RuntimeError, OSError) as e:
            raise CommError(f"{self.spec.name}: write failed: {e}") from None

    def stop(self) -> None:
        if self.robot is not None and hasattr(self.robot, "bus"):
            self.robot.bus.disable_torque()

    def disconnect(self) -> None:
        if self.robot is not None:
            self.robot.disconnect()
            self.robot = None
