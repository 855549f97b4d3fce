from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from vla.cli import app
from vla.datasets.convert import convert
from vla.datasets.fixtures.calvin import write_calvin_split
from vla.datasets.store import Store
from vla.errors import DataError

SEGMENTS = [(5, 16), (30, 39), (50, 62)]  # inclusive ids with gaps, as in the real dataset
ANNOTATIONS = [
    (7, 12, "open the drawer", "open_drawer"),
    (31, 39, "lift the red block", "lift_red_block"),
    (52, 55, "push the switch up", "turn_on_lightbulb"),
]


@pytest.fixture(scope="module")
def split(tmp_path_factory):
    return write_calvin_split(
        tmp_path_factory.mktemp("calvin") / "training", SEGMENTS, ANNOTATIONS, static_size=32, gripper_size=16
    )


@pytest.fixture(scope="module")
def store(split, tmp_path_factory):
    return convert("calvin", split.parent, tmp_path_factory.mktemp("out") / "calvin.zarr", progress=False).store


def test_every_value_round_trips(split, store):
    assert store.num_episodes == 3 and store.fps == 30
    assert [int(e - s) for s, e in zip(store.episode_starts, store.episode_ends, strict=True)] == [12, 10, 13]
    for k, (a, b) in enumerate(SEGMENTS):
        ep = store.episode(k)
        for j, i in enumerate(range(a, b + 1)):
            with np.load(split / f"episode_{i:07d}.npz") as z:
                np.testing.assert_allclose(ep.frames["action"][j], z["rel_actions"], rtol=1e-6)
                np.testing.assert_allclose(ep.frames["action.absolute"][j], z["actions"], rtol=1e-6)
                np.testing.assert_allclose(ep.frames["observation.state"][j], z["robot_obs"], rtol=1e-6)
                np.testing.assert_allclose(ep.frames["observation.scene_obs"][j], z["scene_obs"], rtol=1e-6)
                np.testing.assert_array_equal(ep.frames["observation.images.static"][j], z["rgb_static"])
                np.testing.assert_array_equal(ep.frames["observation.images.gripper"][j], z["rgb_gripper"])


def test_language_windows_and_play_data(store):
    assert store.episode_task.tolist() == [-1, -1, -1]  # play data: no episode-level task
    ann = [(int(s), int(e), store.tasks[t]) for s, e, t in store.annotations]
    assert ann == [
        (2, 8, "open the drawer"),
        (12 + 1, 12 + 10, "lift the red block"),
        (22 + 2, 22 + 6, "push the switch up"),
    ]


def test_real_image_sizes(tmp_path):
    src = write_calvin_split(tmp_path / "training", [(0, 2)], [])
    s = convert("calvin", src, tmp_path / "o.zarr", progress=False).store
    assert s.keys["observation.images.static"].shape == (200, 200, 3)
    assert s.keys["observation.images.gripper"].shape == (84, 84, 3)


def test_cli_convert_info_validate(split, tmp_path):
    runner = CliRunner()
    dst = tmp_path / "c.zarr"
    assert runner.invoke(app, ["data", "convert", "--from", "calvin", str(split), str(dst)]).exit_code == 0
    info = json.loads(runner.invoke(app, ["data", "info", "--json", str(dst)]).output)
    assert info["annotations"] == 3 and info["episodes"] == 3
    assert runner.invoke(app, ["data", "validate", str(dst)]).exit_code == 0


def _broken(tmp_path, mutate):
    src = write_calvin_split(
        tmp_path / "training",
        [(0, 4), (10, 13)],
        [(1, 3, "open the drawer", "open_drawer")],
        static_size=16,
        gripper_size=8,
    )
    mutate(src)
    return src


@pytest.mark.parametrize(
    ("mutate", "where", "problem"),
    [
        (lambda s: (s / "ep_start_end_ids.npy").unlink(), "ep_start_end_ids.npy", "missing"),
        (lambda s: (s / "episode_0000011.npz").unlink(), "episode_0000011.npz", "frame file is missing"),
        (
            lambda s: np.savez(
                s / "episode_0000002.npz",
                **{k: v for k, v in np.load(s / "episode_0000002.npz").items() if k != "rel_actions"},
            ),
            "rel_actions",
            "missing",
        ),
        (
            lambda s: np.savez(
                s / "episode_0000003.npz", **{**np.load(s / "episode_0000003.npz"), "robot_obs": np.zeros(9)}
            ),
            "robot_obs",
            "expected shape",
        ),
        (
            lambda s: np.savez(
                s / "episode_0000001.npz", **{**np.load(s / "episode_0000001.npz"), "robot_obs": np.full(15, np.nan)}
            ),
            "observation.state",
            "non-finite",
        ),
        (
            lambda s: np.save(
                s / "lang_annotations" / "auto_lang_ann.npy",
                {
                    "language": {"ann": ["x"], "task": ["t"], "emb": np.zeros((1, 1, 384))},
                    "info": {"episodes": [], "indx": [(3, 11)]},
                },
                allow_pickle=True,
            ),
            "info.indx[0]",
            "one continuous segment",
        ),
    ],
)
def test_bad_input_names_file_and_key_and_leaves_no_store(tmp_path, mutate, where, problem):
    src = _broken(tmp_path, mutate)
    dst = tmp_path / "out.zarr"
    with pytest.raises(DataError) as err:
        convert("calvin", src, dst, progress=False)
    assert where in str(err.value) and problem in str(err.value)
    with pytest.raises(DataError):
        Store(dst)
