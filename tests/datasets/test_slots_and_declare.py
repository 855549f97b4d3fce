from __future__ import annotations

import numpy as np
import pytest

from vla.datasets import slots
from vla.datasets.declare import Declaration, infer_dims, preset
from vla.datasets.spec import DimSpec
from vla.errors import DataError


def test_eef_and_joint_layouts_use_their_blocks():
    eef = slots.assign_slots(preset("eef_delta_axis_angle_gripper"))
    assert eef == (0, 1, 2, 3, 4, 5, 7)
    joints = slots.assign_slots(preset("joint6_gripper"))
    assert joints == (8, 9, 10, 11, 12, 13, 14)
    assert slots.slot_mask(eef).sum() == 7 and not slots.slot_mask(eef)[6]


def test_native_layout_round_trips_through_slots():
    dims = preset("joint7_gripper")
    idx = slots.assign_slots(dims)
    x = np.random.default_rng(0).normal(size=(4, 10, len(dims))).astype(np.float32)
    s = slots.to_slots(x, idx)
    assert s.shape == (4, 10, slots.NUM_SLOTS)
    assert np.all(s[..., ~slots.slot_mask(idx)] == 0)
    np.testing.assert_array_equal(slots.from_slots(s, idx), x)


def test_too_many_dimensions_for_a_block_is_a_clear_error():
    with pytest.raises(ValueError, match="block is full"):
        slots.assign_slots([DimSpec(f"p{i}", "eef_pos") for i in range(4)])


def test_infer_from_feature_names():
    dims = infer_dims(["shoulder_pan.pos", "elbow_flex.pos", "gripper.pos", "x", "yaw", "foo"])
    assert [d.kind for d in dims] == ["joint_pos", "joint_pos", "gripper", "eef_pos", "eef_rot_euler", "other"]


def test_declaration_yaml(tmp_path):
    f = tmp_path / "d.yaml"
    f.write_text(
        "fps: 10\nembodiment: pusht\naction: pusht_xy\n"
        "state: [{name: ax, kind: eef_pos}, ay]\ncameras: {img: {source_orientation: rotated_180}}\n"
        "keys: {img: observation.images.top}\n"
    )
    d = Declaration.from_yaml(f)
    assert d.fps == 10 and d.embodiment == "pusht" and len(d.action) == 2
    assert [x.name for x in d.state] == ["ax", "ay"]
    assert d.camera_orientation == {"img": "rotated_180"}
    assert d.updated(fps=30.0, embodiment=None).fps == 30.0


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("fps: 10\nbogus: 1\n", "bogus"),
        ("action: warp_drive\n", "unknown action-space preset"),
        ("action: [{name: a, kind: nope}]\n", "unknown kind"),
        ("- 1\n", "mapping"),
    ],
)
def test_declaration_errors_name_the_problem(tmp_path, text, match):
    f = tmp_path / "d.yaml"
    f.write_text(text)
    with pytest.raises((DataError, ValueError), match=match):
        Declaration.from_yaml(f)
