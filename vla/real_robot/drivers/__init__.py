"""Drivers behind the `Robot` interface, by the name an arm file gives as its `driver`.

A driver is a `Robot` class built as `Driver(spec, port, torque=...)`; it is imported only when an
arm uses it (franky or a servo SDK load then). A new arm driver is one module and one line here.
"""

from __future__ import annotations

from vla.real_robot.arm import ArmSpec
from vla.real_robot.robot import Robot
from vla.registry import Registry

DRIVERS = Registry(
    "robot driver",
    {
        "feetech": "vla.real_robot.drivers.servo_bus:ServoBusArm",
        "dynamixel": "vla.real_robot.drivers.servo_bus:ServoBusArm",
        "franka": "vla.real_robot.drivers.franka:FrankaArm",
        "lerobot": "vla.real_robot.drivers.lerobot_robot:LeRobotArm",  # any robot of lerobot.robots
    },
)


def make_robot(spec: ArmSpec, *, port: str | None = None, torque: bool = True) -> Robot:
    """The `Robot` of an arm file's spec. `port` overrides the arm file's (e.g. an
    emulator's pty, or a Franka's host); `torque=False` for a hand-moved leader arm."""
    return DRIVERS.load(spec.driver)(spec, port, torque=torque)
