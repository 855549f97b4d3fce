"""The emulated servo bus: a pty whose far end answers like a chain of servos."""

from __future__ import annotations

import contextlib
import os
import pty
import random
import select
import threading
import time
import tty
from dataclasses import dataclass, field

from vla.real_robot.control_tables import ControlTable
from vla.real_robot.emulator.wire import (
    BROADCAST,
    PING,
    READ,
    SYNC_READ,
    SYNC_WRITE,
    WRITE,
    DynamixelWire,
    FeetechWire,
    Packet,
)

REGISTERS = 1024
OVERLOAD_HW_BIT = 0x20  # Dynamixel Hardware Error Status: overload


@dataclass
class Faults:
    """What goes wrong, set from the test while the bus runs. Counted faults are used up one answer each."""

    drop_next: int = 0  # the next n answers are never sent (a timeout on the host)
    corrupt_next: int = 0  # the next n answers carry a wrong checksum
    missing_ids: set[int] = field(default_factory=set)  # unplugged servos: never answer
    overload_ids: set[int] = field(default_factory=set)  # servos reporting overload in every status
    drop_prob: float = 0.0  # random faults for storms (seeded)
    corrupt_prob: float = 0.0
    seed: int = 0


class ServoBusEmulator:
    """Servos `ids` of one model on a pty. `port` is the device path to give the SDK.

    Goal-position writes move the present position at `speed_ticks_s` (None: at once) while torque is on;
    `goal_log` keeps every goal written (id, ticks) so tests check what really reached the bus."""

    def __init__(
        self,
        table: ControlTable,
        ids: list[int] | tuple[int, ...],
        faults: Faults | None = None,
        start_ticks: int = 2048,
        speed_ticks_s: float | None = None,
    ):
        self.table = table
        self.wire = FeetechWire() if table.protocol == "feetech" else DynamixelWire()
        self.faults = faults or Faults()
        self._rng = random.Random(self.faults.seed)
        self.speed = speed_ticks_s
        self.regs: dict[int, bytearray] = {}
        self._goal: dict[int, float] = {}
        self._pos: dict[int, float] = {}
        self._t_last = time.monotonic()
        for i in ids:
            regs = bytearray(REGISTERS)
            regs[0:2] = table.model_number.to_bytes(2, "little")  # Dynamixel model number
            regs[3:5] = table.model_number.to_bytes(2, "little")  # Feetech model number
            regs[5] = i
            self.regs[i] = regs
            self._pos[i] = self._goal[i] = float(start_ticks)
            self._store_present(i)
        self.goal_log: list[tuple[int, int]] = []
        self.packets_seen = 0
        self._lock = threading.RLock()
        self._master, self._slave = pty.openpty()
        tty.setraw(self._slave)
        self.port = os.ttyname(self._slave)
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._serve, name=f"servo-emulator-{table.model}", daemon=True)

    # --- the servo model ---------------------------------------------------------------------
    def _decode(self, raw: bytes) -> int:
        return int.from_bytes(raw, "little", signed=self.table.signed_position)

    def _encode(self, value: int, size: int) -> bytes:
        if not self.table.signed_position:
            value = max(0, min(self.table.max_ticks, value))
        return int(value).to_bytes(size, "little", signed=self.table.signed_position)

    def _store_present(self, i: int) -> None:
        addr, size = self.table.present_position
        self.regs[i][addr : addr + size] = self._encode(round(self._pos[i]), size)

    def _advance(self) -> None:
        now = time.monotonic()
        dt, self._t_last = now - self._t_last, now
        for i, regs in self.regs.items():
            if not regs[self.table.torque_enable]:
                continue
            if self.speed is None:
                self._pos[i] = self._goal[i]
            else:
                step = self.speed * dt
                d = self._goal[i] - self._pos[i]
                self._pos[i] += max(-step, min(step, d))
            self._store_present(i)

    def _write(self, i: int, addr: int, data: bytes) -> None:
        regs = self.regs[i]
        goal_addr, goal_size = self.table.goal_position
        pos_addr, pos_size = self.table.present_position
        regs[addr : addr + len(data)] = data
        if addr <= goal_addr and addr + len(data) >= goal_addr + goal_size:
            ticks = self._decode(bytes(regs[goal_addr : goal_addr + goal_size]))
            self._goal[i] = float(ticks)
            self.goal_log.append((i, ticks))
        if addr <= pos_addr < addr + len(data):  # tests may poke the present position directly
            self._pos[i] = float(self._decode(bytes(regs[pos_addr : pos_addr + pos_size])))

    # --- host-side helpers for tests ---------------------------------------------------------
    def position(self, i: int) -> int:
        with self._lock:
            self._advance()
            return round(self._pos[i])

    def set_position(self, i: int, ticks: int) -> None:
        """Move a joint by hand (a person moving a leader arm or a backdriven joint)."""
        with self._lock:
            self._pos[i] = self._goal[i] = float(ticks)
            self._store_present(i)

    def torque_on(self, i: int) -> bool:
        return bool(self.regs[i][self.table.torque_enable])

    # --- answering ---------------------------------------------------------------------------
    def _error_byte(self, i: int) -> int:
        if i in self.faults.overload_ids:
            if self.table.hardware_error is not None:
                self.regs[i][self.table.hardware_error] |= OVERLOAD_HW_BIT
            return self.table.overload_error_bit
        return 0

    def _answer(self, i: int, params: bytes = b"") -> bytes:
        f = self.faults
        if i in f.missing_ids:
            return b""
        if f.drop_next > 0:
            f.drop_next -= 1
            return b""
        if f.drop_prob and self._rng.random() < f.drop_prob:
            return b""
        corrupt = False
        if f.corrupt_next > 0:
            f.corrupt_next -= 1
            corrupt = True
        elif f.corrupt_prob and self._rng.random() < f.corrupt_prob:
            corrupt = True
        return self.wire.status(i, self._error_byte(i), params, corrupt=corrupt)

    def handle(self, p: Packet) -> bytes:
        self.packets_seen += 1
        self._advance()
        wire = self.wire
        if p.inst in (SYNC_READ, SYNC_WRITE):
            addr, size, rest = wire.sync_header(p.params)
            out = b""
            if p.inst == SYNC_READ:
                for i in rest:
                    if i in self.regs:
                        out += self._answer(i, bytes(self.regs[i][addr : addr + size]))
            else:
                for k in range(0, len(rest) - size, size + 1):
                    i = rest[k]
                    if i in self.regs and i not in self.faults.missing_ids:
                        self._write(i, addr, rest[k + 1 : k + 1 + size])
            return out
        if p.id not in self.regs and p.id != BROADCAST:
            return b""
        targets = list(self.regs) if p.id == BROADCAST else [p.id]
        if p.inst == PING:
            return b"".join(self._answer(i, wire.ping_reply(self.regs[i])) for i in targets)
        if p.inst == READ:
            addr, size = wire.read_args(p.params)
            return self._answer(p.id, bytes(self.regs[p.id][addr : addr + size])) if p.id != BROADCAST else b""
        if p.inst == WRITE:
            addr, data = wire.write_args(p.params)
            for i in targets:
                if i not in self.faults.missing_ids:
                    self._write(i, addr, data)
            return self._answer(p.id) if p.id != BROADCAST else b""
        return b""  # REG_WRITE / ACTION and others: not needed by the drivers

    def _serve(self) -> None:
        buf = bytearray()
        while not self._closed.is_set():
            try:
                ready, _, _ = select.select([self._master], [], [], 0.005)
                if ready:
                    buf += os.read(self._master, 4096)
                elif buf:
                    del buf[:1]  # a silent line with a partial packet: resynchronise as servo firmware does
                else:
                    continue
            except OSError:
                return  # the pty was closed
            while buf:
                packet, used = self.wire.parse(buf)
                if used == 0:
                    break
                del buf[:used]
                if packet is not None:
                    with self._lock:
                        reply = self.handle(packet)
                    if reply:
                        os.write(self._master, reply)

    def start(self) -> ServoBusEmulator:
        self._thread.start()
        return self

    def close(self) -> None:
        self._closed.set()
        self._thread.join(timeout=1.0)
        for fd in (self._master, self._slave):
            with contextlib.suppress(OSError):
                os.close(fd)

    def __enter__(self) -> ServoBusEmulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
