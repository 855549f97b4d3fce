"""Missing chunks are errors, never zeros: zarr reads a deleted chunk back as its fill value."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import google_crc32c
import numpy as np
import pytest
import zarr

from vla.datasets.convert.base import convert
from vla.datasets.declare import Declaration
from vla.datasets.sampler import FrameReader
from vla.datasets.store import Store, missing_chunks
from vla.datasets.validate import validate_store
from vla.errors import DataError
from vla.testing.dp_zarr import DpZarrWriter, synthetic_pusht_episode, write_pusht_zarr

pytestmark = pytest.mark.filterwarnings("ignore:Object at .* is not recognized:UserWarning")

LENGTHS = [4, 7, 5]
IMG = "observation.images.img"


def _chunk(src: Path, key: str, fmt: int) -> Path:
    """The first chunk file of data/<key> in a v2 or v3 source."""
    folder = src / "data" / key
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.name not in (".zarray", ".zattrs", "zarr.json"))
    return files[0]


def _convert(src: Path, dst: Path, **decl) -> Store:
    return convert("dp-zarr", src, dst, Declaration(fps=10, **decl), progress=False).store


@pytest.mark.parametrize("fmt", [2, 3])
@pytest.mark.parametrize("key", ["action", "img"])
def test_dp_zarr_source_with_a_deleted_chunk_is_refused(tmp_path, fmt, key):
    src = write_pusht_zarr(tmp_path / "src.zarr", 3, LENGTHS, image_size=8, zarr_format=fmt)
    _chunk(src, key, fmt).unlink()
    with pytest.raises(DataError, match=rf"\[data/{key}\]: chunk .* missing"):
        _convert(src, tmp_path / "out.zarr")
    assert not (tmp_path / "out.zarr").exists()


@pytest.mark.parametrize("fmt", [2, 3])
def test_dp_zarr_source_array_whose_metadata_vanished_is_refused(tmp_path, fmt):
    src = write_pusht_zarr(tmp_path / "src.zarr", 3, LENGTHS, image_size=8, zarr_format=fmt)
    (src / "data/keypoint" / (".zarray" if fmt == 2 else "zarr.json")).unlink()
    with pytest.raises(DataError, match=r"\[data/keypoint\]: holds chunks but no array metadata"):
        _convert(src, tmp_path / "out.zarr")
    assert not (tmp_path / "out.zarr").exists()


@pytest.fixture
def store(tmp_path) -> Store:
    src = write_pusht_zarr(tmp_path / "src.zarr", 3, LENGTHS, image_size=8)
    return _convert(src, tmp_path / "out.zarr", task="push the T")


def test_a_valid_store_has_every_chunk(store):
    assert validate_store(store.path) == []


def test_all_zero_chunks_are_written_so_they_are_not_mistaken_for_missing(tmp_path):
    # One task (episode_task all 0), a black frame and all-zero extra values: all equal the fill value.
    w = DpZarrWriter(tmp_path / "src.zarr")
    ep = synthetic_pusht_episode(5, 0, image_size=8, with_images=True, seed=0)
    ep["img"][:] = 0
    ep["n_contacts"][:] = 0
    w.add_episode(ep)
    store = _convert(tmp_path / "src.zarr", tmp_path / "out.zarr", task="push the T")
    assert store.episode_task.tolist() == [0]
    assert validate_store(store.path) == []


def test_validate_reports_a_deleted_action_chunk(store):
    (store.path / "data/action/c/0/0").unlink()
    assert any(p.startswith("data/action: chunk c/0/0 missing") for p in validate_store(store.path))


def test_validate_reports_a_deleted_meta_chunk(store):
    (store.path / "meta/episode_task/c/0").unlink()
    assert any(p.startswith("meta/episode_task: chunk c/0 missing") for p in validate_store(store.path))


def test_validate_reports_a_deleted_image_shard(store):
    shard = store.path / "data" / IMG / "c/0/0/0/0"
    shard.unlink()
    assert any(p.startswith(f"data/{IMG}: chunk c/0/0/0/0 missing") for p in validate_store(store.path))


def _mark_frame_empty(store: Store, frame: int) -> None:
    """Rewrite the first image shard's index (checksum included) as if a frame had never been written."""
    shard = store.path / "data" / IMG / "c/0/0/0/0"
    per = json.loads((store.path / "data" / IMG / "zarr.json").read_text())["chunk_grid"]["configuration"]
    size = per["chunk_shape"][0] * 16 + 4
    raw = bytearray(shard.read_bytes())
    index = np.frombuffer(bytes(raw[-size:-4]), "<u8").reshape(-1, 2).copy()
    index[frame] = 2**64 - 1
    body = index.astype("<u8").tobytes()
    raw[-size:] = body + google_crc32c.value(body).to_bytes(4, "little")
    shard.write_bytes(bytes(raw))


def test_validate_reports_a_frame_missing_inside_an_image_shard(store):
    """The sampler reads shards directly: an inner chunk marked empty in the index is a black frame."""
    _mark_frame_empty(store, 2)
    assert missing_chunks(zarr.open_array(store.path / "data" / IMG, mode="r")) == ["c/0/0/0/0 (inner chunk 2)"]
    assert any("inner chunk 2" in p for p in validate_store(store.path))


def test_validate_reports_an_array_whose_metadata_vanished(store):
    (store.path / "data/action/zarr.json").unlink()
    assert "data/action: array is missing" in validate_store(store.path)


def test_store_copied_without_a_chunk_directory(store, tmp_path):
    copy = tmp_path / "copy.zarr"
    shutil.copytree(store.path, copy)
    shutil.rmtree(copy / "data/timestamp/c")
    assert any(p.startswith("data/timestamp: chunk c/0 missing") for p in validate_store(copy))
    assert os.path.exists(store.path / "data/timestamp/c")


def test_sampler_refuses_a_deleted_shard_instead_of_black_frames(store):
    (store.path / "data" / IMG / "c/0/0/0/0").unlink()
    with pytest.raises(DataError, match="missing"):
        FrameReader(store.path, IMG, (8, 8, 3)).read(0, np.zeros((2, 8, 8, 3), np.uint8))


def test_sampler_refuses_a_frame_missing_inside_a_shard(store):
    _mark_frame_empty(store, 1)
    reader = FrameReader(store.path, IMG, (8, 8, 3))
    reader.read(0, np.zeros((1, 8, 8, 3), np.uint8))  # frame 0 is there
    with pytest.raises(DataError, match="frame 1 of the shard: missing"):
        reader.read(0, np.zeros((2, 8, 8, 3), np.uint8))


@pytest.mark.parametrize("key", ["meta/episode_ends", "meta/annotations/task"])
def test_validate_reports_a_meta_array_whose_metadata_vanished(store, key):
    (store.path / key / "zarr.json").unlink()
    assert f"{key}: array is missing" in validate_store(store.path)
