"""The shipped 1000 chains and their start scenes against values recorded from the reference code
(mees/calvin calvin_agent/evaluation: get_sequences(1000), get_env_state_for_initial_condition,
run with numpy; pyhash replaced by the FNV-1 it computes)."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from vla.sim.base import SimError
from vla.sim.calvin.chains import evaluation_chains, quota
from vla.sim.calvin.scene import layout_seed, reset_arrays, robot_obs, scene_obs
from vla.sim.calvin.tasks import CATEGORIES, STATE_KEYS, feasible_chain

REFERENCE_FIRST_10 = [
    (
        [1, 1, "left", "open", "slider_left", "table", "slider_right", 0],
        (
            "rotate_blue_block_right",
            "move_slider_right",
            "lift_red_block_slider",
            "place_in_slider",
            "turn_off_lightbulb",
        ),
    ),
    (
        [1, 1, "right", "open", "slider_right", "table", "slider_left", 0],
        ("turn_off_led", "push_into_drawer", "lift_blue_block_drawer", "place_in_slider", "close_drawer"),
    ),
    (
        [0, 1, "right", "closed", "table", "slider_right", "slider_left", 0],
        ("lift_pink_block_slider", "place_in_slider", "open_drawer", "rotate_red_block_right", "lift_red_block_table"),
    ),
    (
        [1, 0, "right", "closed", "slider_right", "table", "table", 0],
        ("rotate_blue_block_right", "lift_pink_block_table", "place_in_slider", "move_slider_left", "open_drawer"),
    ),
    (
        [1, 0, "left", "closed", "slider_right", "table", "table", 0],
        ("open_drawer", "lift_pink_block_table", "place_in_slider", "turn_on_lightbulb", "rotate_blue_block_left"),
    ),
    (
        [1, 1, "left", "open", "slider_right", "table", "table", 0],
        ("push_blue_block_left", "close_drawer", "lift_red_block_slider", "place_in_slider", "turn_off_lightbulb"),
    ),
    (
        [0, 0, "right", "closed", "table", "slider_left", "table", 0],
        ("open_drawer", "rotate_red_block_right", "turn_on_led", "lift_pink_block_table", "stack_block"),
    ),
    (
        [0, 0, "left", "open", "table", "slider_right", "table", 0],
        ("push_pink_block_right", "lift_pink_block_table", "place_in_slider", "push_into_drawer", "close_drawer"),
    ),
    (
        [0, 1, "right", "closed", "table", "slider_left", "slider_right", 0],
        ("open_drawer", "push_red_block_right", "move_slider_left", "lift_pink_block_slider", "place_in_slider"),
    ),
    (
        [1, 0, "left", "open", "table", "table", "slider_left", 0],
        ("push_red_block_left", "lift_blue_block_table", "place_in_slider", "turn_on_lightbulb", "move_slider_right"),
    ),
]
REFERENCE_SCENE_OBS = [
    [
        0.28,
        0.22,
        0.0,
        0.088,
        1.0,
        1.0,
        -0.240851662,
        0.0924044687,
        0.460990009,
        0.0,
        0.0,
        1.8859410064104645,
        0.229995412,
        -0.11999514,
        0.45999001,
        0.0,
        0.0,
        1.488143437705632,
        0.070341633,
        0.0924044687,
        0.460990009,
        0.0,
        0.0,
        1.4683986863194542,
    ],
    [
        0.0,
        0.22,
        0.0,
        0.088,
        1.0,
        1.0,
        0.070341633,
        0.0924044687,
        0.460990009,
        0.0,
        0.0,
        1.8268336264859704,
        0.229995412,
        -0.11999514,
        0.45999001,
        0.0,
        0.0,
        1.507641694779252,
        -0.240851662,
        0.0924044687,
        0.460990009,
        0.0,
        0.0,
        1.6461964143959458,
    ],
    [
        0.0,
        0.0,
        0.0,
        0.088,
        1.0,
        0.0,
        0.0500000896,
        -0.120000177,
        0.459990009,
        0.0,
        0.0,
        1.4912139041697137,
        0.070341633,
        0.0924044687,
        0.460990009,
        0.0,
        0.0,
        1.610703281474808,
        -0.240851662,
        0.0924044687,
        0.460990009,
        0.0,
        0.0,
        1.5452273400945669,
    ],
]
REFERENCE_ROBOT_OBS = [
    0.02586889,
    -0.2313129,
    0.5712808,
    3.09045411,
    -0.02908596,
    1.50013585,
    0.07999963,
    -1.21779124,
    1.03987629,
    2.11978254,
    -2.34205014,
    -0.87015899,
    1.64119093,
    0.55344928,
    1.0,
]


def test_first_chains_are_the_reference_chains():
    chains = evaluation_chains(10)
    assert [([v for _, v in c.state], c.subtasks) for c in chains] == REFERENCE_FIRST_10
    assert [c.index for c in chains] == list(range(10))


def test_chain_zero_is_the_protocol_test_vector():
    c = evaluation_chains(1)[0]
    assert c.state_dict == {
        "led": 1,
        "lightbulb": 1,
        "slider": "left",
        "drawer": "open",
        "red_block": "slider_left",
        "blue_block": "table",
        "pink_block": "slider_right",
        "grasped": 0,
    }
    assert c.subtasks == (
        "rotate_blue_block_right",
        "move_slider_right",
        "lift_red_block_slider",
        "place_in_slider",
        "turn_off_lightbulb",
    )


def test_start_scenes_are_bit_identical_to_the_reference():
    for chain, ref in zip(evaluation_chains(3), REFERENCE_SCENE_OBS, strict=True):
        robot, scene = reset_arrays(chain.state_dict)
        assert scene.tolist() == ref  # exact: same draws, same arithmetic
        assert robot.tolist() == REFERENCE_ROBOT_OBS
    assert robot_obs().shape == (15,)


def test_layout_seed_hashes_the_dict_values_text():
    state = dict(evaluation_chains(1)[0].state)
    text = "dict_values([1, 1, 'left', 'open', 'slider_left', 'table', 'slider_right', 0])"
    from vla.sim.calvin.legacy_rng import fnv1_32

    assert layout_seed(state) == fnv1_32(text)


def test_scene_layout_rules():
    state = {"led": 0, "lightbulb": 0, "slider": "right", "drawer": "closed"}
    state |= {"red_block": "table", "blue_block": "table", "pink_block": "slider_left", "grasped": 0}
    obs = scene_obs(state)
    assert obs[:6].tolist() == [0, 0, 0, 0, 0, 0]
    table_slots = {tuple(obs[6:9]), tuple(obs[12:15])}
    assert len(table_slots) == 2  # red and blue on different table slots
    assert obs[18:21].tolist() == [-0.240851662, 0.0924044687, 0.460990009]
    yaws = obs[[11, 17, 23]]
    assert np.all((yaws > 3 * np.pi / 8) & (yaws < 5 * np.pi / 8)) and np.all(obs[[9, 10, 15, 16, 21, 22]] == 0)


def test_all_1000_chains_are_feasible_and_follow_the_quota():
    chains = evaluation_chains()
    assert len(chains) == 1000
    per_state = Counter(c.state_id for c in chains)
    assert [per_state[i] for i in range(192)] == quota(1000, 192) == [6] * 40 + [5] * 152
    for c in chains:
        assert tuple(k for k, _ in c.state) == STATE_KEYS
        assert feasible_chain(c.state_dict, c.subtasks)
        assert len({CATEGORIES[t] for t in c.subtasks}) == 5


def test_chain_count_is_checked():
    assert len(evaluation_chains(7)) == 7
    with pytest.raises(SimError, match="1000 chains"):
        evaluation_chains(1001)
    with pytest.raises(SimError):
        evaluation_chains(0)
