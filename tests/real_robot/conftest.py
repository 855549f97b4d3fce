from __future__ import annotations

from collections.abc import Iterator

import pytest

from vla.real_robot.arm import ArmSpec
from vla.real_robot.control_tables import table_for
from vla.real_robot.drivers.servo_bus import ServoBusArm
from vla.real_robot.emulator import ServoBusEmulator

from .helpers import servo_arm


@pytest.fixture(params=["feetech", "dynamixel"])
def driver(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def arm_spec(driver: str) -> ArmSpec:
    return servo_arm(driver)


@pytest.fixture
def emulator(arm_spec: ArmSpec) -> Iterator[ServoBusEmulator]:
    with ServoBusEmulator(table_for(arm_spec.model), [j.id for j in arm_spec.joints]) as emu:
        yield emu


@pytest.fixture
def servo_robot(arm_spec: ArmSpec, emulator: ServoBusEmulator) -> Iterator[ServoBusArm]:
    robot = ServoBusArm(arm_spec, port=emulator.port)
    robot.connect()
    yield robot
    emulator.faults.missing_ids.clear()
    emulator.faults.overload_ids.clear()
    robot.disconnect()
