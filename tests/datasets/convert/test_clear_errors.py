"""Broken sources end in one DataError naming the file, the key and the problem, never a traceback."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest

from vla.datasets.convert.base import convert
from vla.datasets.declare import Declaration
from vla.errors import DataError
from vla.testing.dp_zarr import write_pusht_zarr
from vla.testing.libero_hdf5 import write_libero_hdf5

PROBLEM_INFO = r"\[data\.attrs\['problem_info'\]"


def _fails(fmt: str, src: Path, dst: Path, match: str, **decl) -> DataError:
    with pytest.raises(DataError, match=match) as info:
        convert(fmt, src, dst, Declaration(**decl), progress=False)
    assert str(src) in str(info.value) or str(info.value).startswith(str(src.parent))
    assert "\n" not in str(info.value)
    assert not dst.exists()
    return info.value


# --- LIBERO -------------------------------------------------------------------------------------
@pytest.fixture
def libero(tmp_path) -> Path:
    return write_libero_hdf5(tmp_path / "t_demo.hdf5", "pick up the bowl", 2, 3, (4, 4))


def _set_problem_info(path: Path, value, dtype=None) -> None:
    with h5py.File(path, "a") as f:
        f["data"].attrs.create("problem_info", value, dtype=dtype)


@pytest.mark.parametrize(
    "dtype", [None, h5py.string_dtype("utf-8")], ids=["fixed-length bytes", "utf-8 string (read as surrogates)"]
)
def test_libero_non_utf8_problem_info(libero, tmp_path, dtype):
    raw = b'{"language_instruction": "pick \xff"}'
    _set_problem_info(libero, np.bytes_(raw) if dtype is None else raw, dtype)
    _fails("libero", libero, tmp_path / "out.zarr", PROBLEM_INFO + r"\]: not UTF-8 text")


@pytest.mark.parametrize("value", [3, {"text": "pick"}, 2.5, [1, 2]])
def test_libero_language_instruction_that_is_not_text(libero, tmp_path, value):
    _set_problem_info(libero, json.dumps({"language_instruction": value}))
    _fails("libero", libero, tmp_path / "out.zarr", PROBLEM_INFO + r"\.language_instruction\]: expected text")


def test_libero_word_list_instruction_still_reads(libero, tmp_path):
    _set_problem_info(libero, json.dumps({"language_instruction": ["pick", "up", "the", "bowl"]}))
    store = convert("libero", libero, tmp_path / "out.zarr", Declaration(), progress=False).store
    assert store.tasks == ["pick up the bowl"]


@pytest.mark.parametrize("key", ["actions", "obs/ee_pos"])
def test_libero_arrays_of_strings(libero, tmp_path, key):
    with h5py.File(libero, "a") as f:
        shape = f[f"data/demo_1/{key}"].shape
        del f[f"data/demo_1/{key}"]
        f.create_dataset(f"data/demo_1/{key}", data=np.full(shape, b"abc"))
    _fails("libero", libero, tmp_path / "out.zarr", rf"\[data/demo_1/{key}\]: expected numbers, got dtype \|S3")


@pytest.mark.parametrize("group", ["data", "data/demo_0/obs"])
def test_libero_member_name_that_is_not_utf8(libero, tmp_path, group):
    with h5py.File(libero, "a") as f:
        f[group].create_dataset(b"cam\xff_rgb", data=np.zeros(3))
    _fails("libero", libero, tmp_path / "out.zarr", rf"\[{group}\]: member name b'cam\\xff_rgb' is not UTF-8")


# --- Diffusion-Policy Zarr -----------------------------------------------------------------------
@pytest.fixture
def dp_src(tmp_path) -> Path:
    return write_pusht_zarr(tmp_path / "src.zarr", 2, [3, 4], image_size=8)


def test_dp_zarr_object_dtype(dp_src, tmp_path):
    meta_path = dp_src / "data/action/.zarray"
    meta = json.loads(meta_path.read_text())
    meta.update(dtype="|O", filters=None)  # an object array without its object codec: zarr cannot type it
    meta_path.write_text(json.dumps(meta))
    _fails("dp-zarr", dp_src, tmp_path / "out.zarr", r"\[data/action\]: cannot read its metadata", fps=10)


def test_dp_zarr_object_dtype_with_codec(dp_src, tmp_path):
    meta_path = dp_src / "data/keypoint/.zarray"
    meta = json.loads(meta_path.read_text())
    meta.update(dtype="|O", filters=[{"id": "vlen-utf8"}])
    meta_path.write_text(json.dumps(meta))
    _fails("dp-zarr", dp_src, tmp_path / "out.zarr", r"\[data/keypoint\]: unsupported dtype", fps=10)


@pytest.mark.parametrize("target", ["self", "parent"])
def test_dp_zarr_symlink_loop(dp_src, tmp_path, target):
    link = dp_src / "data/loop"
    os.symlink(link if target == "self" else dp_src / "data", link)
    if target == "self":
        _fails(
            "dp-zarr",
            dp_src,
            tmp_path / "out.zarr",
            r"\[data/loop\]: cannot read its metadata .*symbolic links",
            fps=10,
        )
    else:  # a link back to its parent is not followed: the data converts as if it were absent
        convert("dp-zarr", dp_src, tmp_path / "out.zarr", Declaration(fps=10), progress=False)


# --- LeRobot -------------------------------------------------------------------------------------
DATA = "data/chunk-000/file-000.parquet"
EPISODES = "meta/episodes/chunk-000/file-000.parquet"


@pytest.fixture
def lerobot(small_lerobot, tmp_path) -> Path:
    copy = tmp_path / "src"
    shutil.copytree(small_lerobot, copy)
    return copy


def _truncate(path: Path) -> None:
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])


def _edit_info(src: Path, edit) -> None:
    path = src / "meta/info.json"
    info = json.loads(path.read_text())
    edit(info)
    path.write_text(json.dumps(info))


@pytest.mark.parametrize("rel", [DATA, EPISODES, "meta/tasks.parquet"])
def test_lerobot_truncated_parquet_is_named(lerobot, tmp_path, rel):
    _truncate(lerobot / rel)
    err = _fails("lerobot", lerobot, tmp_path / "out.zarr", "not a readable Parquet file, truncated or corrupt")
    assert err.path == str(lerobot / rel)


def test_lerobot_action_shape_that_disagrees_with_the_data(lerobot, tmp_path):
    _edit_info(lerobot, lambda info: info["features"]["action"].update(shape=[9]))
    err = _fails("lerobot", lerobot, tmp_path / "out.zarr", r"\[features\.action\.shape\]: is \[9\].* holds 7")
    assert err.path == str(lerobot / "meta/info.json")


@pytest.mark.parametrize("total", [5, 2, "3"])
def test_lerobot_wrong_total_episodes(lerobot, tmp_path, total):
    _edit_info(lerobot, lambda info: info.update(total_episodes=total))
    _fails("lerobot", lerobot, tmp_path / "out.zarr", r"\[total_episodes\]: says .*, meta/episodes/ lists 3 episodes")


def test_lerobot_feature_missing_from_the_data(lerobot, tmp_path):
    _edit_info(lerobot, lambda info: info["features"].update({"observation.extra": {"dtype": "float32", "shape": [2]}}))
    _fails("lerobot", lerobot, tmp_path / "out.zarr", r"\[observation\.extra\]: column missing")


@pytest.mark.parametrize("content", ["", '{"action": {"mean": [1, 2', "[1, 2]"])
def test_lerobot_broken_stats_json_is_named(lerobot, tmp_path, content):
    (lerobot / "meta/stats.json").write_text(content)
    err = _fails("lerobot", lerobot, tmp_path / "out.zarr", "cannot read as JSON|expected a JSON object")
    assert err.path == str(lerobot / "meta/stats.json")


@pytest.mark.parametrize("value", [3, {}, {"dtype": "float32", "shape": True}, {"dtype": "float32", "shape": [0]}])
def test_lerobot_feature_entry_that_is_not_a_feature(lerobot, tmp_path, value):
    _edit_info(lerobot, lambda info: info["features"].update(action=value))
    _fails("lerobot", lerobot, tmp_path / "out.zarr", r"\[features\.action(\.shape)?\]: expected")


def test_lerobot_garbled_page_inside_a_parquet_is_named(lerobot, tmp_path):
    """Footer intact, a compressed page garbled: lerobot itself says only which error, not which file."""
    path = lerobot / EPISODES
    raw = bytearray(path.read_bytes())
    footer = int.from_bytes(raw[-8:-4], "little")  # Parquet ends with the footer, its length and b"PAR1"
    for i in range(4, len(raw) - 8 - footer):  # every data page, nothing of the footer
        raw[i] ^= 83
    path.write_bytes(bytes(raw))
    err = _fails("lerobot", lerobot, tmp_path / "out.zarr", "cannot read, corrupt")
    assert err.path == str(path)
