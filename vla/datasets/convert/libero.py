"""LIBERO (and robomimic-style) HDF5 demonstrations -> store episodes.

SRC is one `<task>_demo.hdf5` file or a folder of them (one per task, read in sorted order).
Episodes come in file order, then by demo number (demo_10 after demo_9). Each file is inspected
up front from its HDF5 metadata only (names, shapes, dtypes), so a bad file fails before anything
is written; arrays are read one demo at a time while converting.

What the store gets:
- `action`: the 7-D OSC_POSE delta action (`eef_delta_axis_angle_gripper`), unless declared.
- `observation.state`: 8-D [ee_pos(3), ee_ori(3, axis-angle), gripper_states(2)], the state
  openpi's LIBERO policies use.
- `observation.joint_state` (7) and `observation.gripper_state` (2): the source arrays verbatim.
- `observation.images.<cam>` for every `obs/<cam>_rgb` (agentview, eye_in_hand), stored upright:
  LIBERO renders in robosuite's "opengl" convention (upside down), so frames are rotated 180
  degrees unless the file says "opencv" or the declaration says the source is upright.
- language: `problem_info.language_instruction`; else the task name in a LIBERO file name
  (`<task>_demo.hdf5`, turned into words the way LIBERO's benchmark does); else the declared task.
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from vla.datasets.conventions.libero import (
    ACTION_PRESET,
    EMBODIMENT,
    FPS,
    GRIPPER_STATE_KEY,
    JOINT_STATE_KEY,
    ROBOT_TYPE,
    STATE_DIMS,
    TASK_FILE_SUFFIX,
)
from vla.datasets.convert.base import files_fingerprint, refuse_dangling_symlinks
from vla.datasets.declare import Declaration, preset
from vla.datasets.spec import ORIENTATIONS, CameraSpec, KeySpec, SourceInfo, StoreSpec
from vla.datasets.store import Episode
from vla.errors import DataError
from vla.keys import ACTION_KEY, STATE_KEY, camera_key

HDF5_SUFFIXES = (".hdf5", ".h5")
CAMERA_SUFFIX = "_rgb"
DEMO_NAME = re.compile(r"demo_(\d+)")
PROBLEM_INFO = "data.attrs['problem_info']"
# Low-dimensional obs arrays every demo needs, with their width (None: any width, same in all files).
LOWDIM_OBS: dict[str, int | None] = {"ee_pos": 3, "ee_ori": 3, "gripper_states": 2, "joint_states": None}


@dataclass(frozen=True)
class TaskFile:
    """What one file holds, from its metadata alone."""

    path: Path
    demos: tuple[str, ...]  # in numeric order
    language: str | None
    language_source: str
    image_convention: str | None
    cameras: tuple[tuple[str, int, int], ...]  # (name, height, width)
    joint_dim: int
    lowdim_dtype: str


def language_from_filename(name: str) -> str | None:
    """LIBERO's task language from a `<task>_demo.hdf5` name (its benchmark builds it the same way):
    drop a LIBERO-90 scene prefix such as `KITCHEN_SCENE10_`, then underscores become spaces."""
    if not name.endswith(TASK_FILE_SUFFIX):
        return None
    task = name[: -len(TASK_FILE_SUFFIX)]
    if task[:1].isupper():
        task = re.sub(r"^.*?SCENE\d+_", "", task)
    return task.replace("_", " ").strip() or None


def _open(path: Path) -> h5py.File:
    try:
        return h5py.File(path, "r")
    except OSError as e:
        raise DataError(path, None, f"cannot open as HDF5 (truncated or corrupt file?): {e}") from None


def _attr_text(path: Path, key: str, value: Any) -> str:
    """A text attribute as str: HDF5 stores them as bytes or str; anything else is not text."""
    if isinstance(value, np.ndarray) and value.shape == ():  # a scalar read back as a 0-d array
        value = value[()]
    if not isinstance(value, bytes | np.bytes_ | str):
        raise DataError(path, key, f"expected text, got {type(value).__name__} {str(value)[:80]!r}")
    try:
        if isinstance(value, str):
            value.encode()  # h5py decodes invalid UTF-8 to lone surrogates: encoding finds them
            return value
        return bytes(value).decode()
    except UnicodeError as e:
        raise DataError(path, key, f"not UTF-8 text ({e}); re-save the attribute as UTF-8") from None


def _demo_names(path: Path, data: h5py.Group) -> tuple[str, ...]:
    found = sorted((int(m.group(1)), k) for k in data if (m := DEMO_NAME.fullmatch(k)))
    if not found:
        raise DataError(path, "data", "no demo_<i> groups: nothing to convert")
    for (n0, k0), (n1, k1) in itertools.pairwise(found):
        if n0 == n1:  # demo_1 and demo_01 would both be episode 1: which one is meant is unknowable
            raise DataError(path, f"data/{k1}", f"same demo number {n0} as data/{k0}; remove or rename one")
    return tuple(k for _, k in found)


def _names(path: Path, group: h5py.Group, where: str) -> list[str]:
    """A group's member names, sorted; h5py gives a name that is not UTF-8 (a damaged file) as bytes."""
    names = list(group)
    bad = next((n for n in names if not isinstance(n, str)), None)
    if bad is not None:
        raise DataError(path, where, f"member name {bad!r} is not UTF-8 text (corrupt file?); restore the file")
    return sorted(names)


def _dataset(path: Path, group: h5py.Group, name: str, where: str) -> h5py.Dataset:
    if name not in group:
        raise DataError(path, f"{where}/{name}", "required array is missing")
    try:
        ds = group[name]
    except (KeyError, OSError) as e:  # listed but its header cannot be read
        raise DataError(path, f"{where}/{name}", f"cannot read (corrupt file?): {e}") from None
    if not isinstance(ds, h5py.Dataset):
        raise DataError(path, f"{where}/{name}", f"expected an array, found a {type(ds).__name__}")
    return ds


def _numeric(path: Path, ds: h5py.Dataset, key: str) -> h5py.Dataset:
    """Actions and low-dimensional observations must be numbers (not strings, compounds, ...)."""
    if ds.dtype.kind not in "iuf":
        raise DataError(path, key, f"expected numbers, got dtype {ds.dtype}; re-export the array as float")
    return ds


def _check_demo(path: Path, grp: h5py.Group, name: str, action_dim: int) -> tuple[tuple, int, str]:
    """Validate one demo's structure; returns its cameras, joint width and low-dim dtype."""
    where = f"data/{name}"
    actions = _numeric(path, _dataset(path, grp, "actions", where), f"{where}/actions")
    if actions.ndim != 2 or actions.shape[1] != action_dim:
        raise DataError(path, f"{where}/actions", f"expected shape (T, {action_dim}), got {actions.shape}")
    n = actions.shape[0]
    if n == 0:
        raise DataError(path, f"{where}/actions", "episode is empty (0 frames)")
    obs = grp.get("obs")
    if not isinstance(obs, h5py.Group):
        raise DataError(path, f"{where}/obs", "required group is missing")
    joint_dim = 0
    for key, width in LOWDIM_OBS.items():
        ds = _numeric(path, _dataset(path, obs, key, f"{where}/obs"), f"{where}/obs/{key}")
        if ds.ndim != 2 or ds.shape[0] != n or (width is not None and ds.shape[1] != width):
            expected = f"({n}, {width if width is not None else 'J'})"
            raise DataError(path, f"{where}/obs/{key}", f"expected shape {expected}, got {ds.shape}")
        joint_dim = ds.shape[1] if key == "joint_states" else joint_dim
    cameras = []
    for key in _names(path, obs, f"{where}/obs"):
        if not key.endswith(CAMERA_SUFFIX):
            continue
        ds = _dataset(path, obs, key, f"{where}/obs")
        if ds.ndim != 4 or ds.shape[0] != n or ds.shape[3] != 3 or ds.dtype != np.uint8:
            raise DataError(
                path, f"{where}/obs/{key}", f"expected uint8 images of shape ({n}, H, W, 3), got {ds.dtype} {ds.shape}"
            )
        cameras.append((key[: -len(CAMERA_SUFFIX)], int(ds.shape[1]), int(ds.shape[2])))
    return tuple(cameras), joint_dim, str(obs["joint_states"].dtype)


def _language(path: Path, data: h5py.Group, declared: str | None) -> tuple[str | None, str]:
    if declared:
        return declared, "declaration (task)"
    raw = data.attrs.get("problem_info")
    if raw is not None:
        text = _instruction(path, _attr_text(path, PROBLEM_INFO, raw))
        if text:
            return text, "problem_info.language_instruction"
    derived = language_from_filename(path.name)
    if derived:
        return derived, "file name (no language in problem_info; derived as LIBERO's benchmark does)"
    return None, "none (no problem_info and not a LIBERO file name; pass --task)"


def _instruction(path: Path, problem_info: str) -> str:
    """`language_instruction` of the problem_info JSON: text, or a word list; "" when absent."""
    try:
        info = json.loads(problem_info)
    except json.JSONDecodeError as e:
        raise DataError(path, PROBLEM_INFO, f"not valid JSON: {e}") from None
    text = info.get("language_instruction") if isinstance(info, dict) else None
    if isinstance(text, list) and all(isinstance(w, str) for w in text):  # LIBERO's BDDL parser may keep words
        text = " ".join(text)
    if text is not None and not isinstance(text, str):
        raise DataError(
            path,
            f"{PROBLEM_INFO}.language_instruction",
            f"expected text, got {type(text).__name__} {json.dumps(text)[:80]}; fix the file or pass --task",
        )
    return (text or "").strip().strip('"').strip()


def inspect_file(path: Path, action_dim: int, declared_task: str | None) -> TaskFile:
    """Everything the converter needs to know about a file, read from HDF5 metadata only."""
    with _open(path) as f:
        try:
            data = f.get("data")
            if not isinstance(data, h5py.Group):
                raise DataError(path, "data", "no 'data' group: not a LIBERO/robomimic demonstration file")
            _names(path, data, "data")  # text names only, before demo names are parsed
            demos = _demo_names(path, data)
            first = None
            for name in demos:
                layout = _check_demo(path, data[name], name, action_dim)
                first = first or (name, layout)
                if layout[:2] != first[1][:2]:
                    raise DataError(
                        path, f"data/{name}/obs", f"cameras/joints {layout[:2]} differ from {first[0]}'s {first[1][:2]}"
                    )
            language, source = _language(path, data, declared_task)
            convention = data.attrs.get("macros_image_convention")
        except (OSError, RuntimeError, KeyError) as e:  # damaged internals surface while walking the file
            raise DataError(path, None, f"cannot read the file's structure (corrupt file?): {e}") from None
    cameras, joint_dim, dtype = first[1]
    return TaskFile(
        path=path,
        demos=demos,
        language=language,
        language_source=source,
        image_convention=_attr_text(path, "data.attrs['macros_image_convention']", convention)
        if convention is not None
        else None,
        cameras=cameras,
        joint_dim=joint_dim,
        lowdim_dtype=dtype,
    )


def list_files(src: Path) -> list[Path]:
    if src.is_file():
        return [src]
    entries = list(src.iterdir())
    refuse_dangling_symlinks(entries)
    files = sorted(p for p in entries if p.is_file() and p.suffix in HDF5_SUFFIXES)
    if not files:
        raise DataError(src, None, f"no {' or '.join(HDF5_SUFFIXES)} files in this folder")
    return files


def _check_agreement(files: list[TaskFile]) -> None:
    """One store has one set of cameras and one state layout: every file must match the first."""
    ref = files[0]
    for tf in files[1:]:
        for what, mine, theirs in (
            ("cameras (name, H, W)", tf.cameras, ref.cameras),
            ("joint_states width", tf.joint_dim, ref.joint_dim),
            ("macros_image_convention", tf.image_convention, ref.image_convention),
        ):
            if mine != theirs:
                raise DataError(
                    tf.path, "data", f"{what} {mine} differ from {ref.path.name}'s {theirs}; all files must agree"
                )


class LiberoConverter:
    """Reads LIBERO task files (see the module docstring for the mapping)."""

    def __init__(self, src: Path, decl: Declaration):
        self.src = Path(src)
        self.decl = decl
        if decl.keys:  # silently ignoring a declaration would be worse than refusing it
            raise DataError(self.src, "keys", "LIBERO's keys are fixed; key renaming is for dp-zarr sources")
        self.action = decl.action or preset(ACTION_PRESET)
        self.state = decl.state or STATE_DIMS
        if len(self.state) != len(STATE_DIMS):
            raise DataError(
                self.src, "state", f"LIBERO's state has {len(STATE_DIMS)} dimensions, declared {len(self.state)}"
            )
        self.files = [inspect_file(p, len(self.action), decl.task) for p in list_files(self.src)]
        _check_agreement(self.files)
        self.orientation = self._orientations()

    def _orientations(self) -> dict[str, str]:
        """Source orientation per camera: declared, else from the file's image convention."""
        ref = self.files[0]
        default = "upright" if ref.image_convention == "opencv" else "rotated_180"
        names = [c for c, _, _ in ref.cameras]
        out = {}
        for cam, value in self.decl.camera_orientation.items():
            if cam not in names:
                raise DataError(self.src, cam, f"declared orientation for an unknown camera; cameras: {names}")
            if value not in ORIENTATIONS:
                raise DataError(self.src, cam, f"unknown orientation {value!r}; use one of {ORIENTATIONS}")
        for cam in names:
            out[cam] = self.decl.camera_orientation.get(cam, default)
        return out

    # --- the converter protocol ----------------------------------------------------------
    def spec(self) -> StoreSpec:
        ref = self.files[0]
        cameras = tuple(CameraSpec(c, h, w, 3, "upright", self.orientation[c]) for c, h, w in ref.cameras)
        extra = {
            JOINT_STATE_KEY: KeySpec(
                ref.lowdim_dtype, (ref.joint_dim,), tuple(f"joint_{i}" for i in range(ref.joint_dim))
            ),
            GRIPPER_STATE_KEY: KeySpec(ref.lowdim_dtype, (2,), ("finger_left", "finger_right")),
        }
        details = {
            "files": [tf.path.name for tf in self.files],
            "demos_per_file": [len(tf.demos) for tf in self.files],
            "language_source": {tf.path.name: tf.language_source for tf in self.files},
            "macros_image_convention": ref.image_convention,
            "state": "obs/ee_pos (3) + obs/ee_ori (3, axis-angle) + obs/gripper_states (2), as openpi",
            "extra_keys": {
                JOINT_STATE_KEY: "obs/joint_states",
                GRIPPER_STATE_KEY: "obs/gripper_states",
            },
            "not_converted": "states (flattened sim state), robot_states, rewards, dones, obs/ee_states",
        }
        return StoreSpec(
            fps=self.decl.fps or FPS,
            embodiment=self.decl.embodiment or EMBODIMENT,
            robot_type=self.decl.robot_type or ROBOT_TYPE,
            action=tuple(self.action),
            state=tuple(self.state),
            cameras=cameras,
            extra_keys=extra,
            source=SourceInfo(format="libero", path=str(self.src), details=details),
        )

    def num_episodes(self) -> int:
        return sum(len(tf.demos) for tf in self.files)

    def fingerprint(self) -> str:
        return files_fingerprint([tf.path for tf in self.files])

    def episodes(self, start: int = 0) -> Iterator[Episode]:
        skip = start
        for tf in self.files:
            if skip >= len(tf.demos):  # whole file already converted: not even opened
                skip -= len(tf.demos)
                continue
            with _open(tf.path) as f:
                for demo in tf.demos[skip:]:
                    yield self._read_episode(f, tf, demo)
            skip = 0

    # --- reading ---------------------------------------------------------------------------
    def _read_episode(self, f: h5py.File, tf: TaskFile, demo: str) -> Episode:
        where = f"data/{demo}"
        grp = f["data"][demo]
        actions = _read(tf.path, grp, "actions", where)
        obs = {k: _read(tf.path, grp["obs"], k, f"{where}/obs") for k in LOWDIM_OBS}
        state = np.concatenate([obs["ee_pos"], obs["ee_ori"], obs["gripper_states"]], axis=1)
        frames: dict[str, np.ndarray] = {
            ACTION_KEY: actions.astype(np.float32),
            STATE_KEY: state.astype(np.float32),
            JOINT_STATE_KEY: obs["joint_states"],
            GRIPPER_STATE_KEY: obs["gripper_states"],
        }
        for cam, _, _ in tf.cameras:
            images = _read(tf.path, grp["obs"], cam + CAMERA_SUFFIX, f"{where}/obs")
            if self.orientation[cam] == "rotated_180":  # upside down in the source: flip H and W
                images = np.ascontiguousarray(images[:, ::-1, ::-1])
            frames[camera_key(cam)] = images
        return Episode(frames=frames, task=tf.language, source_id=f"{tf.path}:{where}")


def _read(path: Path, group: h5py.Group, name: str, where: str) -> np.ndarray:
    try:
        arr = np.asarray(group[name][()])
    except (OSError, KeyError, RuntimeError) as e:
        raise DataError(path, f"{where}/{name}", f"cannot read (truncated or corrupt file?): {e}") from None
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        bad = np.argwhere(~np.isfinite(arr))[0]
        raise DataError(path, f"{where}/{name}", f"non-finite value (NaN or inf) at frame {int(bad[0])}")
    return arr
