"""CALVIN split -> store: every value, the segment boundaries, the language windows, the CLI, bad input."""

from __future__ import annotations

import json
import shutil
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from vla.cli import app
from vla.datasets.conventions.calvin import ROBOT_OBS_DIMS, SCENE_OBS_NAMES
from vla.datasets.convert.base import convert
from vla.datasets.convert.calvin import CalvinConverter
from vla.datasets.declare import Declaration, preset
from vla.datasets.store import Store
from vla.errors import DataError
from vla.testing.calvin_data import LANG_FILE, frame_path, relative_action, write_calvin_split

# Inclusive (first, last) ids with gaps, deliberately unsorted (CALVIN's split script permutes them).
SEGMENTS = [(30, 41), (5, 16), (50, 62)]
SORTED = sorted(SEGMENTS)
# (first, last inclusive, text, task), in no particular order, one window per segment edge case.
ANNOTATIONS = [
    (52, 55, "push the switch up", "turn_on_lightbulb"),
    (7, 12, "open the drawer", "open_drawer"),
    (31, 41, "lift the red block", "lift_red_block_table"),  # ends on its segment's last frame
    (5, 9, "push the red block left", "push_red_block_left"),  # starts on the first frame, overlaps
    (13, 16, "open the drawer", "open_drawer"),  # the same instruction again
]
SMALL = (32, 16)
runner = CliRunner()


@pytest.fixture(scope="module")
def split(tmp_path_factory) -> Path:
    return write_calvin_split(tmp_path_factory.mktemp("calvin") / "training", SEGMENTS, ANNOTATIONS, image_sizes=SMALL)


@pytest.fixture(scope="module")
def store(split, tmp_path_factory) -> Store:
    # The dataset root (holding training/) is what users usually pass.
    return convert("calvin", split.parent, tmp_path_factory.mktemp("out") / "calvin.zarr", progress=False).store


def expected_windows() -> list[tuple[int, int, str]]:
    """The annotations in global store frames, worked out from the segment table alone."""
    offsets = np.cumsum([0] + [b - a + 1 for a, b in SORTED])
    out = []
    for first, last, text, _ in ANNOTATIONS:
        k = next(k for k, (a, b) in enumerate(SORTED) if a <= first <= b)
        out.append((int(offsets[k]) + first - SORTED[k][0], int(offsets[k]) + last - SORTED[k][0] + 1, text))
    return sorted(out)


# --- the happy path ---------------------------------------------------------------------------


def test_one_episode_per_sorted_segment_and_every_play_frame_kept(store):
    assert store.num_episodes == 3 and store.fps == 30 and store.spec.embodiment == "calvin_panda"
    lengths = (store.episode_ends - store.episode_starts).tolist()
    assert lengths == [b - a + 1 for a, b in SORTED] == [12, 12, 13]
    assert store.num_frames == 37  # unlabeled frames included
    assert store.episode_task.tolist() == [-1, -1, -1]  # play data: no episode-level instruction
    assert store.spec.source.details["split"] == "training"


def test_every_value_round_trips(split, store):
    for k, (first, last) in enumerate(SORTED):
        ep = store.episode(k)
        assert ep.length == last - first + 1
        for j, frame_id in enumerate(range(first, last + 1)):
            with np.load(frame_path(split, frame_id)) as z:
                np.testing.assert_allclose(ep.frames["action"][j], z["rel_actions"], rtol=1e-6, atol=1e-7)
                np.testing.assert_allclose(ep.frames["action.absolute"][j], z["actions"], rtol=1e-6)
                np.testing.assert_allclose(ep.frames["observation.state"][j], z["robot_obs"], rtol=1e-6, atol=1e-7)
                np.testing.assert_allclose(ep.frames["observation.scene_obs"][j], z["scene_obs"], rtol=1e-6, atol=1e-7)
                np.testing.assert_array_equal(ep.frames["observation.images.static"][j], z["rgb_static"])
                np.testing.assert_array_equal(ep.frames["observation.images.gripper"][j], z["rgb_gripper"])
            stamp = ep.frames["observation.images.static"][j, 0, 0].astype(int)
            assert (stamp[0] << 16) + (stamp[1] << 8) + stamp[2] == frame_id  # the fixture's frame id, read back
        np.testing.assert_allclose(ep.timestamps, np.arange(ep.length) / 30.0, rtol=1e-6)


def test_language_windows_become_annotations_in_global_frames(store):
    got = [(int(s), int(e), store.tasks[t]) for s, e, t in store.annotations]
    assert got == expected_windows()
    assert got[0] == (0, 5, "push the red block left")  # ids 5..9 inclusive = the segment's first 5 frames
    assert (13, 24, "lift the red block") in got  # ids 31..41 end on segment (30, 41)'s last frame
    assert sorted(store.tasks) == sorted({a[2] for a in ANNOTATIONS})  # the repeated text is one task entry
    ep = store.episode(2)  # segment (50, 62): ids 52..55
    assert ep.annotations == [(2, 6, "push the switch up")]


def test_spec_describes_calvin(store):
    spec = store.spec
    assert [d.name for d in spec.action] == [d.name for d in preset("eef_rel_euler_gripper")]
    assert [d.mode for d in spec.action[:6]] == ["delta"] * 6
    names = store.keys["observation.state"].names
    assert names[:3] == ("tcp_pos_x", "tcp_pos_y", "tcp_pos_z") and names[6] == "gripper_opening_width"
    assert names[7:14] == tuple(f"robot_joint_{i}" for i in range(7)) and names[14] == "gripper_action"
    assert [d.kind for d in ROBOT_OBS_DIMS].count("joint_pos") == 7
    assert store.keys["observation.scene_obs"].names == SCENE_OBS_NAMES and len(SCENE_OBS_NAMES) == 24
    assert store.keys["action.absolute"].shape == (7,)
    assert store.keys["observation.images.static"].shape == (32, 32, 3)
    assert store.keys["observation.images.gripper"].shape == (16, 16, 3)
    assert {c.name: (c.orientation, c.source_orientation) for c in spec.cameras} == {
        "static": ("upright", "upright"),
        "gripper": ("upright", "upright"),
    }
    details = spec.source.details
    assert details["segments"] == 3 and details["language_windows"] == 5 and details["frame_ids"] == [5, 62]
    assert details["annotation_tasks"] == sorted({a[3] for a in ANNOTATIONS})
    assert set(details["not_converted"]) == {"depth_static", "depth_gripper", "rgb_tactile", "depth_tactile"}
    assert details["scene_info"] == {"calvin_scene_D": [5, 62]}
    assert details["episode_scenes"] == ["calvin_scene_D"] * 3
    assert store.action_slots == (0, 1, 2, 3, 4, 5, 7)


def test_real_image_sizes_and_fixture_layout(tmp_path):
    src = write_calvin_split(tmp_path / "validation", [(100, 101)], [(100, 101, "go", "open_drawer")], scene_info=False)
    with np.load(frame_path(src, 100)) as z:
        layout = {k: (z[k].dtype.str, z[k].shape) for k in z.files}
        next_robot_obs = np.load(frame_path(src, 101))["robot_obs"]
        np.testing.assert_allclose(z["rel_actions"], relative_action(z["actions"], z["robot_obs"]))
        np.testing.assert_allclose(z["actions"][:6], next_robot_obs[:6])  # the action is the next tcp pose
    assert layout == {
        "actions": ("<f8", (7,)),
        "rel_actions": ("<f8", (7,)),
        "robot_obs": ("<f8", (15,)),
        "scene_obs": ("<f8", (24,)),
        "rgb_static": ("|u1", (200, 200, 3)),
        "rgb_gripper": ("|u1", (84, 84, 3)),
        "rgb_tactile": ("|u1", (160, 120, 6)),
        "depth_static": ("<f4", (200, 200)),
        "depth_gripper": ("<f4", (84, 84)),
        "depth_tactile": ("<f4", (160, 120, 2)),
    }
    ids = np.load(src / "ep_start_end_ids.npy")
    assert ids.dtype == np.int64 and ids.tolist() == [[100, 101]]
    lang = np.load(src / LANG_FILE, allow_pickle=True).item()
    assert lang["language"]["ann"] == ["go"] and lang["language"]["task"] == ["open_drawer"]
    assert lang["language"]["emb"].shape == (1, 1, 384) and lang["info"] == {"episodes": [], "indx": [(100, 101)]}
    assert set(yaml.safe_load((src / "statistics.yaml").read_text())) >= {"robot_obs", "scene_obs", "act_min_bound"}
    assert not (src / "scene_info.npy").exists()

    s = convert("calvin", src, tmp_path / "o.zarr", progress=False).store
    assert s.keys["observation.images.static"].shape == (200, 200, 3)
    assert s.keys["observation.images.gripper"].shape == (84, 84, 3)
    with np.load(frame_path(src, 101)) as z:
        np.testing.assert_array_equal(s.array("observation.images.static")[1], z["rgb_static"])
        np.testing.assert_array_equal(s.array("observation.images.gripper")[1], z["rgb_gripper"])
    assert s.annotations.tolist() == [[0, 2, 0]] and s.spec.source.details["split"] == "validation"
    assert "scene_info" not in s.spec.source.details


def test_a_dataset_root_converts_training_and_a_split_folder_itself(tmp_path):
    root = tmp_path / "task_D_D"
    write_calvin_split(root / "training", [(0, 2)], image_sizes=(8, 8))
    write_calvin_split(root / "validation", [(7, 8)], image_sizes=(8, 8), scene_info=False)
    assert CalvinConverter(root, Declaration()).src == root / "training"
    assert CalvinConverter(root / "validation", Declaration()).segments == [(7, 8)]


def test_declared_absolute_actions_swap_the_action_arrays(split):
    conv = CalvinConverter(split, Declaration(action=preset("eef_abs_euler_gripper")))
    assert set(conv.spec().extra_keys) == {"action.relative", "observation.scene_obs"}
    ep = next(conv.episodes(start=2))
    with np.load(frame_path(split, 50)) as z:
        np.testing.assert_allclose(ep.frames["action"][0], z["actions"], rtol=1e-6)
        np.testing.assert_allclose(ep.frames["action.relative"][0], z["rel_actions"], rtol=1e-6, atol=1e-7)


def test_declared_rotated_camera_is_stored_upright(split):
    conv = CalvinConverter(split, Declaration(camera_orientation={"static": "rotated_180"}))
    ep = next(conv.episodes())
    with np.load(frame_path(split, 5)) as z:
        np.testing.assert_array_equal(ep.frames["observation.images.static"][0], z["rgb_static"][::-1, ::-1])
        np.testing.assert_array_equal(ep.frames["observation.images.gripper"][0], z["rgb_gripper"])
    assert {c.name: c.source_orientation for c in conv.spec().cameras} == {
        "static": "rotated_180",
        "gripper": "upright",
    }


def test_episodes_from_start_read_only_their_own_frames(split, monkeypatch):
    conv = CalvinConverter(split, Declaration())
    read: list[int] = []
    original = conv._read_frame
    monkeypatch.setattr(conv, "_read_frame", lambda i, seg: read.append(i) or original(i, seg))
    episodes = list(conv.episodes(start=2))
    assert len(episodes) == 1 and read == list(range(50, 63))
    assert conv.fingerprint() == CalvinConverter(split, Declaration()).fingerprint()


def _peak_bytes_reading(split: Path) -> int:
    conv = CalvinConverter(split, Declaration())
    tracemalloc.start()
    try:
        for _ in conv.episodes():
            pass
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_memory_holds_one_segment_not_the_split(tmp_path):
    few = write_calvin_split(tmp_path / "few", [(0, 9), (20, 29)], image_sizes=(48, 24))
    many = write_calvin_split(tmp_path / "many", [(i * 20, i * 20 + 9) for i in range(6)], image_sizes=(48, 24))
    episode_bytes = 10 * (48 * 48 * 3 + 24 * 24 * 3)  # kept episodes would add this much each
    assert _peak_bytes_reading(many) < _peak_bytes_reading(few) + episode_bytes


def test_resume_after_fixing_a_missing_frame(tmp_path):
    src = write_calvin_split(tmp_path / "training", [(0, 3), (10, 13)], image_sizes=(8, 8))
    dst = tmp_path / "out.zarr"
    hidden = tmp_path / "hidden.npz"
    frame_path(src, 11).rename(hidden)
    with pytest.raises(DataError, match="frame file is missing"):
        convert("calvin", src, dst, progress=False)
    hidden.rename(frame_path(src, 11))
    summary = convert("calvin", src, dst, progress=False)
    assert summary.episodes_skipped == 1 and summary.store.num_frames == 8


def test_cli_convert_info_validate(split, tmp_path):
    dst = tmp_path / "c.zarr"
    result = runner.invoke(app, ["data", "convert", "--from", "calvin", str(split), str(dst)])
    assert result.exit_code == 0, result.output
    info = json.loads(runner.invoke(app, ["data", "info", "--json", str(dst)]).output)
    assert info["annotations"] == 5 and info["episodes"] == 3 and info["frames"] == 37 and info["source"] == "calvin"
    text = runner.invoke(app, ["data", "info", str(dst)])
    assert text.exit_code == 0 and "5 language windows" in " ".join(text.output.split())
    validate = runner.invoke(app, ["data", "validate", str(dst)])
    assert validate.exit_code == 0 and "ok" in validate.output


# --- bad input ----------------------------------------------------------------------------------


def rewrite_frame(split: Path, frame_id: int, drop: tuple[str, ...] = (), **changes: np.ndarray) -> None:
    path = frame_path(split, frame_id)
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files if k not in drop}
    np.savez_compressed(path, **{**arrays, **changes})


def save_language(split: Path, windows: list[tuple[int, int]], texts: list[str] | None = None) -> None:
    texts = texts if texts is not None else ["x"] * len(windows)
    lang = {
        "language": {"ann": texts, "task": ["t"] * len(texts), "emb": np.zeros((len(texts), 1, 384), np.float32)},
        "info": {"episodes": [], "indx": windows},
    }
    np.save(split / LANG_FILE, lang, allow_pickle=True)


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:200])


BAD: dict[str, tuple[Callable[[Path], object], str, str | None, str]] = {
    # name: (mutation, file the error names, key it names, phrase of the problem)
    "no segment file": (lambda s: (s / "ep_start_end_ids.npy").unlink(), "ep_start_end_ids.npy", None, "missing"),
    "overlapping segments": (
        lambda s: np.save(s / "ep_start_end_ids.npy", np.array([[0, 4], [4, 13]])),
        "ep_start_end_ids.npy",
        None,
        "overlap",
    ),
    "missing frame": (lambda s: frame_path(s, 11).unlink(), "episode_0000011.npz", None, "frame file is missing"),
    "truncated frame": (lambda s: truncate(frame_path(s, 12)), "episode_0000012.npz", None, "truncated"),
    "no rel_actions": (
        lambda s: rewrite_frame(s, 2, drop=("rel_actions",)),
        "episode_0000002.npz",
        "rel_actions",
        "missing",
    ),
    "no rgb_gripper": (
        lambda s: rewrite_frame(s, 3, drop=("rgb_gripper",)),
        "episode_0000003.npz",
        "rgb_gripper",
        "missing",
    ),
    "wrong shape": (
        lambda s: rewrite_frame(s, 3, robot_obs=np.zeros(9)),
        "episode_0000003.npz",
        "robot_obs",
        "expected shape",
    ),
    "NaN": (
        lambda s: rewrite_frame(s, 1, robot_obs=np.full(15, np.nan)),
        "episode_0000001.npz",
        "robot_obs",
        "non-finite",
    ),
    "image size changes": (
        lambda s: rewrite_frame(s, 12, rgb_static=np.zeros((9, 9, 3), np.uint8)),
        "episode_0000012.npz",
        "rgb_static",
        "expected a uint8 image",
    ),
    "window crosses a gap": (
        lambda s: save_language(s, [(1, 3), (3, 11)]),
        "auto_lang_ann.npy",
        "info.indx[1]",
        "crosses the end of segment (0, 4)",
    ),
    "window in a gap": (lambda s: save_language(s, [(6, 8)]), "auto_lang_ann.npy", "info.indx[0]", "lies in a gap"),
    "fewer texts than windows": (
        lambda s: save_language(s, [(1, 3), (10, 12)], texts=["x"]),
        "auto_lang_ann.npy",
        "info.indx",
        "2 windows, 1 texts",
    ),
}


@pytest.mark.parametrize("case", list(BAD), ids=list(BAD))
def test_bad_input_names_file_and_key_and_leaves_no_store(tmp_path, case):
    mutate, filename, key, problem = BAD[case]
    src = write_calvin_split(
        tmp_path / "training", [(0, 4), (10, 13)], [(1, 3, "open the drawer", "open_drawer")], image_sizes=(8, 8)
    )
    mutate(src)
    dst = tmp_path / "out.zarr"
    with pytest.raises(DataError) as err:
        convert("calvin", src, dst, progress=False)
    assert Path(err.value.path).name == filename and err.value.key == key, str(err.value)
    assert problem in err.value.problem, str(err.value)
    assert not dst.exists()
    with pytest.raises(DataError):
        Store(dst)


def test_declarations_that_do_not_fit_are_refused(split):
    with pytest.raises(DataError, match="7 dimensions, declared 2"):
        CalvinConverter(split, Declaration(action=preset("pusht_xy")))
    with pytest.raises(DataError, match="keys are fixed"):
        CalvinConverter(split, Declaration(keys={"depth_static": "observation.depth"}))
    with pytest.raises(DataError, match="unknown camera"):
        CalvinConverter(split, Declaration(camera_orientation={"tactile": "upright"}))


def test_a_folder_that_is_not_calvin_is_refused(tmp_path):
    (tmp_path / "validation").mkdir()
    shutil.copy(__file__, tmp_path / "validation" / "x.py")
    with pytest.raises(DataError) as err:
        convert("calvin", tmp_path, tmp_path / "o.zarr", progress=False)
    assert "ep_start_end_ids.npy" in err.value.path and "split folder" in err.value.problem
