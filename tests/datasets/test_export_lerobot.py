"""Store -> LeRobot (lerobot's own writer) -> store: the same episodes, frames, tasks and actions.

Round trips from a store converted from a LeRobot recording (video camera + PNG camera, a task
change inside an episode) and from a LIBERO store; LeRobot's reader opens every export.
"""

from __future__ import annotations

import numpy as np
import pytest
from typer.testing import CliRunner

from vla.cli import app
from vla.datasets.convert.base import convert
from vla.datasets.export.lerobot import ExportOptions, export_lerobot
from vla.datasets.store import Store
from vla.errors import DataError
from vla.testing.lerobot import DEFAULT_TASKS, write_lerobot_dataset
from vla.testing.libero_hdf5 import write_libero_hdf5

LENGTHS = [10, 14]
SIZE = (32, 48)  # AV1 needs >= 32 px wide; not square, so a transposed frame fails on shape


def task_fn(episode: int, frame: int) -> str:
    return "close the drawer" if episode == 1 and frame >= 6 else DEFAULT_TASKS[episode % 2]


@pytest.fixture(scope="module")
def lerobot_store(tmp_path_factory) -> Store:
    tmp = tmp_path_factory.mktemp("src")
    src = write_lerobot_dataset(
        tmp / "rec",
        2,
        LENGTHS,
        cameras=("front", "wrist"),
        image_size=SIZE,
        video_cameras=("front",),
        fps=15,
        seed=1,
        robot_type="so_fixture_arm",
        task_fn=task_fn,
    )
    return convert("lerobot", src, tmp / "store.zarr", progress=False).store


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def assert_round_trip(store: Store, back: Store, lossless: set[str]) -> dict[str, tuple[int, float]]:
    """Everything equal except video frames; returns (max abs error, PSNR dB) per video camera."""
    assert back.num_episodes == store.num_episodes and back.num_frames == store.num_frames
    assert back.episode_ends.tolist() == store.episode_ends.tolist()
    assert back.fps == store.fps
    assert sorted(back.keys) == sorted(store.keys)
    errors = {}
    for i in range(store.num_episodes):
        a, b = store.episode(i), back.episode(i)
        assert b.task == a.task and b.annotations == a.annotations
        np.testing.assert_allclose(b.timestamps, a.timestamps, atol=1e-5)
        for key, values in a.frames.items():
            got = b.frames[key]
            if key.startswith("observation.images.") and key not in lossless:
                assert got.shape == values.shape and got.dtype == np.uint8
                diff = np.abs(got.astype(np.int16) - values.astype(np.int16))
                prev = errors.get(key, (0, np.inf))
                errors[key] = (max(prev[0], int(diff.max())), min(prev[1], psnr(got, values)))
            else:
                np.testing.assert_array_equal(got.reshape(values.shape), values, err_msg=f"episode {i} {key}")
                assert got.dtype == values.dtype, key
    return errors


def test_lerobot_store_round_trip(lerobot_store, tmp_path):
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    dst = tmp_path / "exported"
    summary = export_lerobot(lerobot_store, dst)
    assert summary.episodes == 2 and not (tmp_path / "exported.partial").exists()

    ds = LeRobotDataset("local/exported", root=dst, video_backend="pyav")  # LeRobot's own reader
    assert len(ds) == sum(LENGTHS) and ds.meta.total_episodes == 2 and ds.fps == 15
    assert ds.meta.robot_type == "so_fixture_arm"
    assert set(ds.meta.video_keys) == {"observation.images.front", "observation.images.wrist"}
    assert sorted(ds.meta.tasks.index) == sorted([*DEFAULT_TASKS, "close the drawer"])
    assert ds[LENGTHS[0] + 7]["task"] == "close the drawer"

    back = convert("lerobot", dst, tmp_path / "back.zarr", progress=False).store
    assert back.tasks == lerobot_store.tasks and back.spec.robot_type == "so_fixture_arm"
    assert [d.name for d in back.spec.action] == [d.name for d in lerobot_store.spec.action]
    errors = assert_round_trip(lerobot_store, back, lossless=set())
    for key, (max_abs, db) in errors.items():
        print(f"{key}: AV1 re-encode of {SIZE} frames: max abs error {max_abs}, worst-episode PSNR {db:.1f} dB")
        assert db > 25  # lerobot's default AV1 (crf 30, yuv420p) on 32x48 frames: measured 27-38 dB


def test_libero_store_round_trip_through_the_cli(tmp_path):
    src = write_libero_hdf5(tmp_path / "open_the_drawer_demo.hdf5", "open the drawer", 2, [6, 9], (32, 40))
    store = convert("libero", src, tmp_path / "libero.zarr", progress=False).store
    dst = tmp_path / "libero_lerobot"
    args = ["data", "export", "--to", "lerobot", str(store.path), str(dst), "--images", "png"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    back = convert("lerobot", dst, tmp_path / "back.zarr", progress=False).store
    assert back.spec.robot_type == store.spec.robot_type
    errors = assert_round_trip(store, back, lossless=set(store.camera_keys))  # PNG: every pixel equal
    assert errors == {}


def test_refusals(lerobot_store, tmp_path):
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "notes.txt").write_text("mine")
    with pytest.raises(DataError, match="already exists"):
        export_lerobot(lerobot_store, tmp_path / "taken")
    with pytest.raises(DataError, match="not a LeRobot dataset"):
        export_lerobot(lerobot_store, tmp_path / "taken", ExportOptions(overwrite=True))
    assert (tmp_path / "taken" / "notes.txt").read_text() == "mine"
    with pytest.raises(DataError, match="image mode"):
        export_lerobot(lerobot_store, tmp_path / "x", ExportOptions(images="gif"))
