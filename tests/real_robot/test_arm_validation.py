"""Arm files cannot switch safety off: every limit and step is finite, ordered and inside the hardware's range;
a non-finite measured position is a fault the safety layer holds on; `deploy --server` checks the served
policy's sizes against the arm before it moves."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from vla.errors import VlaError
from vla.real_robot.arm import ArmFileError, load_arm
from vla.real_robot.clock import FakeClock
from vla.real_robot.control_tables import table_for
from vla.real_robot.deploy import DeployOptions, deploy
from vla.real_robot.drivers.servo_bus import ServoBusArm
from vla.real_robot.emulator import ServoBusEmulator
from vla.real_robot.loop import ControlLoop, LoopConfig
from vla.real_robot.robot import RobotState
from vla.real_robot.safety import SafetyLayer
from vla.real_robot.server.server import PolicyServer
from vla.real_robot.workers import ScheduledWorker

from .helpers import RampPlanner, servo_arm


def _arm_file(tmp_path: Path, name: str, joint: int, **changes: Any) -> Path:
    d = load_arm(name).to_dict()
    for key, value in changes.items():
        if key in d:
            d[key] = value
        else:
            d["joints"][joint][key] = value
    path = tmp_path / f"{name}-bad.yaml"
    path.write_text(yaml.safe_dump(d, sort_keys=False))
    return path


@pytest.mark.parametrize(
    ("arm", "changes", "says"),
    [
        ("so101", {"max_step": float("nan")}, "'shoulder_lift' max_step: must be a finite number, got nan"),
        ("so101", {"max_step": float("inf")}, "'shoulder_lift' max_step: must be a finite number, got inf"),
        ("so101", {"max_step": 0.0}, "'shoulder_lift' max_step: must be above 0"),
        ("so101", {"low": float("-inf")}, "'shoulder_lift' low: must be a finite number, got -inf"),
        ("so101", {"high": float("inf")}, "'shoulder_lift' high: must be a finite number, got inf"),
        ("so101", {"high": float("nan")}, "'shoulder_lift' high: must be a finite number, got nan"),
        ("so101", {"low": "-1.0"}, "'shoulder_lift' low: must be a finite number, got '-1.0'"),
        ("so101", {"low": 1.0, "high": 0.5}, "'shoulder_lift' low (1.0) must be below high (0.5)"),
        ("so101", {"high": 3.2}, "'shoulder_lift' high: 3.2 rad is tick 4134, outside the sts3215's range [0, 4095]"),
        ("koch", {"low": -3.2}, "'shoulder_lift' low: -3.2 rad is tick -38, outside the xl330's range [0, 4095]"),
        ("so101", {"offset": 100}, "'shoulder_lift' low: -1.75 rad is tick -1041, outside"),
        ("so101", {"offset": 2048.5}, "'shoulder_lift' offset: must be an integer"),
        ("fr3", {"high": 1.9}, "'joint2' high: 1.9 is outside the fr3's range [-1.7837, 1.7837]"),
        ("so101", {"rate_hz": float("nan")}, "rate_hz: must be a finite number above 0, got nan"),
        ("fr3", {"workspace": [[0.2, -0.5, 0.05], [float("inf"), 0.5, 0.9]]}, "workspace: must be"),
        ("fr3", {"workspace": [[0.2, -0.5, 0.05], [0.1, 0.5, 0.9]]}, "workspace: each minimum must be below"),
    ],
)
def test_arm_files_that_would_weaken_safety_are_refused(tmp_path: Path, arm: str, changes: dict, says: str) -> None:
    path = _arm_file(tmp_path, arm, 1, **changes)
    with pytest.raises(ArmFileError) as info:
        load_arm(path)
    message = str(info.value)
    assert message.startswith(f"{path}: ") and says in message and "\n" not in message, message


def test_calibrated_and_builtin_arms_still_load(tmp_path: Path) -> None:
    for name in ("so101", "koch", "fr3"):
        spec = load_arm(name)
        assert load_arm(_arm_file(tmp_path, name, 0)) == spec


def test_safety_layer_refuses_limits_that_switch_a_rule_off() -> None:
    ones = np.ones(2)
    for low, high, step in [(-ones, ones, np.array([np.nan, 0.1])), (-ones, np.array([1, np.inf]), 0.1 * ones),
                            (-ones, ones, np.array([0.1, np.inf])), (ones, -ones, 0.1 * ones)]:  # fmt: skip
        with pytest.raises(ValueError):
            SafetyLayer(low, high, step)


def test_a_non_finite_measurement_is_a_fault_that_holds() -> None:
    s = SafetyLayer(-np.ones(2), np.ones(2), np.full(2, 0.1))
    assert s.filter(None, np.array([np.nan, 0.0])) is None  # first tick: nothing trusted, nothing sent
    assert s.filter(np.array([0.05, 0.0]), np.array([0.0, np.inf])) is None  # a step needs a trusted reference
    assert np.allclose(s.filter(np.array([0.05, 0.0]), np.zeros(2)), [0.05, 0.0])
    assert np.allclose(s.filter(np.array([0.5, 0.0]), np.array([np.nan, 0.0])), [0.15, 0.0])  # from the last command
    assert np.allclose(s.filter(None, np.array([np.nan, np.nan])), [0.15, 0.0])  # hold
    assert s.filter(None, np.zeros(3)) is not None and s.interventions["fault_bad_measurement"] == 5


class NanFirstReads(ServoBusArm):
    """The real driver on the emulated bus, whose first readings come back NaN (a faulty sensor or decoder)."""

    bad_reads = 3

    def read_state(self) -> RobotState:
        state = super().read_state()
        if self.bad_reads > 0:
            self.bad_reads -= 1
            return RobotState(np.full_like(state.joints, np.nan))
        return state


def test_nan_measurements_never_reach_the_bus() -> None:
    spec = servo_arm("feetech")
    table = table_for(spec.model)
    with ServoBusEmulator(table, [j.id for j in spec.joints]) as emu:
        arm = NanFirstReads(spec, port=emu.port)
        arm.connect()
        try:
            clock = FakeClock()
            safety = SafetyLayer(spec.low, spec.high, spec.max_step)
            loop = ControlLoop(arm, ScheduledWorker(RampPlanner(), clock, 0.0), safety, clock,
                               LoopConfig(fps=30.0, max_ticks=8))  # fmt: skip
            report = loop.run(False)
        finally:
            arm.disconnect()
        goals = emu.goal_log
    assert report.events["fault_bad_measurement"] == 3
    assert goals, "the loop sent nothing once the readings were sound"
    start = {j.id: j.offset for j in spec.joints}
    for servo, ticks in goals:  # every goal within one rate-limited step of the start pose (tick 0 was the bug)
        assert abs(ticks - start[servo]) < 200, (servo, ticks)


def test_deploy_server_refuses_a_policy_of_another_size_before_the_arm_moves(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_arm(*a: object, **k: object) -> None:
        raise AssertionError("the arm was touched")

    monkeypatch.setattr("vla.real_robot.deploy.make_robot", no_arm)
    with PolicyServer(RampPlanner(dof=5), port=0) as server:
        opts = DeployOptions(robot="so101", server="{}:{}".format(*server.address), dry_run=True, seconds=0.2)
        with pytest.raises(VlaError, match=r"served at .* acts in 5 dims with state 5; arm so101 has 6 joints"):
            deploy(opts)


def test_deploy_server_errors_are_one_line_before_the_arm_moves(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("vla.real_robot.deploy.make_robot", lambda *a, **k: pytest.fail("the arm was touched"))
    token = "correct-horse-battery-staple"
    with PolicyServer(RampPlanner(), port=0, token=token) as server:
        address = "{}:{}".format(*server.address)
        for opts, says in [
            (DeployOptions(robot="so101", server=address, token="wrong", dry_run=True), "missing or wrong token"),
            (DeployOptions(robot="so101", server="127.0.0.1:x", dry_run=True), "takes HOST:PORT"),
        ]:
            with pytest.raises(VlaError, match=says) as info:
                deploy(opts)
            assert str(info.value).startswith(f"policy server {opts.server}: ") and "\n" not in str(info.value)
