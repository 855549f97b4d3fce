"""scipy's `Rotation` behind `relative_rotation` gives the numbers the hand-written quaternion code gave."""

from __future__ import annotations

import numpy as np

from vla.datasets.libero_hdf5 import quat_to_axis_angle
from vla.sim.calvin.oracle import relative_euler_xyz
from vla.sim.experts.libero_pick_place import rotation_error


def hamilton(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The hand-written (x, y, z, w) product the simulator code used before scipy."""
    ax, ay, az, aw = a
    bx, by, bz, bw = b
    return np.array(
        [
            aw * bx + ax * bw + ay * bz - az * by,
            aw * by - ax * bz + ay * bw + az * bx,
            aw * bz + ax * by - ay * bx + az * bw,
            aw * bw - ax * bx - ay * by - az * bz,
        ]
    )


CONJUGATE = np.array([-1.0, -1.0, -1.0, 1.0])


def old_rotation_error(target, current):
    q = hamilton(target, current * CONJUGATE)
    return quat_to_axis_angle(q if q[3] >= 0 else -q)


def old_relative_euler_xyz(start, end):
    q0, q1 = start / np.linalg.norm(start), end / np.linalg.norm(end)
    x, y, z, w = hamilton(q1, q0 * CONJUGATE)
    roll = np.arctan2(2 * (w * x + y * z), 1 - 2 * (x * x + y * y))
    pitch = np.arcsin(np.clip(2 * (w * y - z * x), -1.0, 1.0))
    yaw = np.arctan2(2 * (w * z + x * y), 1 - 2 * (y * y + z * z))
    return np.degrees([roll, pitch, yaw])


def unit_quats(n: int, seed: int) -> np.ndarray:
    q = np.random.default_rng(seed).normal(size=(n, 4))
    return q / np.linalg.norm(q, axis=1, keepdims=True)


def test_rotation_error_matches_the_hand_written_product():
    a, b = unit_quats(500, 0), unit_quats(500, 1)
    for t, c in zip(a, b, strict=True):
        np.testing.assert_allclose(rotation_error(t, c), old_rotation_error(t, c), rtol=0, atol=1e-12)
        np.testing.assert_allclose(rotation_error(-t, c), old_rotation_error(t, c), rtol=0, atol=1e-12)


def test_relative_euler_matches_the_hand_written_formulas():
    a, b = unit_quats(500, 2) * 3.0, unit_quats(500, 3)  # unnormalised input: both normalise
    worst = 0.0
    for s, e in zip(a, b, strict=True):
        new, old = relative_euler_xyz(s, e), old_relative_euler_xyz(s, e)
        if abs(old[1]) < 89.0:  # away from gimbal lock, where roll and yaw are not unique
            worst = max(worst, float(np.abs(new - old).max()))
    assert worst < 1e-9
