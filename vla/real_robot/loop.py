"""The fixed-rate control loop: read -> observe -> (worker plans in the background) -> merge -> safety -> send.

The loop never waits for inference. Each tick it reads the arm and cameras, hands the newest observation
to the worker when the worker is idle, merges any finished chunk (dropping steps already in the past),
takes the action planned for this tick, passes it through the safety layer and sends it. No action in
time means hold. Faults are counted; a servo fault, repeated bus failures or a watchdog trip stop the arm.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from vla.keys import STATE_KEY, TASK_KEY
from vla.real_robot.cameras import Camera
from vla.real_robot.chunks import ChunkBuffer
from vla.real_robot.clock import Clock
from vla.real_robot.robot import CommError, Robot, RobotError, ServoFault
from vla.real_robot.safety import SafetyLayer
from vla.real_robot.watchdog import Watchdog
from vla.real_robot.workers import Observation, Worker

log = logging.getLogger("vla.real_robot.loop")


@dataclass(frozen=True)
class LoopConfig:
    fps: float
    merge: str = "replace"
    ensemble_k: float = 0.1
    max_ticks: int | None = None  # ticks per episode; None: until stopped
    max_comm_failures: int = 5  # consecutive failed reads before the arm is stopped
    watchdog_s: float | None = None  # stall timeout; default 3 periods
    task: str = ""
    fresh_tolerance: float = 0.5  # a tick counts as served fresh if sent within this share of a period


@dataclass
class LoopReport:
    ticks: int = 0
    fresh_ticks: int = 0
    lateness_s: list[float] = field(default_factory=list)  # send time - deadline, per tick
    events: Counter[str] = field(default_factory=Counter)  # loop and safety interventions by kind
    ended: str = "running"  # finished | stopped_fault | stopped_watchdog | interrupted | stopped

    @property
    def fresh_ratio(self) -> float:
        return self.fresh_ticks / self.ticks if self.ticks else 0.0

    def jitter_ms(self) -> tuple[float, float]:
        if not self.lateness_s:
            return 0.0, 0.0
        lat = np.abs(np.asarray(self.lateness_s)) * 1e3
        return float(np.percentile(lat, 50)), float(np.percentile(lat, 99))


TickHook = Callable[[int, Observation | None, np.ndarray | None], None]


class ControlLoop:
    def __init__(
        self,
        robot: Robot,
        worker: Worker,
        safety: SafetyLayer,
        clock: Clock,
        config: LoopConfig,
        cameras: Sequence[Camera] = (),
        on_tick: TickHook | None = None,
    ):
        self.robot, self.worker, self.safety, self.clock, self.config = robot, worker, safety, clock, config
        self.cameras = list(cameras)
        self.on_tick = on_tick
        self.buffer = ChunkBuffer(config.merge, config.ensemble_k)
        self.period = 1.0 / config.fps
        self.report = LoopReport()
        self.watchdog = Watchdog(clock, config.watchdog_s or 3 * self.period, self._stall_stop)
        self.stop_request = threading.Event()
        self._comm_failures = 0
        self._last_state: np.ndarray | None = None

    # --- one tick -------------------------------------------------------------------------------
    def _event(self, kind: str, detail: str = "") -> None:
        self.report.events[kind] += 1
        log.warning("loop: %s %s", kind, detail)

    def _observe(self) -> Observation | None:
        try:
            state = self.robot.read_state()
        except CommError as e:
            self._comm_failures += 1
            self._event("comm_read_failure", str(e))
            return None
        self._comm_failures = 0
        self._last_state = state.joints
        obs: Observation = {STATE_KEY: state.joints.astype(np.float32), TASK_KEY: self.config.task}
        for cam in self.cameras:
            frame = cam.read()
            if frame is None:
                self._event("camera_no_frame", cam.name)
                return None  # a policy fed a missing image is worse than a held arm
            obs[cam.key] = frame
        return obs

    def step(self, tick: int, deadline: float) -> None:
        obs = self._observe()  # ServoFault propagates: the run loop stops the arm
        if self._comm_failures > self.config.max_comm_failures:
            raise RobotError(f"{self._comm_failures} consecutive failed reads")
        # An in-tick (synchronous) worker blocks the loop, so it plans only when the plan runs out, like
        # `Policy.select_action`; a background worker always gets the newest observation when idle.
        in_tick = getattr(self.worker, "plans_in_tick", False)
        if obs is not None and not self.worker.busy() and not (in_tick and self.buffer.horizon(tick) > 0):
            self.worker.submit(tick, obs)
        for chunk in self.worker.poll():
            before = self.buffer.dropped_steps
            self.buffer.add(chunk, tick)
            if self.buffer.dropped_steps > before:
                self.report.events["stale_steps_dropped"] += self.buffer.dropped_steps - before
        action = self.buffer.action_for(tick)
        cmd = self.safety.filter(action, self._last_state)
        sent = False
        if cmd is not None:
            try:
                self.robot.send_action(cmd)
                sent = True
            except CommError as e:
                self._event("comm_write_failure", str(e))
        lateness = self.clock.now() - deadline
        self.report.ticks += 1
        self.report.lateness_s.append(lateness)
        if sent and action is not None and lateness <= self.config.fresh_tolerance * self.period:
            self.report.fresh_ticks += 1
        if self.on_tick is not None:
            self.on_tick(tick, obs, cmd if sent else None)

    # --- the run ---------------------------------------------------------------------------------
    def _stall_stop(self) -> None:
        self.report.events["watchdog_stop"] += 1
        self.robot.stop()

    def run(self, start_watchdog_thread: bool = True) -> LoopReport:
        """Run until max_ticks, a stop request, a fault or Ctrl-C; the arm ends held or stopped."""
        self.safety.reset()
        start = self.clock.now()
        self.watchdog.kick()
        if start_watchdog_thread:
            self.watchdog.start()
        tick = 0
        try:
            while not self.stop_request.is_set():
                if self.config.max_ticks is not None and tick >= self.config.max_ticks:
                    self.report.ended = "finished"
                    break
                deadline = start + tick * self.period
                self.clock.sleep_until(deadline)
                if self.watchdog.check():
                    self.report.ended = "stopped_watchdog"
                    break
                self.watchdog.kick()
                self.step(tick, deadline)
                tick += 1
            else:
                self.report.ended = "stopped"
        except ServoFault as e:
            self._event("servo_fault", str(e))
            self.report.ended = "stopped_fault"
            self._safe_stop()
        except RobotError as e:
            self._event("robot_error", str(e))
            self.report.ended = "stopped_fault"
            self._safe_stop()
        except KeyboardInterrupt:
            self.report.ended = "interrupted"
            self._safe_stop()
        finally:
            self.watchdog.close()
        self.report.events.update(self.safety.interventions)
        if self.worker.errors:
            self.report.events["inference_error"] += self.worker.errors
        return self.report

    def _safe_stop(self) -> None:
        try:
            self.robot.stop()
        except RobotError as e:
            log.error("stopping the arm failed: %s", e)
