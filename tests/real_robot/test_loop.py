"""The control loop on a fake clock (exact): deadlines, dropping, merging, holding, watchdog, Ctrl-C, and a
fault storm against the emulated arm through the real SDKs."""

from __future__ import annotations

from typing import Any

import numpy as np

from vla.real_robot.arm import ArmSpec
from vla.real_robot.clock import FakeClock
from vla.real_robot.control_tables import table_for
from vla.real_robot.drivers.servo_bus import ServoBusArm
from vla.real_robot.emulator import ServoBusEmulator
from vla.real_robot.loop import ControlLoop, LoopConfig
from vla.real_robot.robot import Robot, RobotState
from vla.real_robot.safety import SafetyLayer
from vla.real_robot.workers import ScheduledWorker, SyncWorker, ThreadedWorker

from .helpers import RampPlanner, servo_arm


class SimArm(Robot):
    """An in-memory arm: reaches every command at once. Records what it was sent."""

    def __init__(self, spec: ArmSpec, hook: Any = None):
        super().__init__(spec)
        self.q = np.zeros(spec.dof)
        self.sent: list[np.ndarray] = []
        self.stopped = False
        self.hook = hook

    def connect(self) -> None: ...
    def disconnect(self) -> None: ...

    def read_state(self) -> RobotState:
        if self.hook is not None:
            self.hook(len(self.sent))
        return RobotState(self.q.copy())

    def send_action(self, joints: np.ndarray) -> None:
        assert not self.stopped
        self.sent.append(np.array(joints))
        self.q = np.array(joints)

    def stop(self) -> None:
        self.stopped = True


def _loop(robot: Robot, worker: Any, clock: FakeClock, spec: ArmSpec, **cfg: Any) -> ControlLoop:
    safety = SafetyLayer(spec.low, spec.high, spec.max_step)
    return ControlLoop(robot, worker, safety, clock, LoopConfig(fps=30.0, **cfg))


def test_deadlines_are_exact_and_fresh_actions_flow() -> None:
    spec, clock = servo_arm("feetech"), FakeClock()
    arm = SimArm(spec)
    planner = RampPlanner(step=0.01)
    report = _loop(arm, ScheduledWorker(planner, clock, 0.0), clock, spec, max_ticks=30).run(False)
    assert report.ended == "finished" and report.ticks == 30
    assert max(abs(x) for x in report.lateness_s) < 1e-9 and report.jitter_ms() == (0.0, 0.0)
    assert report.fresh_ticks == 30
    assert np.allclose(arm.sent[0], 0.01)


def test_latency_drops_stale_steps_and_holds_until_the_first_chunk() -> None:
    spec, clock = servo_arm("feetech"), FakeClock()
    arm = SimArm(spec)
    # Inference takes 0.1 s = 3 ticks: the first chunk (for tick 0) arrives at tick 3, its steps 0-2 dropped.
    loop = _loop(arm, ScheduledWorker(RampPlanner(horizon=8), clock, 0.1), clock, spec, max_ticks=12)
    report = loop.run(False)
    assert report.events["hold_no_action"] == 3
    assert report.events["stale_steps_dropped"] >= 3
    assert report.fresh_ticks == 12 - 3
    assert np.allclose(arm.sent[3], 0.04)  # step 3 of the chunk planned at tick 0 (0.01 * 4)


def test_merge_modes_differ_and_both_stay_safe() -> None:
    results = {}
    for mode in ("replace", "ensemble"):
        spec, clock = servo_arm("feetech"), FakeClock()
        arm = SimArm(spec)

        # Each plan disagrees with the last (alternating targets), so the merge rule shows in what is sent.
        sign = [1.0]

        def planner(obs: dict, sign: list[float] = sign) -> np.ndarray:
            sign[0] = -sign[0]
            return np.full((10, 6), 0.1 * sign[0])

        loop = _loop(arm, ScheduledWorker(planner, clock, 2 / 30), clock, spec, max_ticks=20, merge=mode)
        loop.run(False)
        results[mode] = np.stack(arm.sent)
    assert not np.allclose(results["replace"], results["ensemble"])
    for sent in results.values():
        assert np.all(np.abs(np.diff(sent, axis=0)) <= spec.max_step + 1e-9)


def test_watchdog_stops_a_stalled_loop() -> None:
    spec, clock = servo_arm("feetech"), FakeClock()

    def stall(n: int) -> None:
        if n == 5:
            clock.advance(1.0)  # something inside the tick blocks for a second

    arm = SimArm(spec, hook=stall)
    report = _loop(arm, ScheduledWorker(RampPlanner(), clock, 0.0), clock, spec, max_ticks=50).run(False)
    assert report.ended == "stopped_watchdog" and arm.stopped
    assert report.events["watchdog_stop"] == 1 and len(arm.sent) == 6


def test_ctrl_c_stops_cleanly() -> None:
    spec, clock = servo_arm("feetech"), FakeClock()

    def interrupt(n: int) -> None:
        if n == 4:
            raise KeyboardInterrupt

    arm = SimArm(spec, hook=interrupt)
    report = _loop(arm, SyncWorker(RampPlanner()), clock, spec, max_ticks=50).run(False)
    assert report.ended == "interrupted" and arm.stopped


def test_threaded_worker_runs_beside_the_loop() -> None:
    worker = ThreadedWorker(RampPlanner())
    worker.submit(0, {"observation.state": np.zeros(6)})
    for _ in range(200):
        chunks = worker.poll()
        if chunks:
            break
        import time

        time.sleep(0.005)
    worker.close()
    assert chunks and chunks[0].tick == 0 and chunks[0].actions.shape == (8, 6)


def test_fault_storm_never_sends_an_unsafe_command(driver: str) -> None:
    """Timeouts, corrupted packets, NaN and wrong-length actions, stalled inference: every goal that reaches
    the servos is inside the limits and within one max_step of the previous; the arm ends held or stopped."""
    spec = servo_arm(driver)
    with ServoBusEmulator(table_for(spec.model), [j.id for j in spec.joints]) as emu:
        robot = ServoBusArm(spec, port=emu.port)
        robot.connect()
        emu.faults.drop_prob = emu.faults.corrupt_prob = 0.05
        clock = FakeClock()
        rng = np.random.default_rng(0)

        def evil(obs: dict[str, Any]) -> np.ndarray:
            r = rng.random()
            if r < 0.15:
                return np.full((5, 6), np.nan)
            if r < 0.25:
                return np.zeros((5, 4))  # wrong length
            if r < 0.3:
                raise RuntimeError("policy crashed")
            return rng.normal(0, 3.0, (5, 6))  # wild: far outside the limits

        latency = lambda tick: 0.5 if tick % 40 == 7 else 0.02  # noqa: E731  (stalls now and then)
        loop = _loop(robot, ScheduledWorker(evil, clock, latency), clock, spec, max_ticks=150, max_comm_failures=8)
        report = loop.run(False)
        robot.disconnect()
    assert report.ended in ("finished", "stopped_fault")
    ev = report.events
    assert ev["comm_read_failure"] > 0 and ev["reject_non_finite"] > 0 and ev["reject_wrong_length"] > 0
    assert ev["clamp_joint_limits"] > 0 and ev["hold_no_action"] > 0 and ev["inference_error"] > 0
    scale = 2 * np.pi / spec.ticks_per_rev
    offsets = np.array([j.offset for j in spec.joints])
    goals: dict[int, list[int]] = {}
    for i, t in emu.goal_log:
        goals.setdefault(i, []).append(t)
    for k, j in enumerate(spec.joints):
        rad = (np.array(goals[j.id]) - offsets[k]) * scale
        assert np.all(rad >= j.low - scale) and np.all(rad <= j.high + scale)
        assert np.all(np.abs(np.diff(np.r_[0.0, rad])) <= j.max_step + 1.5 * scale)
    # It ends held: the last goal is where the servo is (or stopped, frozen at its present position).
    assert all(abs(emu.position(j.id) - goals[j.id][-1]) <= 1 for j in spec.joints)


def test_overloaded_servo_stops_the_loop(driver: str) -> None:
    spec = servo_arm(driver)
    with ServoBusEmulator(table_for(spec.model), [j.id for j in spec.joints]) as emu:
        robot = ServoBusArm(spec, port=emu.port)
        robot.connect()
        clock = FakeClock()

        def overload_at_10(tick: int) -> float:
            if tick == 10:
                emu.faults.overload_ids = {3}
            return 0.0

        loop = _loop(robot, ScheduledWorker(RampPlanner(), clock, overload_at_10), clock, spec, max_ticks=40)
        report = loop.run(False)
        assert report.ended == "stopped_fault" and report.events["servo_fault"] == 1 and robot.stopped
        emu.faults.overload_ids = set()
        robot.disconnect()
