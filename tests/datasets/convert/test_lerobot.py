"""LeRobot v3 -> store: every converted value against what LeRobotDataset itself returns.

The fixture is recorded with lerobot's own writer (one AV1 video camera, one PNG image camera,
non-square frames, a task change inside one episode); conversion and checks read it offline.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from vla.cli import app
from vla.datasets.convert.base import convert
from vla.datasets.convert.lerobot import LeRobotConverter
from vla.datasets.declare import Declaration, preset
from vla.datasets.store import Store
from vla.datasets.validate import validate_store
from vla.errors import DataError
from vla.testing.lerobot import DEFAULT_TASKS, fixture_image, fixture_lowdim, write_lerobot_dataset

LENGTHS = [14, 20, 12]
SIZE = (24, 40)  # not square: a transposed frame would not even have the right shape
FPS = 15
SEED = 3
SWITCH = 5  # episode 2 changes task at this frame


def task_fn(episode: int, frame: int) -> str:
    if episode == 2 and frame >= SWITCH:
        return "close the drawer"
    return DEFAULT_TASKS[episode % len(DEFAULT_TASKS)]


@pytest.fixture(scope="module")
def src(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("lerobot") / "so_fixture"
    return write_lerobot_dataset(
        root,
        len(LENGTHS),
        LENGTHS,
        cameras=("front", "wrist"),
        image_size=SIZE,
        video_cameras=("front",),
        fps=FPS,
        seed=SEED,
        robot_type="so_fixture_arm",
        task_fn=task_fn,
    )


@pytest.fixture(scope="module")
def store(src, tmp_path_factory) -> Store:
    return convert("lerobot", src, tmp_path_factory.mktemp("out") / "store.zarr", progress=False).store


@pytest.fixture(scope="module")
def lerobot_ds(src):
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    return LeRobotDataset("local/so_fixture", root=src)  # lerobot's default decoder, as users train with


def copy_of(src: Path, tmp_path: Path) -> Path:
    dst = tmp_path / src.name
    shutil.copytree(src, dst)
    return dst


def to_uint8_hwc(chw_float) -> np.ndarray:
    return np.round(chw_float.numpy() * 255).astype(np.int16).transpose(1, 2, 0)


def test_every_value_matches_lerobot_dataset(store, lerobot_ds):
    ends = np.cumsum(LENGTHS)
    assert store.num_episodes == 3 and store.num_frames == len(lerobot_ds) == ends[-1]
    assert store.episode_ends.tolist() == ends.tolist()
    assert store.fps == FPS and store.fps == lerobot_ds.fps
    for i in range(len(lerobot_ds)):
        item = lerobot_ds[i]
        ep = int(item["episode_index"])
        t = int(item["frame_index"])
        assert store.array("episode_index")[i] == ep and store.array("frame_index")[i] == t
        assert store.array("timestamp")[i] == item["timestamp"].item()
        for key in ("action", "observation.state", "next.reward"):
            np.testing.assert_array_equal(store.array(key)[i], item[key].numpy().reshape(-1), err_msg=f"{key} @ {i}")
        assert store.array("next.done")[i].tolist() == [bool(item["next.done"])]
        # Video frames: what lerobot decodes, up to the uint8 rounding of its float output.
        front = store.array("observation.images.front")[i].astype(np.int16)
        assert np.abs(front - to_uint8_hwc(item["observation.images.front"])).max() <= 1, f"front @ {i}"
        # Image frames are PNG: lossless, so exactly equal.
        wrist = store.array("observation.images.wrist")[i].astype(np.int16)
        np.testing.assert_array_equal(wrist, to_uint8_hwc(item["observation.images.wrist"]))
        if t == 0:
            assert store.task_of(ep) == item["task"]


def test_values_are_what_was_recorded(store):
    """Independent of lerobot's reader: low-dim and PNG values exact, AV1 frames close to the source."""
    for ep, n in enumerate(LENGTHS):
        e = store.episode(ep)
        np.testing.assert_array_equal(e.frames["action"], fixture_lowdim(SEED, ep, n, 7, salt=2))
        np.testing.assert_array_equal(e.frames["observation.state"], fixture_lowdim(SEED, ep, n, 8, salt=1))
        np.testing.assert_allclose(e.timestamps, np.arange(n) / FPS, atol=1e-6)
        assert e.frames["next.done"][:, 0].tolist() == [False] * (n - 1) + [True]
        for t in range(n):
            np.testing.assert_array_equal(e.frames["observation.images.wrist"][t], fixture_image(SEED, ep, 1, t, SIZE))
            err = np.abs(e.frames["observation.images.front"][t].astype(float) - fixture_image(SEED, ep, 0, t, SIZE))
            # A lossy codec, but the right episode and frame: another frame differs far more.
            assert err.mean() < 12, f"episode {ep} frame {t}: mean abs error {err.mean():.1f}"
            if t + 3 < n:
                other = np.abs(
                    e.frames["observation.images.front"][t].astype(float) - fixture_image(SEED, ep, 0, t + 3, SIZE)
                )
                assert other.mean() > err.mean()


def test_description(store, src):
    spec = store.spec
    assert spec.embodiment == spec.robot_type == "so_fixture_arm"
    assert [d.name for d in spec.action] == ["x", "y", "z", "roll", "pitch", "yaw", "gripper"]
    assert [d.kind for d in spec.action] == ["eef_pos"] * 3 + ["eef_rot_euler"] * 3 + ["gripper"]
    assert [d.name for d in spec.state] == [f"joint_{i}.pos" for i in range(1, 8)] + ["gripper.pos"]
    assert [d.kind for d in spec.state] == ["joint_pos"] * 7 + ["gripper"]
    info = json.loads((src / "meta/info.json").read_text())
    assert [d.name for d in spec.action] == info["features"]["action"]["names"]
    assert [(c.name, c.height, c.width, c.orientation, c.source_orientation) for c in spec.cameras] == [
        ("front", *SIZE, "upright", "upright"),
        ("wrist", *SIZE, "upright", "upright"),
    ]
    assert {k: (v.dtype, v.shape) for k, v in spec.extra_keys.items()} == {
        "next.reward": ("float32", (1,)),
        "next.done": ("bool", (1,)),
    }
    assert spec.source.format == "lerobot" and spec.source.version == "v3.0" and spec.source.path == str(src)
    details = spec.source.details
    assert details["video_cameras"] == ["observation.images.front"]
    assert details["image_cameras"] == ["observation.images.wrist"]
    assert details["video_codecs"] == {"observation.images.front": "av1"}  # lerobot's default encoder
    # Two tasks alternate (episode 2 is task 0 again), and episode 2 then switches to a third one.
    assert store.tasks == [*DEFAULT_TASKS, "close the drawer"] and len(DEFAULT_TASKS) == 2
    assert store.episode_task.tolist() == [0, 1, 0]
    start2 = LENGTHS[0] + LENGTHS[1]
    assert store.annotations.tolist() == [[start2, start2 + SWITCH, 0], [start2 + SWITCH, start2 + LENGTHS[2], 2]]
    assert validate_store(store.path) == []


def test_one_decoding_pass_per_episode_and_camera(src, monkeypatch):
    import lerobot.datasets.video_utils as vu

    calls: list[list[float]] = []
    real = vu.decode_video_frames

    def counting(path, timestamps, *args, **kwargs):
        calls.append(list(timestamps))
        return real(path, timestamps, *args, **kwargs)

    monkeypatch.setattr(vu, "decode_video_frames", counting)
    conv = LeRobotConverter(src, Declaration())
    episodes = list(conv.episodes(start=1))  # a resumed conversion: episode 0 is never decoded
    assert [e.length for e in episodes] == LENGTHS[1:]
    assert len(calls) == 2
    offset = LENGTHS[0] / FPS  # episode 1 starts after episode 0 inside the shared mp4
    np.testing.assert_allclose(calls[0], offset + np.arange(LENGTHS[1]) / FPS, atol=1e-5)


def test_declarations_override_what_the_source_says(src, store, tmp_path):
    decl = Declaration(
        embodiment="my_arm",
        action=preset("eef_delta_axis_angle_gripper"),
        camera_orientation={"front": "rotated_180", "wrist": "rotated_180"},
    )
    out = convert("lerobot", src, tmp_path / "o.zarr", decl, progress=False).store
    assert out.spec.embodiment == "my_arm" and out.spec.robot_type == "so_fixture_arm"
    assert out.spec.action == preset("eef_delta_axis_angle_gripper")
    assert [c.source_orientation for c in out.spec.cameras] == ["rotated_180", "rotated_180"]
    for cam in ("front", "wrist"):
        key = f"observation.images.{cam}"
        np.testing.assert_array_equal(out.array(key)[:], np.rot90(store.array(key)[:], k=2, axes=(1, 2)))
    with pytest.raises(DataError, match="declared 4 dimensions, the data has 7"):
        LeRobotConverter(src, Declaration(action=preset("joint3_gripper"))).spec()
    with pytest.raises(DataError, match="unknown camera"):
        LeRobotConverter(src, Declaration(camera_orientation={"side": "upright"}))
    renamed = LeRobotConverter(src, Declaration(keys={"next.reward": "observation.reward"})).spec()
    assert set(renamed.extra_keys) == {"observation.reward", "next.done"}
    with pytest.raises(DataError, match="declared in keys but not a feature"):
        LeRobotConverter(src, Declaration(keys={"reward": "observation.reward"}))
    with pytest.raises(DataError, match="a camera cannot be stored as 'action'"):
        LeRobotConverter(src, Declaration(keys={"observation.images.front": "action", "action": "observation.act"}))


def test_cli_convert_info_validate(src, tmp_path):
    runner = CliRunner()
    dst = tmp_path / "cli.zarr"
    result = runner.invoke(app, ["data", "convert", "--from", "lerobot", str(src), str(dst)])
    assert result.exit_code == 0, result.output
    assert "converted lerobot" in result.output and str(sum(LENGTHS)) in result.output
    result = runner.invoke(app, ["data", "info", str(dst)])
    assert result.exit_code == 0, result.output
    assert "so_fixture_arm" in result.output and "camera front" in result.output
    result = runner.invoke(app, ["data", "validate", str(dst)])
    assert result.exit_code == 0, result.output
    assert "ok" in result.output


def test_old_codebase_version_is_refused_clearly(src, tmp_path):
    old = copy_of(src, tmp_path)
    info_path = old / "meta/info.json"
    info = json.loads(info_path.read_text())
    info["codebase_version"] = "v2.1"
    info_path.write_text(json.dumps(info))
    with pytest.raises(DataError) as err:
        convert("lerobot", old, tmp_path / "o.zarr", progress=False)
    message = str(err.value)
    assert err.value.path == str(info_path) and err.value.key == "codebase_version"
    assert "meta/info.json" in message and "codebase_version" in message
    assert "'v2.1'" in message and "v3" in message
    assert not (tmp_path / "o.zarr").exists() and not (tmp_path / "o.zarr.partial").exists()


def test_missing_info_json(src, tmp_path):
    broken = copy_of(src, tmp_path)
    (broken / "meta/info.json").unlink()
    with pytest.raises(DataError, match=r"meta/info\.json: missing"):
        convert("lerobot", broken, tmp_path / "o.zarr", progress=False)


def test_missing_video_file_names_the_file(src, tmp_path):
    broken = copy_of(src, tmp_path)
    video = next((broken / "videos").rglob("*.mp4"))
    video.unlink()
    with pytest.raises(DataError) as err:
        convert("lerobot", broken, tmp_path / "o.zarr", progress=False)
    assert err.value.path == str(video) and err.value.key == "observation.images.front"
    assert "missing" in err.value.problem


def test_fixture_defaults_are_all_video_and_alternating_tasks(tmp_path):
    """The keyword call other modules make; every camera video-backed unless told otherwise."""
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    root = write_lerobot_dataset(tmp_path / "d", num_episodes=2, episode_len=2, image_size=(16, 32), seed=0)
    info = json.loads((root / "meta/info.json").read_text())
    assert info["codebase_version"].startswith("v3.")
    feats = info["features"]
    assert {k: v["dtype"] for k, v in feats.items() if k.startswith("observation.images.")} == {
        "observation.images.front": "video",
        "observation.images.wrist": "video",
    }
    assert feats["observation.state"]["names"][-1] == "gripper.pos"
    assert all(n.endswith(".pos") for n in feats["observation.state"]["names"])
    ds = LeRobotDataset("vla/fixture", root=root)
    assert [ds[i]["task"] for i in range(4)] == [DEFAULT_TASKS[0]] * 2 + [DEFAULT_TASKS[1]] * 2
    assert ds[3]["observation.images.wrist"].shape == (3, 16, 32)
    with pytest.raises(ValueError, match="at least 32 px wide"):  # instead of a crashed encoder process
        write_lerobot_dataset(tmp_path / "e", num_episodes=1, episode_len=2, image_size=(32, 16))
