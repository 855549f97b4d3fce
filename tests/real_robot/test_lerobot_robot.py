"""LeRobot's robots as a backend: lerobot's SO-101 follower (its own FeetechMotorsBus and calibration file)
on our pty Feetech emulator, under our safety layer and deploy loop; units between data and arms; LeRobot
calibration files accepted by `vla robot`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from vla.cli import app
from vla.datasets.spec import DimSpec, StoreSpec
from vla.errors import VlaError
from vla.real_robot.arm import load_arm
from vla.real_robot.clock import FakeClock
from vla.real_robot.control_tables import table_for
from vla.real_robot.deploy import DeployOptions, deploy, make_safety
from vla.real_robot.drivers import make_robot
from vla.real_robot.emulator import ServoBusEmulator
from vla.real_robot.loop import ControlLoop, LoopConfig
from vla.real_robot.recorder import store_spec
from vla.real_robot.server.server import PolicyServer
from vla.real_robot.units import UnitAdapter, UnitError, unit_factors
from vla.real_robot.workers import ScheduledWorker

from .helpers import RampPlanner, tiny_mode_checkpoint

JOINTS = ("shoulder_pan", "shoulder_lift", "elbow_flex", "wrist_flex", "wrist_roll", "gripper")
RANGE = (1000, 3096)  # calibrated range of every motor, in homed ticks: middle 2048


def lerobot_calibration(directory: Path, arm_id: str = "follower_1") -> Path:
    """A calibration file in LeRobot's format and place (calibration/robots/<type>/<id>.json)."""
    path = directory / "calibration" / "robots" / "so101_follower" / f"{arm_id}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    body = {n: {"id": i + 1, "drive_mode": 0, "homing_offset": 0, "range_min": RANGE[0], "range_max": RANGE[1]}
            for i, n in enumerate(JOINTS)}  # fmt: skip
    path.write_text(json.dumps(body, indent=4))
    return path


def test_lerobot_so101_follower_on_the_emulator_stays_inside_our_safety_layer(tmp_path: Path) -> None:
    spec = load_arm("lerobot:so101_follower", calibration=lerobot_calibration(tmp_path))
    assert spec.driver == "lerobot" and [j.unit for j in spec.joints] == ["deg"] * 5 + ["normalized_0_100"]
    with ServoBusEmulator(table_for(spec.model), [j.id for j in spec.joints]) as emu:
        robot = make_robot(spec, port=emu.port)
        robot.connect()  # lerobot's bus: ping, firmware check, calibration written, motors configured
        assert np.allclose(robot.read_state().joints, [0, 0, 0, 0, 0, 50], atol=0.1)
        rng = np.random.default_rng(0)

        def wild(obs: dict[str, Any]) -> np.ndarray:
            return rng.normal(0, 300.0, (4, 6))  # hundreds of degrees: far outside every limit

        clock = FakeClock()
        worker = ScheduledWorker(wild, clock, lambda tick: 0.02)
        loop = ControlLoop(robot, worker, make_safety(spec, robot), clock, LoopConfig(fps=30.0, max_ticks=40))
        report = loop.run(False)
        robot.disconnect()
    assert report.ended == "finished" and report.events["clamp_joint_limits"] > 0
    mid, span = (RANGE[0] + RANGE[1]) / 2, RANGE[1] - RANGE[0]
    goals: dict[int, list[int]] = {}
    for i, t in emu.goal_log:
        goals.setdefault(i, []).append(t)
    for j in spec.joints:  # what reached the servos, back in LeRobot's units
        ticks = np.array(goals[j.id], np.float64)
        value = (ticks - RANGE[0]) / span * 100 if j.unit == "normalized_0_100" else (ticks - mid) * 360 / 4095
        start = 50.0 if j.unit == "normalized_0_100" else 0.0
        tick = 100 / span if j.unit == "normalized_0_100" else 360 / 4095
        assert np.all(value >= j.low - tick) and np.all(value <= j.high + tick), j.name
        assert np.all(np.abs(np.diff(np.r_[start, value])) <= j.max_step + 1.5 * tick), j.name


def test_vla_deploy_dry_run_with_lerobot_so101_follower(tmp_path: Path) -> None:
    """`vla deploy --robot lerobot:so101_follower --calibration F --server ws://... --dry-run`."""
    calibration = lerobot_calibration(tmp_path)
    with PolicyServer(RampPlanner(step=1.0), port=0, protocol="openpi") as server:
        args = ["deploy", "--robot", "lerobot:so101_follower", "--calibration", str(calibration), "--server",
                "ws://{}:{}".format(*server.address), "--dry-run", "--seconds", "0.5"]  # fmt: skip
        done = CliRunner().invoke(app, args)
    assert done.exit_code == 0, done.output
    assert "episode 0: finished" in done.output and server.stats["requests"] > 0
    missing = CliRunner().invoke(app, ["deploy", "--robot", "lerobot:so101_follower", "--server", "ws://x:1",
                                       "--dry-run"])  # fmt: skip
    assert isinstance(missing.exception, VlaError) and "--calibration" in str(missing.exception)


def _spec(units: list[str], robot_type: str = "so101_follower") -> StoreSpec:
    dims = tuple(DimSpec(n, "joint_pos", unit=u) for n, u in zip(JOINTS, units, strict=True))
    return StoreSpec(fps=30.0, action=dims, state=dims, cameras=(), embodiment="so101", robot_type=robot_type)


def test_units_convert_or_refuse() -> None:
    rad_arm = load_arm("so101")
    lerobot_arm = load_arm("lerobot:so101_follower")
    action, state = unit_factors(_spec(["deg"] * 6), rad_arm)
    assert np.allclose(action, np.pi / 180) and np.allclose(state, np.pi / 180)
    action, _ = unit_factors(_spec(["deg"] * 5 + ["normalized_0_100"]), lerobot_arm)
    assert np.all(action == 1.0)  # LeRobot's data on LeRobot's driver: its own units
    action, _ = unit_factors(_spec(["rad"] * 5 + ["normalized_0_100"]), lerobot_arm)
    assert np.allclose(action[:5], 180 / np.pi) and action[5] == 1.0
    with pytest.raises(UnitError, match="normalized_-100_100, the arm in rad"):
        unit_factors(_spec(["normalized_-100_100"] * 5 + ["normalized_0_100"]), rad_arm)
    with pytest.raises(UnitError, match="does not say its unit"):
        unit_factors(_spec([""] * 6), rad_arm)  # LeRobot SO-101 data of unknown units never reaches radians
    assert np.all(unit_factors(_spec([""] * 6, robot_type=""), rad_arm)[0] == 1.0)  # our older stores
    planner = UnitAdapter(lambda obs: np.full((2, 6), 90.0) + obs["observation.state"], np.full(6, np.pi / 180),
                          np.full(6, np.pi / 180))  # fmt: skip
    out = planner({"observation.state": np.full(6, np.pi / 2)})  # 90 degrees in, 180 degrees out
    assert np.allclose(out, np.pi)
    recorded = store_spec(lerobot_arm, 30.0, {})  # what `vla deploy --record` writes: the arm's units
    assert [d.unit for d in recorded.action] == ["deg"] * 5 + ["normalized_0_100"]
    assert np.all(unit_factors(recorded, lerobot_arm)[0] == 1.0)


def test_deploy_refuses_lerobot_units_on_a_radians_arm_before_it_moves(tmp_path: Path) -> None:
    ckpt = tiny_mode_checkpoint(tmp_path / "ckpt")
    (ckpt / "data_spec.json").write_text(
        json.dumps(_spec(["normalized_-100_100"] * 5 + ["normalized_0_100"]).to_json())
    )
    with pytest.raises(VlaError, match=r"cannot drive arm so101.*lerobot:TYPE"):
        deploy(DeployOptions(robot="so101", policy=str(ckpt), dry_run=True, seconds=0.2))


def test_vla_robot_accepts_a_lerobot_calibration_file(tmp_path: Path) -> None:
    calibration = lerobot_calibration(tmp_path)
    spec = load_arm(calibration)
    assert spec.driver == "feetech" and spec.name == "so101" and spec.joint_names == JOINTS
    half = (RANGE[1] - RANGE[0]) / 2 * 0.9 * 2 * np.pi / 4096
    assert all(j.offset == 2048 and j.unit == "rad" and abs(j.high - half) < 1e-3 for j in spec.joints)
    with ServoBusEmulator(table_for(spec.model), [j.id for j in spec.joints]) as emu:
        out = tmp_path / "so101.yaml"
        done = CliRunner().invoke(app, ["robot", "calibrate", "--arm", str(calibration), "--out", str(out),
                                        "--port", emu.port, "--sweep-s", "0.1"], input="\n\n")  # fmt: skip
    assert done.exit_code == 0, done.output
    assert load_arm(out).joint_names == JOINTS


def test_connect_tries_again_when_the_motor_check_misses_a_servo() -> None:
    from vla.real_robot.drivers.lerobot_robot import CONNECT_TRIES, _connect_with_retries

    class Flaky:
        def __init__(self, failures: int):
            self.failures, self.calls = failures, 0

        def connect(self, calibrate: bool) -> None:
            self.calls += 1
            if self.calls <= self.failures:
                raise RuntimeError("FeetechMotorsBus motor check failed: missing motor IDs 1, 2")

    once = Flaky(1)
    _connect_with_retries(once)
    assert once.calls == 2
    never = Flaky(CONNECT_TRIES)
    with pytest.raises(RuntimeError, match="motor check"):
        _connect_with_retries(never)
    assert never.calls == CONNECT_TRIES


def test_connect_tries_again_after_a_truncated_reply() -> None:
    """The Feetech SDK raises IndexError on a short reply to a ping (a busy host or noisy bus)."""
    from vla.real_robot.drivers.lerobot_robot import _connect_with_retries

    calls = []

    class Truncated:
        def connect(self, calibrate: bool) -> None:
            calls.append(calibrate)
            if len(calls) == 1:
                raise IndexError("list index out of range")

    _connect_with_retries(Truncated())
    assert calls == [False, False]
