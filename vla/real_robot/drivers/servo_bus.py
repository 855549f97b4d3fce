"""Serial bus servo arms (SO-100/SO-101 on Feetech, Koch on Dynamixel) through the vendors' SDKs.

The two SDKs share one API (scservo_sdk is a fork of dynamixel_sdk), so one driver serves both; only the
module, the protocol version and the control table differ. Positions are read with a sync read built from
the SDK's `syncReadTx` + `readRx`, because the SDKs' GroupSyncRead drops the status error byte, which is
where a servo reports overload.
"""

from __future__ import annotations

import logging
import threading
from types import ModuleType
from typing import Any

import numpy as np

from vla.real_robot.arm import ArmSpec
from vla.real_robot.control_tables import ControlTable, table_for
from vla.real_robot.robot import CommError, Robot, RobotError, RobotState, ServoFault

log = logging.getLogger("vla.real_robot.servo_bus")

LOCK_TIMEOUT_S = 0.5
CONNECT_TRIES = 3


def _sdk(protocol: str) -> tuple[ModuleType, Any]:
    if protocol == "feetech":
        import scservo_sdk as sdk

        return sdk, sdk.PacketHandler(0)  # 0: little-endian registers (STS series)
    import dynamixel_sdk as sdk

    return sdk, sdk.PacketHandler(2.0)


class ServoBusArm(Robot):
    def __init__(self, spec: ArmSpec, port: str | None = None, torque: bool = True):
        super().__init__(spec)
        self.table: ControlTable = table_for(spec.model)
        if self.table.protocol != spec.driver:
            raise RobotError(f"arm {spec.name}: servo model {spec.model} is not a {spec.driver} servo")
        self.port_name = port or spec.port
        self.torque = torque
        self.ids = [j.id for j in spec.joints]
        self._offset = np.array([j.offset for j in spec.joints], dtype=np.float64)
        self._sign = np.array([j.sign for j in spec.joints], dtype=np.float64)
        self._scale = 2 * np.pi / spec.ticks_per_rev
        self._lock = threading.Lock()
        self.stopped = False
        self.port: Any = None

    # --- units -----------------------------------------------------------------------------------
    def to_radians(self, ticks: np.ndarray) -> np.ndarray:
        return self._sign * (np.asarray(ticks, dtype=np.float64) - self._offset) * self._scale

    def to_ticks(self, joints: np.ndarray) -> np.ndarray:
        ticks = np.rint(self._offset + np.asarray(joints, dtype=np.float64) / self._scale * self._sign).astype(int)
        return ticks if self.table.signed_position else np.clip(ticks, 0, self.table.max_ticks)

    # --- bus primitives ----------------------------------------------------------------------------
    def _check(self, servo_id: int, result: int, error: int) -> None:
        if result != self.sdk.COMM_SUCCESS:
            raise CommError(f"servo {servo_id} on {self.port_name}: {self.ph.getTxRxResult(result).strip()}")
        if error & self.table.overload_error_bit:
            raise ServoFault(f"servo {servo_id}: {self.ph.getRxPacketError(error) or 'hardware alert'} (overload)")

    def _sync_read(self, address: int, size: int) -> dict[int, bytes]:
        self.port.ser.reset_input_buffer()  # stale answers from a half-failed exchange would confuse this one
        args = (self.port, address, size, self.ids, len(self.ids))
        result = self.ph.syncReadTx(*args, False) if self.table.protocol == "dynamixel" else self.ph.syncReadTx(*args)
        if result != self.sdk.COMM_SUCCESS:
            raise CommError(f"sync read on {self.port_name}: {self.ph.getTxRxResult(result).strip()}")
        out = {}
        try:
            for i in self.ids:
                data, result, error = self.ph.readRx(self.port, i, size)
                self._check(i, result, error)
                if len(data) != size:  # a mismatched answer: never turn it into a position
                    raise CommError(f"servo {i}: answer has {len(data)} bytes, expected {size}")
                out[i] = bytes(data)
        finally:
            self.port.is_using = False
        return out

    def _sync_write(self, address: int, size: int, values: dict[int, int]) -> None:
        group = self.sdk.GroupSyncWrite(self.port, self.ph, address, size)
        for i, v in values.items():
            raw = int(v).to_bytes(size, "little", signed=self.table.signed_position)
            group.addParam(i, list(raw))
        result = group.txPacket()
        if result != self.sdk.COMM_SUCCESS:
            raise CommError(f"sync write on {self.port_name}: {self.ph.getTxRxResult(result).strip()}")

    def _write1(self, servo_id: int, address: int, value: int) -> None:
        self.port.ser.reset_input_buffer()
        result, error = self.ph.write1ByteTxRx(self.port, servo_id, address, value)
        self._check(servo_id, result, error)

    # --- the Robot interface -------------------------------------------------------------------------
    def connect(self) -> None:
        self.sdk, self.ph = _sdk(self.table.protocol)
        # The SDKs wait 2 * LATENCY_TIMER + 2 ms for an answer (LATENCY_TIMER: the USB adapter's, 16 ms by
        # default). It is a module global of the SDK, so it applies to every port of that SDK in the process.
        if "latency_timer_ms" in self.spec.extra:
            self.sdk.port_handler.LATENCY_TIMER = float(self.spec.extra["latency_timer_ms"])
        self.port = self.sdk.PortHandler(self.port_name)
        try:
            opened = self.port.openPort() and self.port.setBaudRate(self.spec.baudrate)
        except Exception as e:  # pyserial raises SerialException for a missing device
            raise RobotError(f"cannot open {self.port_name}: {e}") from None
        if not opened:
            raise RobotError(f"cannot open {self.port_name} at {self.spec.baudrate} baud")
        with self._lock:
            for i in self.ids:
                for _ in range(CONNECT_TRIES):  # one lost answer on a noisy bus is not an unplugged servo
                    self.port.ser.reset_input_buffer()  # a late answer to the last try would pass for this one
                    try:
                        model, result, _error = self.ph.ping(self.port, i)
                    except IndexError:  # the SDK indexes a short (late, mismatched) answer without checking
                        model, result = 0, self.sdk.COMM_RX_CORRUPT
                        self.port.is_using = False
                    if result == self.sdk.COMM_SUCCESS:
                        break
                if result != self.sdk.COMM_SUCCESS:
                    raise RobotError(f"servo {i} does not answer on {self.port_name} (unplugged or wrong id?)")
                if model != self.table.model_number:
                    log.warning("servo %d reports model %d, arm file says %s", i, model, self.spec.model)
            for i in self.ids:
                self._write1(i, self.table.torque_enable, 1 if self.torque else 0)
        self.stopped = False

    def read_state(self) -> RobotState:
        addr, size = self.table.present_position
        with self._lock:
            raw = self._sync_read(addr, size)
        ticks = [int.from_bytes(raw[i], "little", signed=self.table.signed_position) for i in self.ids]
        return RobotState(self.to_radians(np.array(ticks)))

    def send_action(self, joints: np.ndarray) -> None:
        if self.stopped:
            raise RobotError("the arm is stopped; reconnect to move it again")
        ticks = self.to_ticks(joints)
        addr, size = self.table.goal_position
        with self._lock:
            self._sync_write(addr, size, dict(zip(self.ids, ticks.tolist(), strict=True)))

    def stop(self) -> None:
        """Refuse further commands and freeze at the present position (torque stays on: the arm does not drop)."""
        self.stopped = True
        if not self._lock.acquire(timeout=LOCK_TIMEOUT_S):
            log.error("stop: bus busy; no further commands will be sent")
            return
        try:
            addr, size = self.table.present_position
            raw = self._sync_read(addr, size)
            goal_addr, goal_size = self.table.goal_position
            values = {i: int.from_bytes(raw[i], "little", signed=self.table.signed_position) for i in self.ids}
            self._sync_write(goal_addr, goal_size, values)
        except RobotError as e:  # the servos keep their last goal anyway
            log.error("stop: could not freeze at the present position (%s)", e)
        finally:
            self._lock.release()

    def disconnect(self) -> None:
        if self.port is None:
            return
        if self.spec.extra.get("torque_off_on_disconnect", True):
            with self._lock:
                for i in self.ids:
                    try:
                        self._write1(i, self.table.torque_enable, 0)
                    except RobotError as e:
                        log.warning("torque off failed: %s", e)
        self.port.closePort()
        self.port = None
