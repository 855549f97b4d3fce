"""The subtask oracle on constructed before/after info dicts (calvin_env's get_info layout):
for every one of the 34 subtasks one change that achieves it and at least one that does not."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest

from vla.sim.base import SimError
from vla.sim.calvin.oracle import achieved, relative_euler_xyz, subtask_done
from vla.sim.calvin.tasks import BLOCKS, SUBTASKS
from vla.testing.calvin_fake import contact, quat_from_euler

ROBOT, TABLE = 1, 2
UID = {"red": 3, "blue": 4, "pink": 5}
BASE, PLANK, DRAWER = -1, 2, 3
HOME = {"red": (0.05, -0.12, 0.46), "blue": (0.23, -0.12, 0.46), "pink": (0.07, 0.09, 0.461)}


def info(**changes) -> dict:
    """A scene at rest: every block on the table base, nothing held, doors shut, lights off.
    Changes: `<color>=dict(pos=, yaw=, on=[(uid, link), ...], vel=)`, `held=<color>`, `slide=`,
    `drawer=`, `lightbulb=`, `led=`."""
    movable = {}
    for b in BLOCKS:
        spec = changes.get(b, {})
        on = spec.get("on", [(TABLE, BASE)])
        vel = spec.get("vel", 0.0)
        movable[f"block_{b}"] = {
            "current_pos": spec.get("pos", HOME[b]),
            "current_orn": quat_from_euler(0.0, 0.0, math.radians(spec.get("yaw", 90.0))),
            "current_lin_vel": (vel, 0.0, 0.0),
            "current_ang_vel": (0.0, 0.0, 0.0),
            "contacts": [contact(UID[b], uid, link) for uid, link in on],
            "uid": UID[b],
        }
    held = changes.get("held")
    return {
        "robot_info": {"uid": ROBOT, "contacts": [contact(ROBOT, UID[held])] if held else []},
        "scene_info": {
            "fixed_objects": {
                "table": {"uid": TABLE, "links": {"base_link": BASE, "plank_link": PLANK, "drawer_link": DRAWER}}
            },
            "movable_objects": movable,
            "doors": {
                "base__slide": {"current_state": changes.get("slide", 0.0)},
                "base__drawer": {"current_state": changes.get("drawer", 0.0)},
            },
            "buttons": {"base__button": {"joint_state": 0.0}},
            "switches": {"base__switch": {"joint_state": 0.0}},
            "lights": {
                "lightbulb": {"logical_state": changes.get("lightbulb", 0)},
                "led": {"logical_state": changes.get("led", 0)},
            },
        },
    }


def moved(color: str, dx=0.0, dz=0.0) -> tuple[float, float, float]:
    x, y, z = HOME[color]
    return (x + dx, y, z + dz)


HELD = [(ROBOT, -1)]


def cases() -> list[tuple[str, dict, dict, bool]]:
    """(subtask, start changes, end changes, expected)."""
    out = []
    for c in BLOCKS:
        out += [
            (f"rotate_{c}_block_right", {}, {c: {"yaw": 20.0}}, True),  # -70 degrees
            (f"rotate_{c}_block_right", {}, {c: {"yaw": 50.0}}, False),  # only -40
            (f"rotate_{c}_block_right", {}, {c: {"yaw": 160.0}}, False),  # the other way
            (f"rotate_{c}_block_right", {}, {c: {"yaw": 20.0, "on": HELD}}, False),  # still in the hand
            (f"rotate_{c}_block_left", {}, {c: {"yaw": 160.0}}, True),
            (f"rotate_{c}_block_left", {}, {c: {"yaw": 160.0, "pos": moved(c, dx=0.2)}}, False),  # moved away
            (f"push_{c}_block_right", {}, {c: {"pos": moved(c, dx=0.15)}}, True),
            (f"push_{c}_block_right", {}, {c: {"pos": moved(c, dx=0.05)}}, False),
            (f"push_{c}_block_right", {}, {c: {"pos": moved(c, dx=0.15), "on": HELD}}, False),  # carried, not pushed
            (f"push_{c}_block_left", {}, {c: {"pos": moved(c, dx=-0.15)}}, True),
            (f"push_{c}_block_left", {}, {c: {"pos": moved(c, dx=0.15)}}, False),
            (f"lift_{c}_block_table", {}, {c: {"pos": moved(c, dz=0.1), "on": HELD}, "held": c}, True),
            (f"lift_{c}_block_table", {}, {c: {"pos": moved(c, dz=0.1), "on": [*HELD, (TABLE, BASE)]}}, False),
            (f"lift_{c}_block_table", {}, {c: {"pos": moved(c, dz=0.02), "on": HELD}}, False),
            (
                f"lift_{c}_block_slider",
                {c: {"on": [(TABLE, PLANK)]}},
                {c: {"pos": moved(c, dz=0.05), "on": HELD}},
                True,
            ),
            (f"lift_{c}_block_slider", {}, {c: {"pos": moved(c, dz=0.05), "on": HELD}}, False),  # from the table
            (
                f"lift_{c}_block_drawer",
                {c: {"on": [(TABLE, DRAWER)]}},
                {c: {"pos": moved(c, dz=0.1), "on": HELD}},
                True,
            ),
            (
                f"lift_{c}_block_drawer",
                {c: {"on": [(TABLE, DRAWER)]}},
                {c: {"pos": moved(c, dz=0.04), "on": HELD}},
                False,
            ),
        ]
    held = {"red": {"on": HELD, "pos": moved("red", dz=0.1)}, "held": "red"}
    out += [
        ("move_slider_left", {}, {"slide": 0.28}, True),
        ("move_slider_left", {}, {"slide": 0.1}, False),
        ("move_slider_right", {"slide": 0.28}, {"slide": 0.0}, True),
        ("move_slider_right", {}, {"slide": 0.28}, False),
        ("open_drawer", {}, {"drawer": 0.22}, True),
        ("open_drawer", {}, {"drawer": 0.05}, False),
        ("close_drawer", {"drawer": 0.22}, {"drawer": 0.0}, True),
        ("close_drawer", {"drawer": 0.22}, {"drawer": 0.15}, False),
        ("place_in_slider", held, {"red": {"on": [(TABLE, PLANK)]}}, True),
        ("place_in_slider", held, {"red": {"on": [(TABLE, PLANK)]}, "held": "red"}, False),  # not released
        ("place_in_slider", held, {"red": {"on": [(TABLE, DRAWER)]}}, False),
        ("place_in_slider", {}, {"red": {"on": [(TABLE, PLANK)]}}, False),  # nothing was held
        ("place_in_drawer", held, {"red": {"on": [(TABLE, DRAWER)]}}, True),
        ("place_in_drawer", held, {"red": {"on": [(TABLE, PLANK)]}}, False),
        ("stack_block", held, {"red": {"on": [(UID["blue"], -1)]}}, True),
        ("stack_block", held, {"red": {"on": [(UID["blue"], -1)], "vel": 2.0}}, False),  # still moving
        ("stack_block", held, {"red": {"on": [(UID["blue"], -1), (TABLE, BASE)]}}, False),  # half on the table
        ("unstack_block", {"red": {"on": [(UID["blue"], -1)]}}, {"red": {"on": HELD}}, True),
        ("unstack_block", {"red": {"on": [(UID["blue"], -1), (TABLE, BASE)]}}, {"red": {"on": HELD}}, False),
        ("unstack_block", {"red": {"on": [(UID["blue"], -1)]}}, {"red": {"on": [(UID["blue"], -1)]}}, False),
        ("turn_on_lightbulb", {}, {"lightbulb": 1}, True),
        ("turn_on_lightbulb", {"lightbulb": 1}, {"lightbulb": 1}, False),
        ("turn_off_lightbulb", {"lightbulb": 1}, {"lightbulb": 0}, True),
        ("turn_off_lightbulb", {}, {"lightbulb": 1}, False),
        ("turn_on_led", {}, {"led": 1}, True),
        ("turn_on_led", {}, {"lightbulb": 1}, False),
        ("turn_off_led", {"led": 1}, {"led": 0}, True),
        ("turn_off_led", {"led": 0}, {"led": 0}, False),
        ("push_into_drawer", {}, {"pink": {"on": [(TABLE, DRAWER)]}}, True),
        (
            "push_into_drawer",
            {"pink": {"on": [(TABLE, BASE), (ROBOT, -1)]}},
            {"pink": {"on": [(TABLE, DRAWER)]}},
            False,
        ),
        ("push_into_drawer", {}, {"pink": {"on": [(TABLE, BASE)]}}, False),
    ]
    return out


CASES = cases()


@pytest.mark.parametrize(
    ("subtask", "start", "end", "expected"), CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)]
)
def test_oracle_case(subtask, start, end, expected):
    assert subtask_done(subtask, info(**start), info(**end)) is expected


def test_every_subtask_has_a_positive_and_a_negative_case():
    for name in SUBTASKS:
        outcomes = {expected for subtask, _, _, expected in CASES if subtask == name}
        assert outcomes == {True, False}, name


def test_nothing_happens_nothing_is_achieved():
    assert achieved(info(), info()) == set()
    both = achieved(info(), info(led=1, lightbulb=1, drawer=0.2))
    assert both == {"turn_on_led", "turn_on_lightbulb", "open_drawer"}


def test_inputs_are_not_modified_and_bad_names_or_dicts_raise():
    start, end = info(), info(led=1)
    before = copy.deepcopy((start, end))
    subtask_done("turn_on_led", start, end)
    assert (start, end) == before
    with pytest.raises(SimError, match="unknown CALVIN subtask"):
        subtask_done("fly", start, end)
    with pytest.raises(SimError, match="lacks"):
        subtask_done("turn_on_led", {"scene_info": {}}, end)


def test_relative_rotation_matches_scipy():
    from scipy.spatial.transform import Rotation

    rng = np.random.default_rng(0)
    for _ in range(50):
        a, b = Rotation.random(random_state=rng), Rotation.random(random_state=rng)
        want = (b * a.inv()).as_euler("xyz", degrees=True)
        got = relative_euler_xyz(a.as_quat(), b.as_quat())
        np.testing.assert_allclose(got, want, atol=1e-6)
