"""Diffusion-Policy replay-buffer Zarr -> store: every converted value against its source."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import zarr

from vla.datasets.convert.base import convert
from vla.datasets.declare import Declaration, preset
from vla.datasets.spec import DimSpec
from vla.datasets.store import Store
from vla.datasets.validate import validate_store
from vla.errors import DataError
from vla.testing.dp_zarr import DpZarrWriter, synthetic_pusht_episode, write_pusht_zarr

LENGTHS = [4, 7, 5]


def source_arrays(path: Path) -> dict[str, np.ndarray]:
    root = zarr.open_group(path, mode="r")
    return {name: np.asarray(arr[:]) for name, arr in root["data"].arrays()} | {
        "_ends": np.asarray(root["meta/episode_ends"][:])
    }


def assert_matches_source(store: Store, src: dict[str, np.ndarray], mapping: dict[str, str], flip=()) -> None:
    ends = src["_ends"]
    assert store.episode_ends.tolist() == ends.tolist()
    starts = np.concatenate([[0], ends[:-1]])
    for i, (s, e) in enumerate(zip(starts, ends, strict=True)):
        ep = store.episode(i)
        for name, target in mapping.items():
            expected = src[name][s:e]
            got = ep.frames[target]
            if target.startswith("observation.images."):
                expected = expected.astype(np.uint8)
                if target.rsplit(".", 1)[1] in flip:
                    expected = np.rot90(expected, k=2, axes=(1, 2))
                assert got.dtype == np.uint8
            elif target in ("action", "observation.state"):
                expected = expected.astype(np.float32)
            else:
                assert got.dtype == expected.dtype  # extra keys kept verbatim
            np.testing.assert_array_equal(got, expected, err_msg=f"{name} -> {target}, episode {i}")
        np.testing.assert_allclose(ep.timestamps, np.arange(e - s) / store.fps, atol=1e-6)


PUSHT_DEFAULTS = {
    "action": "action",
    "state": "observation.state",
    "img": "observation.images.img",
    "keypoint": "observation.keypoint",
    "n_contacts": "observation.n_contacts",
}


def test_round_trip_v2_every_value(tmp_path):
    src = write_pusht_zarr(tmp_path / "pusht.zarr", 3, LENGTHS, image_size=16)
    assert (src / ".zgroup").exists() and json.loads((src / "data/img/.zarray").read_text())["chunks"] == [1, 16, 16, 3]
    store = convert("dp-zarr", src, tmp_path / "out.zarr", Declaration(fps=10, task="push the T"), progress=False).store

    assert store.num_episodes == 3 and store.num_frames == sum(LENGTHS) and store.fps == 10.0
    assert store.tasks == ["push the T"] and store.episode_task.tolist() == [0, 0, 0]
    assert_matches_source(store, source_arrays(src), PUSHT_DEFAULTS)
    spec = store.spec
    assert spec.action == (DimSpec("action_0"), DimSpec("action_1"))
    assert [d.name for d in spec.state] == [f"state_{i}" for i in range(5)] and all(
        d.kind == "other" for d in spec.state
    )
    assert spec.extra_keys["observation.keypoint"].shape == (9, 2)
    assert [(c.name, c.orientation, c.source_orientation) for c in spec.cameras] == [("img", "upright", "upright")]
    assert spec.source.format == "dp-zarr" and spec.source.version == "zarr v2"
    assert spec.source.details["keys"] == PUSHT_DEFAULTS
    assert "not declared" in spec.source.details["action_dims"] and spec.embodiment == "pusht"
    assert validate_store(store.path) == []


def test_v3_store_with_float_images_like_the_released_pusht(tmp_path):
    src = write_pusht_zarr(tmp_path / "pusht3.zarr", 3, LENGTHS, image_size=8, zarr_format=3, float_images=True)
    assert (src / "zarr.json").exists() and zarr.open_group(src, mode="r")["data/img"].dtype == np.float32
    store = convert("dp-zarr", src, tmp_path / "out.zarr", Declaration(fps=10), progress=False).store
    assert store.tasks == [] and store.episode_task.tolist() == [-1, -1, -1]
    assert_matches_source(store, source_arrays(src), PUSHT_DEFAULTS)
    assert store.spec.source.version == "zarr v3"
    assert store.spec.source.details["float_images_cast_to_uint8"] == ["img"]


def test_declared_keys_dims_and_orientation(tmp_path):
    src = write_pusht_zarr(tmp_path / "pusht.zarr", 3, LENGTHS, image_size=8)
    decl = Declaration(
        fps=10,
        embodiment="pusht_sim",
        action=preset("pusht_xy"),
        keys={"img": "observation.images.top", "keypoint": "observation.block_keypoints"},
        camera_orientation={"top": "rotated_180"},
        state=tuple(DimSpec(n, "eef_pos" if n.startswith("agent") else "other") for n in
                    ("agent_x", "agent_y", "block_x", "block_y", "block_angle")),
    )  # fmt: skip
    store = convert("dp-zarr", src, tmp_path / "out.zarr", decl, progress=False).store
    mapping = {**PUSHT_DEFAULTS, "img": "observation.images.top", "keypoint": "observation.block_keypoints"}
    assert_matches_source(store, source_arrays(src), mapping, flip=("top",))
    assert store.spec.action == preset("pusht_xy") and store.spec.state[0].name == "agent_x"
    assert store.spec.cameras[0].source_orientation == "rotated_180" and store.spec.embodiment == "pusht_sim"
    assert store.spec.source.details["action_dims"] == "declared"


def test_agent_pos_is_the_state_and_a_declared_state_moves_the_default_aside(tmp_path):
    src = tmp_path / "rb.zarr"
    w = DpZarrWriter(src)
    rng = np.random.default_rng(0)
    for n in (3, 4):
        w.add_episode(
            {
                "action": rng.normal(size=(n, 3)),
                "agent_pos": rng.normal(size=(n, 3)),
                "done": np.arange(n) == n - 1,
                "camera_0": rng.integers(0, 256, (n, 6, 5, 3), dtype=np.uint8),
            }
        )
    store = convert("dp-zarr", src, tmp_path / "a.zarr", Declaration(fps=5), progress=False).store
    mapping = {
        "action": "action",
        "agent_pos": "observation.state",
        "done": "observation.done",
        "camera_0": "observation.images.camera_0",
    }
    assert_matches_source(store, source_arrays(src), mapping)
    assert store.keys["observation.done"].dtype == "bool"

    decl = Declaration(fps=5, keys={"action": "observation.state", "agent_pos": "action"})
    store = convert("dp-zarr", src, tmp_path / "b.zarr", decl, progress=False).store
    assert_matches_source(store, source_arrays(src), {**mapping, "action": "observation.state", "agent_pos": "action"})


def test_zip_store(tmp_path):
    folder = write_pusht_zarr(tmp_path / "pusht.zarr", 2, [3, 4], image_size=8)
    zipped = tmp_path / "pusht.zarr.zip"
    with zipfile.ZipFile(zipped, "w", compression=zipfile.ZIP_STORED) as z:
        for p in sorted(folder.rglob("*")):
            if p.is_file():
                z.write(p, p.relative_to(folder).as_posix())
    store = convert("dp-zarr", zipped, tmp_path / "out.zarr", Declaration(fps=10), progress=False).store
    assert_matches_source(store, source_arrays(folder), PUSHT_DEFAULTS)


def test_fps_must_be_declared(tmp_path):
    src = write_pusht_zarr(tmp_path / "pusht.zarr", 1, 3, image_size=8)
    with pytest.raises(DataError) as e:
        convert("dp-zarr", src, tmp_path / "out.zarr", Declaration(), progress=False)
    assert e.value.path == str(src) and "--fps" in e.value.problem and "--declare" in e.value.problem
    assert not (tmp_path / "out.zarr").exists()


def test_mapping_problems_are_named(tmp_path):
    src = write_pusht_zarr(tmp_path / "pusht.zarr", 1, 3, image_size=8)
    cases = [
        ({"keypoint": "observation.state"}, "data/keypoint", "numeric (N, D)"),
        ({"state": "action", "action": "action"}, "data/state", "as does data/action"),
        ({"state": "episode_index"}, "data/state", "cannot map"),
        ({"state": "observation.images.s"}, "data/state", "images must be"),
        ({"nope": "action"}, "data/nope", "absent"),
        ({"action": "observation.a"}, "data/action", "no action array"),
    ]
    for keys, key, problem in cases:
        with pytest.raises(DataError) as e:
            convert("dp-zarr", src, tmp_path / "out.zarr", Declaration(fps=10, keys=keys), progress=False)
        assert (e.value.key, problem in e.value.problem) == (key, True), (keys, str(e.value))
    with pytest.raises(DataError, match="declared 3 dimensions, the data has 2"):
        convert(
            "dp-zarr", src, tmp_path / "out.zarr", Declaration(fps=10, action=preset("joint2_gripper")), progress=False
        )


def test_episode_fixture_is_structured():
    ep = synthetic_pusht_episode(6, 0, 16, True, 0)
    frames = ep["img"]
    assert frames.dtype == np.uint8 and len({f.tobytes() for f in frames}) == 6
    assert not np.array_equal(frames[0], np.rot90(frames[0], 2))
