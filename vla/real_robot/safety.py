"""The safety layer between policy and driver: whatever comes in, what goes out is inside the limits.

Rules, in order: distrust a non-finite or wrong-length measured position (a sensor fault); reject non-finite
or wrong-length actions; clamp to joint limits; limit the change per tick from the last command or the
measured position (with neither known, nothing is sent: a step cannot be limited without a reference); keep
the end effector in the workspace box (arms with kinematics); hold when there is no action.
A rejected or missing action becomes "hold": the last command sent (already checked), or the current
position on the first tick. Every intervention is counted by kind and logged.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable

import numpy as np

log = logging.getLogger("vla.real_robot.safety")

Kinematics = Callable[[np.ndarray], np.ndarray | None]


class SafetyLayer:
    def __init__(
        self,
        low: np.ndarray,
        high: np.ndarray,
        max_step: np.ndarray,
        workspace: tuple[np.ndarray, np.ndarray] | None = None,
        forward_kinematics: Kinematics | None = None,
    ):
        self.low = np.asarray(low, dtype=np.float64)
        self.high = np.asarray(high, dtype=np.float64)
        self.max_step = np.broadcast_to(np.asarray(max_step, dtype=np.float64), self.low.shape).copy()
        # The arm file is checked at load; this guards every other way in: NaN or inf would turn a rule off.
        if not (np.all(np.isfinite(self.low)) and np.all(np.isfinite(self.high)) and np.all(self.low < self.high)):
            raise ValueError(f"joint limits must be finite with low < high, got {self.low}, {self.high}")
        if not (np.all(np.isfinite(self.max_step)) and np.all(self.max_step > 0)):
            raise ValueError(f"max_step must be finite and above 0, got {self.max_step}")
        self.workspace = None if workspace is None else (np.asarray(workspace[0]), np.asarray(workspace[1]))
        self.fk = forward_kinematics if workspace is not None else None
        self.interventions: Counter[str] = Counter()
        self.last_command: np.ndarray | None = None

    @property
    def dof(self) -> int:
        return len(self.low)

    def _count(self, kind: str, detail: str = "") -> None:
        self.interventions[kind] += 1
        # Logged at debug for every event: a storm would flood the console; the loop prints the totals.
        log.debug("safety: %s %s", kind, detail)

    def reset(self) -> None:
        self.last_command = None

    def hold_target(self, current: np.ndarray | None) -> np.ndarray | None:
        if self.last_command is not None:
            return self.last_command
        if current is None:
            return None
        return np.clip(np.asarray(current, dtype=np.float64), self.low, self.high)

    def filter(self, action: np.ndarray | None, current: np.ndarray | None) -> np.ndarray | None:
        """The command to send for this tick, or None when nothing safe is known yet (send nothing)."""
        current = self._measured(current)
        target = self._checked(action)
        if target is None:
            if action is None:
                self._count("hold_no_action")
            cmd = self.hold_target(current)
            self.last_command = cmd
            return cmd
        clamped = np.clip(target, self.low, self.high)
        if not np.array_equal(clamped, target):
            self._count("clamp_joint_limits", f"{target} -> {clamped}")
        ref = self.hold_target(current)
        if ref is None:
            self._count("hold_no_reference")
            return None
        delta = np.clip(clamped - ref, -self.max_step, self.max_step)
        cmd = np.clip(ref + delta, self.low, self.high)
        if not np.allclose(cmd, clamped):
            self._count("rate_limit")
        if self.fk is not None and self.workspace is not None:
            eef = self.fk(cmd)
            if eef is not None and not (np.all(eef >= self.workspace[0]) and np.all(eef <= self.workspace[1])):
                self._count("workspace", f"eef {eef}")
                cmd = self.hold_target(current)
        self.last_command = cmd
        return cmd

    def _measured(self, current: np.ndarray | None) -> np.ndarray | None:
        """A measured position the rules can trust, or None: a NaN or wrong-sized reading is a sensor fault,
        and would pass through the clamp and the rate limit (hold the last command or send nothing)."""
        if current is None:
            return None
        q = np.asarray(current)
        if q.shape != (self.dof,) or not np.issubdtype(q.dtype, np.number) or not np.all(np.isfinite(q)):
            self._count("fault_bad_measurement", f"measured {q}")
            return None
        return q.astype(np.float64)

    def _checked(self, action: np.ndarray | None) -> np.ndarray | None:
        if action is None:
            return None
        a = np.asarray(action)
        if a.shape != (self.dof,):
            self._count("reject_wrong_length", f"shape {a.shape}, expected ({self.dof},)")
            return None
        if not np.issubdtype(a.dtype, np.number):
            self._count("reject_wrong_dtype", str(a.dtype))
            return None
        a = a.astype(np.float64)
        if not np.all(np.isfinite(a)):
            self._count("reject_non_finite")
            return None
        return a
