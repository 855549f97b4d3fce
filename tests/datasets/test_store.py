from __future__ import annotations

import json

import numpy as np
import pytest

from tests.datasets.store_helpers import small_spec, toy_episode, write_toy_store
from vla.datasets.spec import DimSpec, StoreSpec
from vla.datasets.store import JOURNAL, Episode, Store, StoreWriter
from vla.datasets.validate import validate_store
from vla.errors import DataError


def test_round_trip_every_value(tmp_path):
    spec = small_spec()
    rng = np.random.default_rng(1)
    episodes = [toy_episode(i, n, spec, rng) for i, n in enumerate([5, 9, 3])]
    w = StoreWriter(tmp_path / "s.zarr", spec)
    for ep in episodes:
        w.add_episode(ep)
    store = w.finalize()
    assert store.num_episodes == 3 and store.num_frames == 17
    assert store.episode_ends.tolist() == [5, 14, 17]
    assert store.tasks == ["task 0", "task 1"]
    for i, ep in enumerate(episodes):
        got = store.episode(i)
        assert got.task == ep.task
        for key, value in ep.frames.items():
            np.testing.assert_array_equal(got.frames[key], value)
        np.testing.assert_allclose(got.timestamps, np.arange(len(ep.frames["action"])) / spec.fps, atol=1e-6)
    assert store.array("episode_index")[:].tolist() == [0] * 5 + [1] * 9 + [2] * 3
    assert validate_store(store.path) == []


def test_statistics_match_numpy(tmp_path):
    store = write_toy_store(tmp_path / "s.zarr", [40, 60])
    action = store.array("action")[:].astype(np.float64)
    st = store.stats["action"]
    np.testing.assert_allclose(st["mean"], action.mean(0), rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(st["std"], action.std(0), rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(st["q01"], np.quantile(action, 0.01, axis=0), rtol=1e-6)
    np.testing.assert_allclose(st["q99"], np.quantile(action, 0.99, axis=0), rtol=1e-6)
    np.testing.assert_allclose(st["min"], action.min(0))
    img = store.array("observation.images.front")[:].astype(np.float64) / 255
    np.testing.assert_allclose(store.stats["observation.images.front"]["mean"], img.reshape(-1, 3).mean(0), rtol=1e-6)


def test_partial_store_is_never_complete_and_resumes(tmp_path):
    spec = small_spec()
    rng = np.random.default_rng(2)
    episodes = [toy_episode(i, 4 + i, spec, rng) for i in range(4)]
    dst = tmp_path / "s.zarr"
    w = StoreWriter(dst, spec, source_fingerprint="src-A")
    for ep in episodes[:2]:
        w.add_episode(ep)
    # A killed job: half of the third episode reached the arrays, the journal never recorded it.
    arr = w.root["data"]["action"]
    arr.resize((arr.shape[0] + 3, 7))
    del w
    assert not dst.exists()
    with pytest.raises(DataError, match="incomplete"):
        Store(dst.with_name(dst.name + ".partial"))

    w2 = StoreWriter(dst, spec, source_fingerprint="src-A")
    assert w2.resumed and w2.done_episodes == 2 and w2.num_frames == 4 + 5
    assert w2.root["data"]["action"].shape[0] == 9  # the half-written frames were trimmed
    for ep in episodes[2:]:
        w2.add_episode(ep)
    store = w2.finalize()
    for i, ep in enumerate(episodes):
        np.testing.assert_array_equal(store.episode(i).frames["action"], ep.frames["action"])
    assert not (dst / JOURNAL).exists() and not dst.with_name(dst.name + ".partial").exists()


def test_resume_refuses_a_different_source(tmp_path):
    spec = small_spec()
    rng = np.random.default_rng(3)
    dst = tmp_path / "s.zarr"
    w = StoreWriter(dst, spec, source_fingerprint="src-A")
    w.add_episode(toy_episode(0, 4, spec, rng))
    w2 = StoreWriter(dst, spec, source_fingerprint="src-B")
    assert not w2.resumed and w2.done_episodes == 0


def test_existing_output_needs_overwrite(tmp_path):
    dst = tmp_path / "s.zarr"
    write_toy_store(dst, [3])
    with pytest.raises(DataError, match="already exists"):
        StoreWriter(dst, small_spec())
    spec = small_spec()
    w = StoreWriter(dst, spec, overwrite=True)
    assert Store(dst).num_frames == 3  # the old store stays until the new one is complete
    w.add_episode(toy_episode(0, 6, spec, np.random.default_rng(0)))
    assert w.finalize().num_frames == 6


@pytest.mark.parametrize(
    ("mutate", "key", "problem"),
    [
        (lambda f: f.pop("observation.state"), "observation.state", "missing"),
        (lambda f: f.__setitem__("action", f["action"][:, :5]), "action", "expected shape"),
        (lambda f: f["action"].__setitem__((2, 1), np.nan), "action", "non-finite"),
        (
            lambda f: f.__setitem__("observation.images.front", f["observation.images.front"].astype(np.float32)),
            "observation.images.front",
            "uint8",
        ),
    ],
)
def test_bad_episode_names_key_and_problem(tmp_path, mutate, key, problem):
    spec = small_spec()
    ep = toy_episode(0, 5, spec, np.random.default_rng(0))
    ep.source_id = "demo_file.hdf5/demo_0"
    mutate(ep.frames)
    w = StoreWriter(tmp_path / "s.zarr", spec)
    with pytest.raises(DataError) as err:
        w.add_episode(ep)
    msg = str(err.value)
    assert "demo_file.hdf5/demo_0" in msg and key in msg and problem in msg


def test_empty_episode_and_empty_store_are_errors(tmp_path):
    spec = small_spec()
    ep = toy_episode(0, 0, spec, np.random.default_rng(0))
    w = StoreWriter(tmp_path / "s.zarr", spec)
    with pytest.raises(DataError, match="empty"):
        w.add_episode(ep)
    with pytest.raises(DataError, match="no episodes"):
        w.finalize()
    assert not (tmp_path / "s.zarr").exists()


def test_annotations_are_global_frame_windows(tmp_path):
    spec = small_spec()
    rng = np.random.default_rng(0)
    w = StoreWriter(tmp_path / "s.zarr", spec)
    w.add_episode(toy_episode(0, 10, spec, rng))
    ep = toy_episode(1, 8, spec, rng)
    ep.task = None
    ep.annotations = [(2, 6, "open the drawer"), (5, 8, "push the block")]
    w.add_episode(ep)
    store = w.finalize()
    assert store.annotations.tolist() == [[12, 16, 1], [15, 18, 2]]
    assert store.tasks == ["task 0", "open the drawer", "push the block"]
    assert store.task_of(1) is None
    assert store.episode(1).annotations == [(2, 6, "open the drawer"), (5, 8, "push the block")]


def test_unknown_schema_version_is_refused(tmp_path):
    store = write_toy_store(tmp_path / "s.zarr", [3])
    meta_file = store.path / "zarr.json"
    doc = json.loads(meta_file.read_text())
    doc["attributes"]["vla"]["schema_version"] = 99
    meta_file.write_text(json.dumps(doc))
    with pytest.raises(DataError, match="schema version 99"):
        Store(store.path)
    assert "schema version 99" in validate_store(store.path)[0]


def test_invalid_spec_is_rejected_before_writing(tmp_path):
    spec = StoreSpec(fps=0, embodiment="x", robot_type="", action=(DimSpec("a", kind="teleport"),))
    with pytest.raises(DataError, match="unknown kind 'teleport'"):
        StoreWriter(tmp_path / "s.zarr", spec)
    assert not (tmp_path / "s.zarr.partial").exists()


def test_validate_reports_each_problem(tmp_path):
    store = write_toy_store(tmp_path / "s.zarr", [4, 4])
    import zarr

    root = zarr.open_group(store.path, mode="r+")
    root["meta/episode_ends"][:] = np.array([5, 3])
    meta = dict(root.attrs["vla"])
    meta["stats"] = {k: v for k, v in meta["stats"].items() if k != "action"}
    root.attrs["vla"] = meta
    problems = validate_store(store.path)
    assert any("episode_ends" in p for p in problems)
    assert any("stats/action: missing" in p for p in problems)
    assert len(problems) == 2


def test_episode_requires_action():
    with pytest.raises(KeyError):
        _ = Episode(frames={}).length
