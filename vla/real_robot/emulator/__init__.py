"""A pseudo-terminal servo bus that answers the Feetech and Dynamixel wire protocols from a register table.

The vendor SDKs open the pty's device path like a USB-serial adapter and cannot tell the difference;
faults (no answer, corrupted checksum, a missing servo id, an overloaded servo) are injected on demand.
"""

from vla.real_robot.emulator.bus import Faults, ServoBusEmulator
from vla.real_robot.emulator.wire import DynamixelWire, FeetechWire

__all__ = ["DynamixelWire", "Faults", "FeetechWire", "ServoBusEmulator"]
