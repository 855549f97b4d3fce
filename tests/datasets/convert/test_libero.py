"""LIBERO HDF5 -> store: every converted value against its source, plus the fixture's real layout."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import h5py
import numpy as np
import pytest

from vla.datasets.conventions.libero import STATE_DIMS
from vla.datasets.convert.base import convert
from vla.datasets.convert.libero import language_from_filename
from vla.datasets.declare import Declaration, preset
from vla.datasets.libero_hdf5 import quat_to_axis_angle
from vla.datasets.store import Store
from vla.datasets.validate import validate_store
from vla.errors import DataError
from vla.testing.libero_hdf5 import write_libero_hdf5

CAMS = ("agentview", "eye_in_hand")
SIZE = (12, 16)  # not square: a transposed image would not even have the right shape


def rot180(images: np.ndarray) -> np.ndarray:
    """Independent of the converter's slicing: numpy's rot90 twice over the (H, W) axes."""
    return np.rot90(images, k=2, axes=(1, 2))


def assert_episode_matches(store: Store, index: int, path: Path, demo: str, rotated: dict[str, bool]) -> None:
    ep = store.episode(index)
    with h5py.File(path, "r") as f:
        g = f[f"data/{demo}"]
        obs = g["obs"]
        n = g["actions"].shape[0]
        assert ep.length == n
        np.testing.assert_array_equal(ep.frames["action"], g["actions"][()].astype(np.float32))
        state = np.concatenate([obs["ee_pos"][()], obs["ee_ori"][()], obs["gripper_states"][()]], axis=1)
        np.testing.assert_array_equal(ep.frames["observation.state"], state.astype(np.float32))
        # Extra keys verbatim: same dtype, bit-identical values.
        for key, src in (("observation.joint_state", "joint_states"), ("observation.gripper_state", "gripper_states")):
            assert ep.frames[key].dtype == obs[src].dtype
            np.testing.assert_array_equal(ep.frames[key], obs[src][()])
        for cam, flip in rotated.items():
            src = obs[f"{cam}_rgb"][()]
            np.testing.assert_array_equal(ep.frames[f"observation.images.{cam}"], rot180(src) if flip else src)
    np.testing.assert_allclose(ep.timestamps, np.arange(n) / store.fps, atol=1e-6)


def test_round_trip_every_value(tmp_path):
    src = write_libero_hdf5(tmp_path / "pick_up_the_bowl_demo.hdf5", "pick up the black bowl", 3, [5, 8, 3], SIZE)
    store = convert("libero", src, tmp_path / "out.zarr", progress=False).store

    assert store.num_episodes == 3 and store.num_frames == 16
    assert store.episode_ends.tolist() == [5, 13, 16]
    assert store.fps == 20.0 and store.spec.embodiment == "libero_panda" and store.spec.robot_type == "panda"
    assert store.tasks == ["pick up the black bowl"] and store.episode_task.tolist() == [0, 0, 0]
    for i in range(3):
        assert_episode_matches(store, i, src, f"demo_{i}", {c: True for c in CAMS})
    # The description says what was done, so nothing about the data is implicit.
    spec = store.spec
    assert spec.action == preset("eef_delta_axis_angle_gripper") and spec.state == STATE_DIMS
    assert [(c.name, c.height, c.width, c.orientation, c.source_orientation) for c in spec.cameras] == [
        ("agentview", 12, 16, "upright", "rotated_180"),
        ("eye_in_hand", 12, 16, "upright", "rotated_180"),
    ]
    assert {k: (v.dtype, v.shape) for k, v in spec.extra_keys.items()} == {
        "observation.joint_state": ("float64", (7,)),
        "observation.gripper_state": ("float64", (2,)),
    }
    assert spec.source.format == "libero" and spec.source.path == str(src)
    details = spec.source.details
    assert details["language_source"] == {src.name: "problem_info.language_instruction"}
    assert details["macros_image_convention"] == "opengl" and details["demos_per_file"] == [3]
    assert store.action_slots == (0, 1, 2, 3, 4, 5, 7)
    assert validate_store(store.path) == []


def test_folder_of_task_files_in_file_then_numeric_demo_order(tmp_path):
    folder = tmp_path / "libero_mini"
    # 11 demos of distinct lengths: a lexicographic sort (demo_10 before demo_2) would misplace boundaries.
    a = write_libero_hdf5(folder / "a_task_demo.hdf5", "open the drawer", 11, list(range(1, 12)), (8, 8), seed=1)
    b = write_libero_hdf5(folder / "b_task_demo.hdf5", "close the drawer", 2, [4, 2], (8, 8), seed=2)
    (folder / "notes.txt").write_text("not a task file")
    summary = convert("libero", folder, tmp_path / "out.zarr", progress=False)
    store = summary.store

    assert store.num_episodes == 13 and summary.episodes_written == 13
    assert np.diff(np.concatenate([[0], store.episode_ends])).tolist() == [*range(1, 12), 4, 2]
    assert store.tasks == ["open the drawer", "close the drawer"]
    assert store.episode_task.tolist() == [0] * 11 + [1] * 2
    order = [(a, f"demo_{i}") for i in range(11)] + [(b, "demo_0"), (b, "demo_1")]
    for i, (path, demo) in enumerate(order):
        assert_episode_matches(store, i, path, demo, {c: True for c in CAMS})
    assert store.spec.source.details["files"] == [a.name, b.name]


def test_orientation_from_declaration_and_from_file_convention(tmp_path):
    src = write_libero_hdf5(tmp_path / "t_demo.hdf5", "stack the blocks", 2, 4, SIZE)
    decl = Declaration(camera_orientation={"agentview": "upright"})
    store = convert("libero", src, tmp_path / "declared.zarr", decl, progress=False).store
    for i in range(2):
        assert_episode_matches(store, i, src, f"demo_{i}", {"agentview": False, "eye_in_hand": True})
    assert {c.name: c.source_orientation for c in store.spec.cameras} == {
        "agentview": "upright",
        "eye_in_hand": "rotated_180",
    }
    # A file rendered in robosuite's "opencv" convention is already upright.
    cv = write_libero_hdf5(tmp_path / "cv_demo.hdf5", "stack the blocks", 1, 4, SIZE, image_convention="opencv")
    store = convert("libero", cv, tmp_path / "cv.zarr", progress=False).store
    assert_episode_matches(store, 0, cv, "demo_0", {c: False for c in CAMS})
    assert all(c.source_orientation == "upright" for c in store.spec.cameras)


def test_declarations_that_do_not_fit_are_refused(tmp_path):
    src = write_libero_hdf5(tmp_path / "t_demo.hdf5", "x", 1, 2, (4, 4))
    with pytest.raises(DataError, match="unknown camera"):
        convert("libero", src, tmp_path / "o.zarr", Declaration(camera_orientation={"front": "upright"}))
    with pytest.raises(DataError, match="unknown orientation 'sideways'"):
        convert("libero", src, tmp_path / "o.zarr", Declaration(camera_orientation={"agentview": "sideways"}))
    with pytest.raises(DataError, match="keys are fixed"):
        convert("libero", src, tmp_path / "o.zarr", Declaration(keys={"actions": "action"}))
    with pytest.raises(DataError, match="state has 8 dimensions, declared 2"):
        convert("libero", src, tmp_path / "o.zarr", Declaration(state=preset("joint1_gripper")))
    assert not (tmp_path / "o.zarr").exists()


def test_state_only_file_and_declared_overrides(tmp_path):
    src = write_libero_hdf5(tmp_path / "t_demo.hdf5", "turn on the stove", 2, [3, 4], with_images=False)
    decl = Declaration(fps=10, embodiment="my_panda", robot_type="panda_v2")
    store = convert("libero", src, tmp_path / "out.zarr", decl, progress=False).store
    assert store.spec.cameras == () and not any(k.startswith("observation.images") for k in store.keys)
    assert (store.fps, store.spec.embodiment, store.spec.robot_type) == (10.0, "my_panda", "panda_v2")
    for i in range(2):
        assert_episode_matches(store, i, src, f"demo_{i}", {})
    np.testing.assert_allclose(store.episode(1).timestamps, np.arange(4) / 10.0, atol=1e-6)


def test_folder_files_must_agree_on_cameras(tmp_path):
    write_libero_hdf5(tmp_path / "src" / "a_demo.hdf5", "a", 1, 2, (4, 4))
    bad = write_libero_hdf5(tmp_path / "src" / "b_demo.hdf5", "b", 1, 2, with_images=False)
    dst = tmp_path / "out.zarr"
    with pytest.raises(DataError) as e:
        convert("libero", tmp_path / "src", dst, progress=False)
    assert e.value.path == str(bad) and "cameras" in e.value.problem and "all files must agree" in e.value.problem
    assert not dst.exists() and not dst.with_name("out.zarr.partial").exists()


def test_robomimic_style_file_without_problem_info(tmp_path):
    src = write_libero_hdf5(tmp_path / "image.hdf5", None, 2, 3, (4, 4), libero_attrs=False)
    with h5py.File(src) as f:
        assert "problem_info" not in f["data"].attrs and "env_args" in f["data"].attrs
    store = convert("libero", src, tmp_path / "none.zarr", progress=False).store
    assert store.tasks == [] and store.episode_task.tolist() == [-1, -1]
    assert "pass --task" in store.spec.source.details["language_source"]["image.hdf5"]
    assert_episode_matches(store, 1, src, "demo_1", {c: True for c in CAMS})

    store = convert("libero", src, tmp_path / "task.zarr", Declaration(task="lift the cube"), progress=False).store
    assert store.tasks == ["lift the cube"] and store.episode_task.tolist() == [0, 0]


def test_language_falls_back_to_the_file_name(tmp_path):
    name = "KITCHEN_SCENE10_put_the_black_bowl_in_the_top_drawer_demo.hdf5"
    src = write_libero_hdf5(tmp_path / name, "", 1, 2, (4, 4))
    store = convert("libero", src, tmp_path / "out.zarr", progress=False).store
    assert store.tasks == ["put the black bowl in the top drawer"]
    assert "file name" in store.spec.source.details["language_source"][name]


def _libero_grab_language():
    """LIBERO's own `grab_language_from_filename`, compiled from its installed source (importing
    libero.libero.benchmark would load robosuite: seconds this test does not need)."""
    import libero.libero

    source_file = Path(libero.libero.__file__).parent / "benchmark" / "__init__.py"
    tree = ast.parse(source_file.read_text())
    fn = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "grab_language_from_filename")
    namespace: dict = {}
    exec(compile(ast.Module(body=[fn], type_ignores=[]), str(source_file), "exec"), namespace)
    return namespace["grab_language_from_filename"]


def test_file_name_language_agrees_with_libero_for_every_task():
    import importlib.util

    import libero.libero

    grab = _libero_grab_language()
    map_file = Path(libero.libero.__file__).parent / "benchmark" / "libero_suite_task_map.py"
    spec = importlib.util.spec_from_file_location("_libero_task_map", map_file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    tasks = {t for suite in module.libero_task_map.values() for t in suite}
    assert len(tasks) >= 130
    for task in tasks:
        assert language_from_filename(f"{task}_demo.hdf5") == grab(task + ".bddl"), task
    assert language_from_filename("image.hdf5") is None


# --- the fixture writes LIBERO's real layout ----------------------------------------------------


def test_fixture_has_libero_layout(tmp_path):
    src = write_libero_hdf5(tmp_path / "t_demo.hdf5", "pick up the book", 2, [4, 6], (8, 8))
    with h5py.File(src, "r") as f:
        data = f["data"]
        info = json.loads(data.attrs["problem_info"])
        assert info == {
            "problem_name": "libero_tabletop_manipulation",
            "domain_name": "robosuite",
            "language_instruction": "pick up the book",
        }
        env_args = json.loads(data.attrs["env_args"])
        assert {"type", "env_name", "problem_name", "bddl_file", "env_kwargs"} <= set(env_args)
        assert data.attrs["macros_image_convention"] == "opengl"
        assert {"bddl_file_name", "bddl_file_content", "env_name"} <= set(data.attrs)
        assert (data.attrs["num_demos"], data.attrs["total"]) == (2, 10)
        g = data["demo_1"]
        assert set(g) == {"actions", "obs", "states", "robot_states", "rewards", "dones"}
        assert set(g["obs"]) == {
            "agentview_rgb", "eye_in_hand_rgb", "gripper_states", "joint_states", "ee_pos", "ee_ori", "ee_states",
        }  # fmt: skip
        assert g.attrs["num_samples"] == 6 and "<mujoco" in g.attrs["model_file"]
        np.testing.assert_array_equal(g.attrs["init_state"], g["states"][0])
        obs = g["obs"]
        assert obs["agentview_rgb"].shape == (6, 8, 8, 3) and obs["agentview_rgb"].dtype == np.uint8
        np.testing.assert_array_equal(obs["ee_states"][()], np.concatenate([obs["ee_pos"], obs["ee_ori"]], axis=1))
        # robot_states = gripper_qpos + eef_pos + eef_quat, whose axis-angle is ee_ori (create_dataset.py).
        rs = g["robot_states"][()]
        np.testing.assert_array_equal(rs[:, :2], obs["gripper_states"][()])
        np.testing.assert_array_equal(rs[:, 2:5], obs["ee_pos"][()])
        np.testing.assert_allclose(quat_to_axis_angle(rs[:, 5:9]), obs["ee_ori"][()], atol=1e-9)
        assert g["rewards"][()].tolist() == [0, 0, 0, 0, 0, 1] and g["dones"].dtype == np.uint8
        frames = obs["eye_in_hand_rgb"][()]
        assert len({f.tobytes() for f in frames}) == 6  # structured, moving content
        assert not np.array_equal(frames[0], rot180(frames[:1])[0])  # a flip is visible


def test_libero_own_reader_accepts_the_fixture(tmp_path, capsys):
    from libero.libero.utils.dataset_utils import get_dataset_info

    src = write_libero_hdf5(tmp_path / "t_demo.hdf5", "pick up the book", 3, [4, 5, 6], (8, 8))
    get_dataset_info(str(src), verbose=False)
    out = capsys.readouterr().out
    assert "total transitions: 15" in out and "language instruction: pick up the book" in out
