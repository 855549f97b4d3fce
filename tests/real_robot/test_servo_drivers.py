"""The real vendor SDKs talking to the pty emulator: round trips and every injected fault."""

from __future__ import annotations

import numpy as np
import pytest

from vla.real_robot.arm import ArmSpec
from vla.real_robot.control_tables import table_for
from vla.real_robot.drivers.servo_bus import ServoBusArm
from vla.real_robot.emulator import ServoBusEmulator
from vla.real_robot.emulator.wire import DynamixelWire, crc16, stuff, unstuff
from vla.real_robot.robot import CommError, RobotError, ServoFault


def test_crc_matches_the_dynamixel_sdk() -> None:
    import dynamixel_sdk

    ph = dynamixel_sdk.PacketHandler(2.0)
    data = [*range(0, 256, 7), 0xFF, 0xFF, 0xFD]
    assert crc16(bytes(data)) == ph.updateCRC(0, data, len(data))


def test_byte_stuffing_round_trip() -> None:
    raw = bytes([0x55, 0, 0xFF, 0xFF, 0xFD, 1, 0xFF, 0xFF, 0xFD])
    assert stuff(raw).count(b"\xff\xff\xfd\xfd") == 2
    assert unstuff(stuff(raw)) == raw
    wire = DynamixelWire()
    pkt, used = wire.parse(bytearray(wire.status(3, 0, bytes([0xFF, 0xFF, 0xFD, 7]))))
    assert pkt is not None and pkt.params == bytes([0, 0xFF, 0xFF, 0xFD, 7]) and used > 0


def test_read_and_write_round_trip(servo_robot: ServoBusArm, emulator: ServoBusEmulator) -> None:
    assert np.allclose(servo_robot.read_state().joints, 0.0)
    target = np.array([0.3, -0.2, 0.1, 0.0, -0.5, 0.8])
    servo_robot.send_action(target)
    assert np.allclose(servo_robot.read_state().joints, target, atol=2 * np.pi / 4096)
    assert emulator.position(1) == 2048 + round(0.3 / (2 * np.pi / 4096))
    assert all(emulator.torque_on(j) for j in servo_robot.ids)


def test_no_answer_and_corrupt_checksum_are_comm_errors(servo_robot: ServoBusArm, emulator: ServoBusEmulator) -> None:
    emulator.faults.drop_next = 1
    with pytest.raises(CommError, match="no status packet"):
        servo_robot.read_state()
    emulator.faults.corrupt_next = 1
    with pytest.raises(CommError, match="Incorrect status packet"):
        servo_robot.read_state()
    assert np.allclose(servo_robot.read_state().joints, 0.0)  # and the bus recovers


def test_missing_servo(servo_robot: ServoBusArm, emulator: ServoBusEmulator, arm_spec: ArmSpec) -> None:
    emulator.faults.missing_ids = {4}
    with pytest.raises(CommError, match="servo 4"):
        servo_robot.read_state()
    other = ServoBusArm(arm_spec, port=emulator.port)
    with pytest.raises(RobotError, match="servo 4 does not answer"):
        other.connect()


def test_overload_is_a_servo_fault(servo_robot: ServoBusArm, emulator: ServoBusEmulator) -> None:
    emulator.faults.overload_ids = {2}
    with pytest.raises(ServoFault, match="servo 2"):
        servo_robot.read_state()


def test_stop_freezes_and_refuses_commands(servo_robot: ServoBusArm, emulator: ServoBusEmulator) -> None:
    servo_robot.send_action(np.full(6, 0.2))
    n = len(emulator.goal_log)
    servo_robot.stop()
    with pytest.raises(RobotError, match="stopped"):
        servo_robot.send_action(np.zeros(6))
    assert all(t == 2048 + round(0.2 / (2 * np.pi / 4096)) for _, t in emulator.goal_log[n:])


def test_missing_port_is_a_clear_error(arm_spec: ArmSpec) -> None:
    with pytest.raises(RobotError, match="cannot open"):
        ServoBusArm(arm_spec, port="/dev/does-not-exist").connect()


def test_emulator_ignores_garbage(arm_spec: ArmSpec) -> None:
    with ServoBusEmulator(table_for(arm_spec.model), [1, 2, 3, 4, 5, 6]) as emu:
        import os

        fd = os.open(emu.port, os.O_RDWR | os.O_NOCTTY)
        os.write(fd, b"\x00\x13\xff\x42garbage\xff\xff")
        os.close(fd)
        robot = ServoBusArm(arm_spec, port=emu.port)
        robot.connect()
        assert robot.read_state().joints.shape == (6,)
        robot.disconnect()
