"""The environment interface's fit check and small helpers, without a simulator (fast)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from vla.datasets.conventions.libero import STATE_DIMS, libero_spec
from vla.datasets.declare import preset
from vla.datasets.spec import CameraSpec, DimSpec, KeySpec, StoreSpec
from vla.sim.base import SimError, check_fits, fit_problems, obs_keys
from vla.sim.experts.libero_pick_place import rotation_error
from vla.sim.libero import choose_gl_backend, quat_to_axis_angle
from vla.sim.scripted import parse_ids

CAMS = ("agentview", "eye_in_hand")


def policy_spec(**changes) -> StoreSpec:
    """What a store converted from LIBERO HDF5 at 64x64 says about itself."""
    spec = StoreSpec(
        fps=20.0,
        embodiment="libero_panda",
        robot_type="panda",
        action=preset("eef_delta_axis_angle_gripper"),
        state=STATE_DIMS,
        cameras=tuple(CameraSpec(c, 64, 64, 3, "upright", "rotated_180") for c in CAMS),
        extra_keys={
            "observation.joint_state": KeySpec("float64", (7,)),
            "observation.gripper_state": KeySpec("float64", (2,)),
        },
    )
    return dataclasses.replace(spec, **changes)


def test_a_matching_environment_fits():
    env = libero_spec(CAMS, (64, 64), "upright")
    assert fit_problems(env, policy_spec()) == []
    check_fits(env, policy_spec())
    assert set(obs_keys(env)) == {
        "observation.state",
        "observation.images.agentview",
        "observation.images.eye_in_hand",
        "observation.joint_state",
        "observation.gripper_state",
    }


def test_every_mismatch_is_named():
    env = libero_spec(("agentview",), (128, 128), "rotated_180")
    joint_actions = preset("joint7_gripper")[:7]
    policy = policy_spec(fps=10.0, action=joint_actions)
    problems = "\n".join(fit_problems(env, policy))
    assert "10 Hz" in problems and "20 Hz" in problems
    assert "action[0]" in problems and "joint_pos" in problems
    assert "observation.images.eye_in_hand: the environment does not provide it" in problems
    assert "observation.images.agentview: policy expects shape (64, 64, 3), environment gives (128, 128, 3)" in problems
    assert "trained on upright frames, the environment delivers rotated_180" in problems
    with pytest.raises(SimError, match="does not fit"):
        check_fits(env, policy)


def test_only_the_keys_a_policy_reads_are_checked():
    state_only = libero_spec((), (128, 128), "upright")
    assert any("images" in p for p in fit_problems(state_only, policy_spec()))
    assert fit_problems(state_only, policy_spec(), keys=["observation.state"]) == []
    moved = tuple(DimSpec(d.name, "joint_pos") if i < 3 else d for i, d in enumerate(STATE_DIMS))
    assert fit_problems(state_only, policy_spec(state=moved), keys=["observation.state"])


def test_parse_ids():
    assert parse_ids("0-3") == [0, 1, 2, 3]
    assert parse_ids("5, 0,2-3") == [5, 0, 2, 3]
    with pytest.raises(SimError, match="0-9"):
        parse_ids("a-b")


def test_axis_angle_and_rotation_error():
    assert np.allclose(quat_to_axis_angle(np.array([0.0, 0.0, 0.0, 1.0])), 0.0)
    half = np.sqrt(0.5)
    assert np.allclose(quat_to_axis_angle(np.array([0.0, 0.0, half, half])), [0.0, 0.0, np.pi / 2])
    # The error that rotates `current` onto `target`, in the world frame, whichever sign the quaternion has.
    current = np.array([1.0, 0.0, 0.0, 0.0])  # pointing down
    yaw = np.array([0.0, 0.0, np.sin(0.1), np.cos(0.1)])  # 0.2 rad about world z
    target = (Rotation.from_quat(yaw) * Rotation.from_quat(current)).as_quat()
    assert np.allclose(rotation_error(target, current), [0.0, 0.0, 0.2])
    assert np.allclose(rotation_error(-target, current), [0.0, 0.0, 0.2])


def test_gl_backend_falls_back_from_egl_to_osmesa():
    tried = []

    def works(backend: str) -> bool:
        tried.append(backend)
        return backend == "osmesa"

    assert choose_gl_backend("egl", works) == "osmesa" and tried == ["egl", "osmesa"]
    assert choose_gl_backend("glfw", lambda b: b == "egl") == "egl"
    assert choose_gl_backend("egl", lambda b: False) is None


@pytest.mark.slow
def test_robosuite_macro_advice_is_silenced():
    """Importing LIBERO through the toolkit prints none of robosuite's 'No private macro file' lines."""
    import subprocess
    import sys

    code = "from vla.sim.libero import _libero; _libero(); import logging; "
    code += "logging.getLogger('robosuite_logs').error('an error that passes')"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "macro" not in out.stderr.lower() and "an error that passes" in out.stderr  # its errors still pass
