"""Recording into a store the trainer reads, leader-arm teleoperation, calibration, and the dry run."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from vla.cli import app
from vla.datasets.store import Store
from vla.errors import VlaError
from vla.real_robot.arm import load_arm, save_arm
from vla.real_robot.calibrate import calibrate
from vla.real_robot.clock import FakeClock
from vla.real_robot.control_tables import table_for
from vla.real_robot.deploy import DeployOptions, deploy, make_safety
from vla.real_robot.drivers.servo_bus import ServoBusArm
from vla.real_robot.emulator import ServoBusEmulator
from vla.real_robot.loop import ControlLoop, LoopConfig
from vla.real_robot.recorder import EpisodeRecorder, store_spec
from vla.real_robot.teleop import LeaderPlanner
from vla.real_robot.workers import SyncWorker

from .helpers import servo_arm, tiny_mode_checkpoint

TICK = 2 * np.pi / 4096


def test_teleop_records_demonstrations(tmp_path: Path, driver: str) -> None:
    spec = servo_arm(driver)
    ids = [j.id for j in spec.joints]
    with ServoBusEmulator(table_for(spec.model), ids) as lead_bus, ServoBusEmulator(table_for(spec.model), ids) as bus:
        leader = ServoBusArm(spec, port=lead_bus.port, torque=False)
        follower = ServoBusArm(spec, port=bus.port)
        leader.connect()
        follower.connect()
        assert not lead_bus.torque_on(1) and bus.torque_on(1)
        recorder = EpisodeRecorder(tmp_path / "demos", store_spec(spec, 30.0, {}, "teleop"))
        clock = FakeClock()

        def person_moves_leader(tick: int) -> None:
            lead_bus.set_position(1, 2048 + 10 * tick)  # a person turns the base slowly

        failures = 0
        for _ in range(2):
            loop = ControlLoop(follower, SyncWorker(LeaderPlanner(leader)), make_safety(spec, follower), clock,
                               LoopConfig(fps=30.0, max_ticks=20, task="wave"),
                               on_tick=lambda t, o, c: (recorder.on_tick(t, o, c), person_moves_leader(t)))  # fmt: skip
            report = loop.run(False)
            assert report.ended == "finished"
            failures += report.events["comm_read_failure"]
            recorder.end_episode()
        recorder.writer.finalize()
        assert abs(bus.position(1) - lead_bus.position(1)) <= 10  # the follower tracks, one tick behind
        leader.disconnect()
        follower.disconnect()
    store = Store(tmp_path / "demos")
    assert store.num_episodes == 2 and store.num_frames == 40 - failures and store.tasks == ["wave"]
    action = np.asarray(store.array("action")[:])
    assert action.shape == (40 - failures, 6) and action[15, 0] > action[1, 0]


def test_calibration_writes_the_arm_file(tmp_path: Path, driver: str) -> None:
    spec = servo_arm(driver)
    with ServoBusEmulator(table_for(spec.model), [j.id for j in spec.joints], start_ticks=1000) as bus:
        prompts = []

        def prompt(msg: str) -> None:
            prompts.append(msg)
            if len(prompts) == 1:
                for j in spec.joints:
                    bus.set_position(j.id, 1500 + j.id)  # the zero pose

        def sweep(k: int) -> None:
            for j in spec.joints:
                bus.set_position(j.id, 1500 + j.id + (k - 10) * 50)  # from -500 to +450 ticks

        result = calibrate(spec, port=bus.port, prompt=prompt, sweep_s=0.4, sample_hz=50, during_sweep=sweep)
    assert len(prompts) == 2
    assert [j.offset for j in result.joints] == [1500 + j.id for j in spec.joints]
    span = (450 + 500) * TICK
    assert result.joints[0].low == round(-500 * TICK + 0.05 * span, 4)
    path = save_arm(result, tmp_path / "my_arm.yaml")
    assert load_arm(path) == result


def test_dry_run_deploy_with_a_checkpoint_and_recording(tmp_path: Path) -> None:
    ckpt = tiny_mode_checkpoint(tmp_path / "ckpt")
    opts = DeployOptions(robot="so101", policy=str(ckpt), dry_run=True, seconds=1.0, fps=15.0,
                         record=str(tmp_path / "rollouts"), task="pick", merge="ensemble")  # fmt: skip
    (report,) = deploy(opts)
    assert report.ended == "finished" and report.ticks == 15
    assert report.fresh_ticks > 0
    store = Store(tmp_path / "rollouts")
    # A tick whose read failed (the emulator shares the GIL with inference, and CI cores are shared)
    # has no observation to record; every other tick is recorded.
    assert store.num_episodes == 1 and store.num_frames == 15 - report.events["comm_read_failure"] >= 8


def test_cli_deploy_dry_run_with_a_remote_server_and_errors(tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(app, ["deploy", "--robot", "so101", "--dry-run", "--seconds", "0.2"])
    assert result.exit_code != 0 and "exactly one of" in str(result.exception)
    result = runner.invoke(app, ["robot", "calibrate", "--arm", "fr3", "--out", str(tmp_path / "x.yaml")])
    assert result.exit_code != 0 and "only servo arms" in str(result.exception)


def test_driver_layer_does_not_import_training_or_torch() -> None:
    code = (
        "import sys; import vla.real_robot.loop, vla.real_robot.safety, vla.real_robot.drivers.servo_bus, "
        "vla.real_robot.drivers.franka, vla.real_robot.server.client, vla.real_robot.recorder, "
        "vla.real_robot.emulator; bad = [m for m in sys.modules if m == 'torch' or m.startswith('vla.train') "
        "or m == 'vla.datasets.sampler']; print(bad); sys.exit(1 if bad else 0)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


def test_deploy_refuses_a_policy_whose_cameras_are_not_given(tmp_path: Path) -> None:
    ckpt = tiny_mode_checkpoint(tmp_path / "ckpt", camera_keys=("observation.images.wrist",))
    opts = DeployOptions(robot="so101", policy=str(ckpt), dry_run=True, seconds=0.2)
    with pytest.raises(VlaError, match=r"reads cameras wrist; pass each as --camera"):
        deploy(opts)
