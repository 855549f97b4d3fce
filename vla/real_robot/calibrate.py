"""`vla robot calibrate`: find each servo's zero (offset) and range, and write the arm file.

Procedure: with torque off, the user puts the arm in its zero pose (the pose drawn in the arm's docs) and
we read the ticks: these become the offsets. Then the user moves every joint through its full range while
we sample; the range, less a margin, becomes the joint limits.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable

import numpy as np

from vla.real_robot.arm import ArmSpec
from vla.real_robot.drivers.servo_bus import ServoBusArm


def read_ticks(arm: ServoBusArm) -> np.ndarray:
    addr, size = arm.table.present_position
    with arm._lock:
        raw = arm._sync_read(addr, size)
    return np.array([int.from_bytes(raw[i], "little", signed=arm.table.signed_position) for i in arm.ids])


def calibrate(
    spec: ArmSpec,
    port: str | None = None,
    prompt: Callable[[str], None] = input,
    sweep_s: float = 10.0,
    sample_hz: float = 50.0,
    margin: float = 0.05,
    during_sweep: Callable[[int], None] | None = None,
) -> ArmSpec:
    """Return the calibrated spec. `prompt` waits for the user (tests pass a function that moves the emulator)."""
    arm = ServoBusArm(spec, port=port, torque=False)
    arm.connect()
    try:
        prompt("Move the arm to its zero pose, then press Enter")
        offsets = read_ticks(arm)
        prompt(f"Move every joint through its full range for {sweep_s:.0f} s after Enter")
        lo, hi = offsets.copy(), offsets.copy()
        n = max(1, int(sweep_s * sample_hz))
        for k in range(n):
            if during_sweep is not None:
                during_sweep(k)
            t = read_ticks(arm)
            lo, hi = np.minimum(lo, t), np.maximum(hi, t)
            time.sleep(1.0 / sample_hz if during_sweep is None else 0.0)
    finally:
        arm.disconnect()
    scale = 2 * np.pi / spec.ticks_per_rev
    joints = []
    for j, off, a, b in zip(spec.joints, offsets, lo, hi, strict=True):
        low, high = sorted(((a - off) * scale * j.sign, (b - off) * scale * j.sign))
        span = high - low
        if span <= 0:  # the joint was not moved: keep the file's limits rather than a zero range
            low, high = j.low, j.high
        else:
            low, high = low + margin * span, high - margin * span
        joints.append(dataclasses.replace(j, offset=int(off), low=round(float(low), 4), high=round(float(high), 4)))
    return spec.replace(joints=tuple(joints))
