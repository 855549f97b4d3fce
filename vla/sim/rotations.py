"""Small quaternion helpers shared by simulator code (x, y, z, w order, as PyBullet and robosuite use).

Written out rather than taken from scipy, which is not a dependency of the package."""

from __future__ import annotations

import numpy as np

CONJUGATE = np.array([-1.0, -1.0, -1.0, 1.0])  # q * CONJUGATE = q^-1 for a unit quaternion


def quat_mul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Hamilton product of (x, y, z, w) quaternions."""
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
