"""The Franka driver against franky-sim: the real franky client speaking libfranka's protocol on 127.0.0.1."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest

from vla.real_robot.arm import load_arm
from vla.real_robot.clock import RealClock
from vla.real_robot.deploy import make_safety
from vla.real_robot.drivers.franka import FrankaArm
from vla.real_robot.dryrun import emulated
from vla.real_robot.loop import ControlLoop, LoopConfig
from vla.real_robot.robot import RobotError
from vla.real_robot.workers import ThreadedWorker


@pytest.fixture(scope="module")
def franka() -> Iterator[FrankaArm]:
    with emulated(load_arm("fr3")) as (spec, host):
        assert host.startswith("127.")
        arm = FrankaArm(spec, host=host)
        arm.connect()
        yield arm
        arm.disconnect()


def test_state_and_kinematics(franka: FrankaArm) -> None:
    state = franka.read_state()
    assert state.joints.shape == (7,) and state.eef is not None
    assert np.allclose(franka.forward_kinematics(state.joints), state.eef, atol=1e-3)


def test_loop_moves_the_arm_inside_the_limits(franka: FrankaArm) -> None:
    spec = franka.spec
    start = franka.read_state().joints
    target = start + np.array([0.15, 0, 0, 0, 0, 0, 0])
    safety = make_safety(spec, franka)
    sent: list[np.ndarray] = []
    loop = ControlLoop(franka, ThreadedWorker(lambda obs: np.tile(target, (5, 1))), safety, RealClock(),
                       LoopConfig(fps=20.0, max_ticks=30), on_tick=lambda t, o, c: sent.append(c))  # fmt: skip
    report = loop.run()
    loop.worker.close()
    assert report.ended == "finished"
    cmds = np.stack([c for c in sent if c is not None])
    assert np.all(np.abs(np.diff(cmds, axis=0)) <= spec.max_step + 1e-9)
    franka.robot.join_motion(timeout=5.0)
    assert franka.read_state().joints[0] == pytest.approx(target[0], abs=0.03)


def test_workspace_box_uses_the_robot_model(franka: FrankaArm) -> None:
    spec = franka.spec
    q = franka.read_state().joints
    eef = franka.read_state().eef
    tight = spec.replace(workspace=(tuple(eef - 0.01), tuple(eef + 0.01)))
    safety = make_safety(tight, franka)
    safety.filter(None, q)
    cmd = safety.filter(q + np.array([0, 0.05, 0, 0, 0, 0, 0]), q)  # would move the tip ~3 cm
    assert safety.interventions["workspace"] == 1 and np.allclose(cmd, q)


def test_stop_refuses_further_motion(franka: FrankaArm) -> None:
    franka.stop()
    with pytest.raises(RobotError, match="stopped"):
        franka.send_action(franka.read_state().joints)
    franka.stopped = False
