"""Relative rotations between (x, y, z, w) quaternions (PyBullet's and robosuite's order), via scipy.

scipy's `Rotation` takes quaternions scalar-last by default, as both simulators give them; the
helpers here only name the one composition the experts and the CALVIN oracle need.
"""

from __future__ import annotations

import numpy as np
from scipy.spatial.transform import Rotation


def relative_rotation(target_xyzw: np.ndarray, current_xyzw: np.ndarray) -> Rotation:
    """The world-frame rotation taking `current` onto `target` (target * current^-1)."""
    target, current = (Rotation.from_quat(np.asarray(q, float)) for q in (target_xyzw, current_xyzw))
    return target * current.inv()
