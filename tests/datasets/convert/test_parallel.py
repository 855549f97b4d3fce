"""`convert(..., workers=N)`: episodes read in spawned processes, the store identical to a serial
conversion (LIBERO HDF5, LeRobot v3 with a video and a PNG camera, dp-zarr), a resumed parallel run
identical too, and a worker's bad-input error reaching the caller unchanged."""

from __future__ import annotations

import multiprocessing as mp
from pathlib import Path

import h5py
import numpy as np
import pytest

from vla.datasets.convert.base import convert
from vla.datasets.declare import Declaration
from vla.datasets.store import INDEX_KEYS, Store, StoreWriter
from vla.errors import DataError
from vla.testing.dp_zarr import write_pusht_zarr
from vla.testing.lerobot import write_lerobot_dataset
from vla.testing.libero_hdf5 import write_libero_hdf5


def assert_same_store(a: Store, b: Store) -> None:
    assert a.meta == b.meta
    for key in (*a.keys, *INDEX_KEYS):
        np.testing.assert_array_equal(a.array(key)[:], b.array(key)[:], err_msg=key)
    for key in ("meta/episode_ends", "meta/episode_task"):
        np.testing.assert_array_equal(a.root[key][:], b.root[key][:], err_msg=key)


def libero(tmp: Path) -> tuple[str, Path, Declaration]:
    folder = tmp / "suite"
    write_libero_hdf5(folder / "a_demo.hdf5", "open the drawer", 3, [3, 5, 4], (8, 8), seed=1)
    write_libero_hdf5(folder / "b_demo.hdf5", "close the drawer", 2, [4, 3], (8, 8), seed=2)
    return "libero", folder, Declaration()


def lerobot(tmp: Path) -> tuple[str, Path, Declaration]:
    root = write_lerobot_dataset(tmp / "lerobot", 4, [5, 3, 6, 4], cameras=("front", "wrist"), image_size=(32, 32),
                                 video_cameras=("front",), fps=10, seed=3)  # fmt: skip
    return "lerobot", root, Declaration()


def dp_zarr(tmp: Path) -> tuple[str, Path, Declaration]:
    return "dp-zarr", write_pusht_zarr(tmp / "pusht.zarr", 4, [3, 5, 4, 2], image_size=8), Declaration(fps=10)


@pytest.mark.parametrize("source", [libero, lerobot, dp_zarr], ids=["libero", "lerobot-video", "dp-zarr"])
def test_two_workers_write_the_serial_store(tmp_path, source):
    fmt, src, decl = source(tmp_path)
    serial = convert(fmt, src, tmp_path / "serial.zarr", decl, progress=False).store
    summary = convert(fmt, src, tmp_path / "parallel.zarr", decl, progress=False, workers=2)
    assert summary.episodes_written == serial.num_episodes
    assert_same_store(summary.store, serial)
    assert not mp.active_children(), "the worker processes are gone"


def test_a_killed_parallel_conversion_resumes_to_the_same_store(tmp_path, monkeypatch):
    fmt, src, decl = libero(tmp_path)
    serial = convert(fmt, src, tmp_path / "serial.zarr", decl, progress=False).store
    dst = tmp_path / "out.zarr"
    real_add = StoreWriter.add_episode

    def add_then_die(self, ep):
        if self.done_episodes == 2:
            raise KeyboardInterrupt  # like Ctrl-C while workers read episodes 2..
        real_add(self, ep)

    with monkeypatch.context() as m, pytest.raises(KeyboardInterrupt):
        m.setattr(StoreWriter, "add_episode", add_then_die)
        convert(fmt, src, dst, decl, progress=False, workers=2)
    assert not mp.active_children()
    summary = convert(fmt, src, dst, decl, progress=False, workers=2)
    assert (summary.episodes_skipped, summary.episodes_written) == (2, 3)
    assert_same_store(summary.store, serial)


def test_a_workers_data_error_reaches_the_caller(tmp_path):
    fmt, src, decl = libero(tmp_path)
    with h5py.File(src / "a_demo.hdf5", "r+") as f:
        del f["data/demo_2/actions"]
    with pytest.raises(DataError) as caught:
        convert(fmt, src, tmp_path / "out.zarr", decl, progress=False, workers=2)
    assert "a_demo.hdf5" in str(caught.value) and "demo_2" in str(caught.value)
    with pytest.raises(DataError, match="--workers must be >= 1"):
        convert(fmt, src, tmp_path / "out.zarr", decl, progress=False, workers=0)
