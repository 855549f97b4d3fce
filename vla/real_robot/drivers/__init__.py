"""Drivers behind the `Robot` interface. `make_robot(spec)` picks one from the arm file's `driver`."""

from __future__ import annotations

from vla.real_robot.arm import ArmSpec
from vla.real_robot.robot import Robot


def make_robot(spec: ArmSpec, *, port: str | None = None, torque: bool = True) -> Robot:
    """`port` overrides the arm file's (e.g. an emulator's pty); `torque=False` for a hand-moved leader arm."""
    if spec.driver in ("feetech", "dynamixel"):
        from vla.real_robot.drivers.servo_bus import ServoBusArm

        return ServoBusArm(spec, port=port, torque=torque)
    if spec.driver == "franka":
        from vla.real_robot.drivers.franka import FrankaArm

        return FrankaArm(spec, host=port)
    raise ValueError(f"no driver {spec.driver!r}")
