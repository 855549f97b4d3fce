"""CALVIN split folders -> store episodes.

SRC is a split folder (`training/` or `validation/`, the one holding `ep_start_end_ids.npy`) or a
dataset root such as `task_D_D/` holding `training/`, which then converts `training/`. To convert
the validation split, pass the split folder itself (`task_D_D/validation`).

Episodes and language:
- One store episode per continuous segment of `ep_start_end_ids.npy` (rows are (first, last)
  frame ids, last INCLUSIVE; sorted by first id, since CALVIN's split script permutes them). Every
  frame `episode_XXXXXXX.npz` of a segment is kept, so the unlabeled play data stays: an
  episode's task is None (or the declared `task`).
- `lang_annotations/auto_lang_ann.npy` windows (`info.indx`, last id inclusive, as CALVIN's
  loaders read them) become the episode's annotations with their text (`language.ann`), in
  episode-relative frames with an exclusive end. A window that is not inside one segment is an
  error. The precomputed embeddings (`language.emb`) are not stored: the text is re-encoded by
  whichever language encoder a policy uses. The task names (`language.task`) go to the source
  details.

What the store gets:
- `action`: `rel_actions` (scaled relative tcp motion + gripper, preset `eef_rel_euler_gripper`),
  kept absolute `actions` as `action.absolute`. Declaring an absolute action space
  (`--action-space eef_abs_euler_gripper`) swaps them: `action` = `actions`, `action.relative`
  = `rel_actions`.
- `observation.state`: `robot_obs` (15), `observation.scene_obs`: `scene_obs` (24), with names.
- cameras `static` (`rgb_static`, 200x200) and `gripper` (`rgb_gripper`, 84x84), upright as
  CALVIN renders them. Depth and tactile streams are not converted.
- fps 30 (CALVIN's control rate), embodiment `calvin_panda`.

Frames are read one file at a time into the episode's preallocated arrays, so memory holds one
segment, never the dataset. Bad input raises DataError naming the file, the key and the problem.
"""

from __future__ import annotations

import itertools
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from vla.datasets.conventions.calvin import (
    ABS_PRESET,
    CAMERAS,
    EMBODIMENT,
    FPS,
    LOWDIM_WIDTH,
    REL_PRESET,
    ROBOT_OBS_DIMS,
    ROBOT_TYPE,
    calvin_spec,
    camera_key,
    lowdim_targets,
)
from vla.datasets.convert.base import files_fingerprint
from vla.datasets.declare import Declaration, preset
from vla.datasets.npyfile import load_npy
from vla.datasets.spec import ORIENTATIONS, KeySpec, SourceInfo, StoreSpec
from vla.datasets.store import Episode
from vla.errors import DataError

TRAINING = "training"
IDS_FILE = "ep_start_end_ids.npy"
LANG_FILE = Path("lang_annotations") / "auto_lang_ann.npy"
SCENE_FILE = "scene_info.npy"
STATS_FILE = "statistics.yaml"
NOT_CONVERTED = ("depth_static", "depth_gripper", "rgb_tactile", "depth_tactile")
FRAME_NAME = re.compile(r"episode_\d{7,}\.npz")
# Garbled bytes fail inside numpy, zipfile, zlib or the .npy header parser with almost any exception
# type (NotImplementedError, TokenError, ...): while reading a file, every one of them means "corrupt".
UNREADABLE = (Exception,)


def frame_path(split: Path, frame_id: int) -> Path:
    return split / f"episode_{frame_id:07d}.npz"


def find_split(src: Path) -> Path:
    """The split folder to convert: SRC itself, or SRC/training for a dataset root."""
    if (src / IDS_FILE).is_file():
        return src
    if (src / TRAINING / IDS_FILE).is_file():
        return src / TRAINING
    raise DataError(
        src / IDS_FILE,
        None,
        "missing: SRC must be a CALVIN split folder (training/ or validation/, holding "
        f"{IDS_FILE}) or a dataset root whose training/ holds it",
    )


def read_segments(path: Path) -> list[tuple[int, int]]:
    """(first, last) inclusive frame ids of the continuous segments, sorted, checked for overlap."""
    ids = load_npy(path, pickled=False)
    if not (isinstance(ids, np.ndarray) and ids.ndim == 2 and ids.shape[1] == 2 and ids.dtype.kind in "iu"):
        got = f"shape {ids.shape}, dtype {ids.dtype}" if isinstance(ids, np.ndarray) else type(ids).__name__
        raise DataError(path, None, f"expected a (K, 2) integer array of (first, last) frame ids, got {got}")
    if len(ids) == 0:
        raise DataError(path, None, "no segments: the split is empty")
    for row, (first, last) in enumerate(ids.tolist()):
        if first < 0 or last < first:
            raise DataError(path, f"row {row}", f"segment ({first}, {last}) is not a valid (first, last) id range")
    segments = sorted((int(a), int(b)) for a, b in ids.tolist())
    for (a0, b0), (a1, b1) in itertools.pairwise(segments):
        if a1 <= b0:
            raise DataError(path, None, f"segments ({a0}, {b0}) and ({a1}, {b1}) overlap")
    return segments


def _optional_file(path: Path) -> bool:
    """Whether an optional index file is there; a dangling symlink is an error, not an absent file."""
    if path.is_symlink() and not path.exists():
        raise DataError(path, None, "dangling symlink: its target does not exist; fix the link or remove it")
    return path.is_file()


def check_frame_count(split: Path, segments: list[tuple[int, int]]) -> None:
    """Refuse a segment longer than the folder's frame files, before its arrays are allocated.

    (A shorter segment with a missing frame fails when that frame is read, after the segments
    before it are committed, so a resume continues from there.)"""
    present = sum(1 for entry in os.scandir(split) if FRAME_NAME.fullmatch(entry.name))
    for first, last in segments:
        if last - first + 1 > present:
            raise DataError(
                split / IDS_FILE,
                None,
                f"segment ({first}, {last}) claims {last - first + 1} frames but the folder holds only {present} "
                "episode_XXXXXXX.npz files; fix the id range or restore the missing frames",
            )


def _lang_list(lang: dict, path: Path, group: str, key: str) -> list[Any]:
    try:
        value = lang[group][key]
    except (KeyError, TypeError, IndexError):
        raise DataError(path, f"{group}.{key}", "missing from the annotation dict") from None
    try:
        return list(value)
    except TypeError:
        raise DataError(path, f"{group}.{key}", f"expected a list, got {type(value).__name__}") from None


def _segment_of(segments: list[tuple[int, int]], starts: np.ndarray, frame_id: int) -> int | None:
    k = int(np.searchsorted(starts, frame_id, side="right")) - 1
    return k if k >= 0 and frame_id <= segments[k][1] else None


def read_language(
    path: Path, segments: list[tuple[int, int]]
) -> tuple[dict[int, list[tuple[int, int, str]]], list[str], int]:
    """Segment number -> its windows (segment-relative start, exclusive end, text); task names; count."""
    if not _optional_file(path):
        return {}, [], 0
    lang = load_npy(path)
    if not isinstance(lang, dict):
        raise DataError(path, None, f"expected a pickled dict with 'language' and 'info', got {type(lang).__name__}")
    texts = _lang_list(lang, path, "language", "ann")
    spans = _lang_list(lang, path, "info", "indx")
    tasks = _lang_list(lang, path, "language", "task")
    if len(spans) != len(texts) or len(tasks) != len(texts):
        raise DataError(
            path,
            "info.indx",
            f"{len(spans)} windows, {len(texts)} texts (language.ann), {len(tasks)} task ids (language.task)",
        )
    starts = np.asarray([a for a, _ in segments], np.int64)
    out: dict[int, list[tuple[int, int, str]]] = {}
    for n, (span, text) in enumerate(zip(spans, texts, strict=True)):
        key = f"info.indx[{n}]"
        try:
            first, last = (int(v) for v in span)
        except (TypeError, ValueError, OverflowError):
            raise DataError(path, key, f"expected a (first, last) pair of frame ids, got {span!r}") from None
        if last < first:
            raise DataError(path, key, f"window ({first}, {last}) ends before it starts")
        if not isinstance(text, str) or not text.strip():
            raise DataError(path, f"language.ann[{n}]", f"expected a non-empty instruction, got {text!r}")
        k = _segment_of(segments, starts, first)
        if k is None or last > segments[k][1]:
            where = "lies in a gap between segments" if k is None else f"crosses the end of segment {segments[k]}"
            raise DataError(path, key, f"window ({first}, {last}) is not inside one continuous segment: it {where}")
        a = segments[k][0]
        out.setdefault(k, []).append((first - a, last - a + 1, str(text)))
    for windows in out.values():
        windows.sort(key=lambda w: (w[0], w[1]))
    return out, sorted({str(t) for t in tasks}), len(texts)


def read_scene_info(path: Path) -> dict[str, list[int]]:
    """scene name -> [first id, last id] (training splits only; recorded as the file says)."""
    if not _optional_file(path):
        return {}
    info = load_npy(path)
    if not isinstance(info, dict):
        raise DataError(
            path, None, f"expected a pickled dict of scene name -> [first id, last id], got {type(info).__name__}"
        )
    try:
        return {str(name): [int(a), int(b)] for name, (a, b) in info.items()}
    except (TypeError, ValueError, OverflowError) as e:
        raise DataError(path, None, f"expected scene name -> [first id, last id]: {e}") from None


def _checked_lowdim(path: Path, key: str, arr: np.ndarray, width: int) -> np.ndarray:
    if arr.shape != (width,):
        raise DataError(path, key, f"expected shape ({width},), got {arr.shape}")
    if arr.dtype.kind not in "fiu":
        raise DataError(path, key, f"expected numbers, got dtype {arr.dtype}")
    finite = np.isfinite(arr)
    if not finite.all():
        raise DataError(path, key, f"non-finite value (NaN or inf) at index {int(np.argmin(finite))}")
    return arr


def _checked_image(path: Path, key: str, img: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    if img.dtype != np.uint8 or img.shape != shape:
        raise DataError(
            path, key, f"expected a uint8 image of shape {shape} (as the first frame's), got {img.dtype} {img.shape}"
        )
    return img


class CalvinConverter:
    """Reads one CALVIN split (see the module docstring for the mapping)."""

    def __init__(self, src: Path, decl: Declaration):
        self.decl = decl
        self.src = find_split(Path(src))
        if decl.keys:  # silently ignoring a declaration would be worse than refusing it
            raise DataError(self.src, "keys", "CALVIN's keys are fixed: --key does not apply")
        self.action = decl.action or preset(REL_PRESET)
        self.state = decl.state or ROBOT_OBS_DIMS
        for what, declared, n in (("action", self.action, 7), ("state", self.state, 15)):
            if len(declared) != n:
                raise DataError(self.src, what, f"CALVIN's {what} has {n} dimensions, declared {len(declared)}")
        # An absolute tcp-position action means the `actions` array; anything else `rel_actions`.
        absolute = any(d.kind == "eef_pos" and d.mode == "absolute" for d in self.action)
        self.action_source = "actions" if absolute else "rel_actions"
        self.other_action_key = "action.relative" if absolute else "action.absolute"
        self.lowdim_targets = lowdim_targets(self.action_source)
        self.orientation = self._orientations()
        self.segments = read_segments(self.src / IDS_FILE)
        check_frame_count(self.src, self.segments)
        self.windows, self.task_names, self.num_windows = read_language(self.src / LANG_FILE, self.segments)
        self.scenes = read_scene_info(self.src / SCENE_FILE)
        self.image_shapes = self._image_shapes()

    def _orientations(self) -> dict[str, str]:
        names = list(CAMERAS.values())
        for cam, value in self.decl.camera_orientation.items():
            if cam not in names:
                raise DataError(self.src, cam, f"declared orientation for an unknown camera; cameras: {names}")
            if value not in ORIENTATIONS:
                raise DataError(self.src, cam, f"unknown orientation {value!r}; use one of {ORIENTATIONS}")
        return {cam: self.decl.camera_orientation.get(cam, "upright") for cam in names}

    def _image_shapes(self) -> dict[str, tuple[int, int, int]]:
        """Camera frame shapes, from the first frame (every other frame must match them)."""
        path = frame_path(self.src, self.segments[0][0])
        with self._open(path, self.segments[0]) as z:
            shapes = {}
            for key in CAMERAS:
                img = self._member(z, path, key)
                if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
                    raise DataError(path, key, f"expected a uint8 (H, W, 3) image, got {img.dtype} {img.shape}")
                shapes[key] = img.shape
        return shapes

    # --- reading frames ----------------------------------------------------------------------
    def _open(self, path: Path, segment: tuple[int, int]) -> np.lib.npyio.NpzFile:
        if not path.is_file():
            raise DataError(path, None, f"frame file is missing (segment {segment} of {IDS_FILE} includes it)")
        try:
            z = np.load(path, allow_pickle=False)
        except UNREADABLE as e:
            raise DataError(path, None, f"cannot read the npz file (truncated or corrupt?): {e}") from None
        if not isinstance(z, np.lib.npyio.NpzFile):
            raise DataError(path, None, "not an npz archive")
        return z

    @staticmethod
    def _member(z: np.lib.npyio.NpzFile, path: Path, key: str) -> np.ndarray:
        if key not in z.files:
            raise DataError(path, key, "required array is missing")
        try:
            return z[key]
        except UNREADABLE as e:
            raise DataError(path, key, f"cannot read the array (truncated or corrupt?): {e}") from None

    def _read_frame(self, frame_id: int, segment: tuple[int, int]) -> dict[str, np.ndarray]:
        """The arrays one frame contributes, checked for presence, shape, dtype and finiteness."""
        path = frame_path(self.src, frame_id)
        with self._open(path, segment) as z:
            out = {key: _checked_lowdim(path, key, self._member(z, path, key), n) for key, n in LOWDIM_WIDTH.items()}
            for key, shape in self.image_shapes.items():
                out[key] = _checked_image(path, key, self._member(z, path, key), shape)
        return out

    def _episode(self, k: int) -> Episode:
        segment = first, last = self.segments[k]
        n = last - first + 1
        # Preallocated once per episode: peak memory is one segment, not one segment twice.
        frames = {target: np.empty((n, LOWDIM_WIDTH[key]), np.float32) for key, target in self.lowdim_targets.items()}
        for key in CAMERAS:
            frames[camera_key(key)] = np.empty((n, *self.image_shapes[key]), np.uint8)
        for j, frame_id in enumerate(range(first, last + 1)):
            data = self._read_frame(frame_id, segment)
            for key, target in self.lowdim_targets.items():
                frames[target][j] = data[key]
            for key, cam in CAMERAS.items():
                flip = self.orientation[cam] == "rotated_180"  # store upright
                frames[camera_key(key)][j] = data[key][::-1, ::-1] if flip else data[key]
        return Episode(
            frames=frames,
            task=self.decl.task,
            source_id=f"{frame_path(self.src, first)}..{frame_path(self.src, last).name}",
            annotations=list(self.windows.get(k, [])),
        )

    # --- the converter protocol --------------------------------------------------------------
    def spec(self) -> StoreSpec:
        other_preset = ABS_PRESET if self.other_action_key == "action.absolute" else REL_PRESET
        extra = {self.other_action_key: KeySpec("float32", (7,), tuple(d.name for d in preset(other_preset)))}
        return calvin_spec(
            self.image_shapes,
            self.orientation,
            action=self.action,
            state=self.state,
            extra_keys=extra,
            fps=self.decl.fps or FPS,
            embodiment=self.decl.embodiment or EMBODIMENT,
            robot_type=self.decl.robot_type or ROBOT_TYPE,
            source=SourceInfo("calvin", path=str(self.src), details=self._details()),
        )

    def _details(self) -> dict[str, Any]:
        details: dict[str, Any] = {
            "split": self.src.name,
            "segments": len(self.segments),
            "frames": sum(b - a + 1 for a, b in self.segments),
            "frame_ids": [self.segments[0][0], self.segments[-1][1]],
            "action": f"action = {self.action_source}; {self.other_action_key} = the other action array",
            "language_windows": self.num_windows,
            "language": (
                f"{LANG_FILE.as_posix()}: info.indx (last id inclusive) -> annotations; language.ann texts stored, "
                "language.emb not stored (re-encode the text)"
                if (self.src / LANG_FILE).is_file()
                else f"no {LANG_FILE.as_posix()}: no language windows"
            ),
            "annotation_tasks": self.task_names,
            "not_converted": list(NOT_CONVERTED),
        }
        if self.scenes:
            details["scene_info"] = self.scenes
            details["episode_scenes"] = [self._scene_of(a, b) for a, b in self.segments]
        return details

    def _scene_of(self, first: int, last: int) -> str | None:
        return next((name for name, (a, b) in self.scenes.items() if a <= first and last <= b), None)

    def num_episodes(self) -> int:
        return len(self.segments)

    def fingerprint(self) -> str:
        """Index files plus the first and last frame file of every segment (stat only, no reading)."""
        index = [self.src / name for name in (IDS_FILE, LANG_FILE, SCENE_FILE, STATS_FILE)]
        frames = [frame_path(self.src, i) for seg in self.segments for i in seg]
        return files_fingerprint([p for p in (*index, *frames) if p.is_file()])

    def episodes(self, start: int = 0) -> Iterator[Episode]:
        for k in range(start, len(self.segments)):
            yield self._episode(k)
