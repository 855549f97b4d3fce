"""Register addresses of the servo models we drive, from the vendors' datasheets.

Shared by the drivers and the emulator: both sides are data about the same servo.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass


@dataclass(frozen=True)
class ControlTable:
    model: str
    protocol: str  # feetech | dynamixel
    model_number: int
    torque_enable: int
    goal_position: tuple[int, int]  # (address, bytes)
    present_position: tuple[int, int]
    present_load: tuple[int, int]
    hardware_error: int | None  # Dynamixel "Hardware Error Status"; Feetech reports in the status error byte
    overload_error_bit: int  # status-packet error bit that means overload (or "alert" for Dynamixel)
    max_ticks: int = 4095
    signed_position: bool = False


STS3215 = ControlTable(
    model="sts3215",
    protocol="feetech",
    model_number=777,
    torque_enable=40,
    goal_position=(42, 2),
    present_position=(56, 2),
    present_load=(60, 2),
    hardware_error=None,
    overload_error_bit=0x20,
)

XL330 = ControlTable(
    model="xl330",
    protocol="dynamixel",
    model_number=1200,
    torque_enable=64,
    goal_position=(116, 4),
    present_position=(132, 4),
    present_load=(126, 2),
    hardware_error=70,
    overload_error_bit=0x80,  # the alert bit; the cause (bit 5: overload) is in register 70
    signed_position=True,
)

XL430 = dataclasses.replace(XL330, model="xl430", model_number=1060)

TABLES = {t.model: t for t in (STS3215, XL330, XL430)}


def table_for(model: str) -> ControlTable:
    if model not in TABLES:
        raise KeyError(f"unknown servo model {model!r} (known: {', '.join(sorted(TABLES))})")
    return TABLES[model]
