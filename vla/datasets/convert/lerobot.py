"""LeRobot v3 datasets -> store episodes, read through lerobot's own `LeRobotDataset`.

SRC is a dataset folder (`meta/info.json`, `data/`, `meta/episodes/`, `meta/tasks.parquet`,
`videos/`), opened offline with `LeRobotDataset(repo_id, root=SRC)`. Only codebase_version v3.x
is read (older datasets are upgraded with lerobot's `convert_dataset_v21_to_v30` script).

What the store gets:
- `action`, `observation.state`: the features of those names; dimensions are inferred from the
  feature `names` (e.g. 'shoulder_pan.pos' is a joint position) unless the declaration gives them.
- `observation.images.<cam>` for every video- or image-backed RGB camera. Video cameras are decoded
  one episode at a time in a single pass with lerobot's `decode_video_frames` (its default backend:
  torchcodec when it loads, else PyAV) at the episode's own timestamps, shifted by the episode's
  offset inside the multi-episode mp4 (`videos/<key>/from_timestamp` in the episodes metadata), as
  raw uint8 frames; image cameras are the parquet's PNG frames. Frames are upright unless the
  declaration says a camera's source is `rotated_180`. A camera key outside `observation.images.`
  (Push-T's `observation.image`) becomes `observation.images.<rest of the key>`.
- other numeric per-frame features (`next.reward`, `next.done`, ...) verbatim as extra keys;
  lerobot's bookkeeping columns (timestamp, frame_index, episode_index, index, task_index) are the
  store's own index arrays, the timestamps are kept. Depth maps and text columns are not converted.
- language: each frame's task (`task_index` -> `meta/tasks.parquet`). An episode's task is the task
  of its first frame; an episode whose task changes gets one annotation window per run of frames.
  A declared `task` replaces them all.
- fps and robot_type from `meta/info.json` (a declaration wins); embodiment = declared, else
  robot_type. `decl.keys` renames source keys (SOURCE -> store key).
"""

from __future__ import annotations

import itertools
import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from vla.datasets.convert.base import files_fingerprint
from vla.datasets.declare import Declaration, infer_dims
from vla.datasets.spec import ORIENTATIONS, CameraSpec, DimSpec, KeySpec, SourceInfo, StoreSpec
from vla.datasets.store import INDEX_KEYS, Episode
from vla.errors import DataError
from vla.keys import ACTION_KEY, IMAGE_PREFIX, STATE_KEY

INFO_PATH = Path("meta/info.json")
STATS_PATH = Path("meta/stats.json")
PARQUET_FILES = {  # glob -> what it holds
    "meta/tasks.parquet": "the task table",
    "meta/episodes/*/*.parquet": "the episodes metadata",
    "data/*/*.parquet": "the frame data",
}
SUPPORTED_MAJOR = "v3."
BOOKKEEPING = ("timestamp", "frame_index", "episode_index", "index", "task_index")
CAMERA_DTYPES = ("video", "image")
NUMERIC_KINDS = "biuf"  # numpy kinds kept as extra keys: bool, signed, unsigned, float


# --- metadata, read before lerobot is asked to open anything ------------------------------------
def _json_object(path: Path) -> dict[str, Any]:
    try:
        obj = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(path, None, f"cannot read as JSON ({e}); restore it from the original dataset") from None
    if not isinstance(obj, dict):
        raise DataError(path, None, f"expected a JSON object, got {type(obj).__name__}")
    return obj


def read_info(src: Path) -> dict[str, Any]:
    """meta/info.json, checked for what this converter relies on (version, fps, features)."""
    path = src / INFO_PATH
    if not path.is_file():
        raise DataError(path, None, "missing: not a LeRobot dataset folder (every LeRobot dataset has meta/info.json)")
    info = _json_object(path)
    version = info.get("codebase_version")
    if not isinstance(version, str) or not version.startswith(SUPPORTED_MAJOR):
        raise DataError(
            path,
            "codebase_version",
            f"unsupported LeRobot dataset version {version!r}: this converter reads v3.x datasets "
            "(upgrade older ones with lerobot's `python -m lerobot.scripts.convert_dataset_v21_to_v30`)",
        )
    fps = info.get("fps")
    if not isinstance(fps, int | float) or isinstance(fps, bool) or not fps > 0:
        raise DataError(path, "fps", f"expected a positive number, got {fps!r}")
    if not isinstance(info.get("features"), dict) or not info["features"]:
        raise DataError(path, "features", "missing or empty: the dataset describes no per-frame features")
    for key, ft in info["features"].items():
        _check_feature(path, key, ft)
    return info


def _check_feature(path: Path, key: str, ft: Any) -> None:
    """A feature entry is an object with a dtype name and a shape of positive sizes."""
    if not isinstance(ft, dict) or not isinstance(ft.get("dtype"), str):
        raise DataError(path, f"features.{key}", f"expected an object with a 'dtype' name, got {json.dumps(ft)[:80]}")
    shape = ft.get("shape")
    if not (isinstance(shape, list) and shape and all(type(n) is int and n > 0 for n in shape)):
        raise DataError(path, f"features.{key}.shape", f"expected a list of positive sizes, got {json.dumps(shape)}")


def check_layout(src: Path) -> None:
    """The files lerobot needs besides info.json: without them it would try a hub download."""
    for pattern, what in PARQUET_FILES.items():
        if not any(src.glob(pattern)):
            raise DataError(src / pattern, None, f"missing: {what} of the LeRobot dataset")


def _one_line(e: BaseException) -> str:
    """An exception's text on one line (arrow's messages span several)."""
    return " ".join(str(e).split())


def _root_cause(e: BaseException) -> BaseException:
    """The innermost exception of a chain (datasets wraps arrow's errors in its own)."""
    seen = {id(e)}
    while (inner := e.__cause__ or e.__context__) is not None and id(inner) not in seen:
        seen.add(id(inner))
        e = inner
    return e


def _parquet(path: Path) -> pq.ParquetFile:
    """A Parquet file opened from its footer: a truncated or garbled one fails here, by name."""
    try:
        return pq.ParquetFile(path)
    except (OSError, pa.ArrowException) as e:
        problem = f"not a readable Parquet file, truncated or corrupt ({_one_line(e)}); restore it from the original"
        raise DataError(path, None, problem) from None


def _values_per_frame(arrow_type: pa.DataType) -> int | None:
    """Numbers per row of a column: 1 for a scalar, the product of fixed-size list lengths; None
    for anything whose width the schema does not fix (variable lists, structs)."""
    if pa.types.is_fixed_size_list(arrow_type):
        inner = _values_per_frame(arrow_type.value_type)
        return None if inner is None else arrow_type.list_size * inner
    if pa.types.is_integer(arrow_type) or pa.types.is_floating(arrow_type) or pa.types.is_boolean(arrow_type):
        return 1
    return None


def _check_columns(info_path: Path, data_file: Path, features: dict[str, Any], schema: pa.Schema) -> None:
    """Every numeric feature info.json lists is a column of the data file, of the width it says."""
    for key, ft in features.items():
        if _numeric_dtype(ft["dtype"]) is None:
            continue
        if key not in schema.names:
            raise DataError(data_file, key, "column missing, though meta/info.json lists the feature")
        shape = ft["shape"]
        expected = int(np.prod(shape))
        found = _values_per_frame(schema.field(key).type)
        if found is not None and found != expected:
            raise DataError(
                info_path,
                f"features.{key}.shape",
                f"is {list(shape)} ({expected} values a frame), but {data_file.relative_to(info_path.parents[1])} "
                f"holds {found}: fix info.json or the data",
            )


def check_files(src: Path, info: dict[str, Any]) -> None:
    """The Parquet files lerobot will read, checked against info.json before lerobot opens them
    (it reports a broken file as 'DatasetGenerationError' and a wrong count as a failed download)."""
    info_path = src / INFO_PATH
    if (src / STATS_PATH).exists():  # optional, but lerobot reads it when present
        _json_object(src / STATS_PATH)
    _parquet(src / "meta/tasks.parquet")
    episodes = sum(_parquet(p).metadata.num_rows for p in sorted(src.glob("meta/episodes/*/*.parquet")))
    for path in sorted(src.glob("data/*/*.parquet")):
        _check_columns(info_path, path, info["features"], _parquet(path).schema_arrow)
    total = info.get("total_episodes")
    if total != episodes:
        raise DataError(
            info_path, "total_episodes", f"says {total!r}, meta/episodes/ lists {episodes} episodes: fix info.json"
        )


def feature_names(key: str, ft: dict[str, Any], width: int) -> list[str]:
    """A vector feature's entry names: a list, {name: index}, or {"motors": [...]}; else `<key>_<i>`."""
    names = ft.get("names")
    if isinstance(names, dict):
        values = list(names.values())
        if values and all(isinstance(v, int) for v in values):
            names = [k for k, _ in sorted(names.items(), key=lambda kv: kv[1])]
        elif len(values) == 1 and isinstance(values[0], list):
            names = values[0]
    if isinstance(names, list) and len(names) == width and all(isinstance(n, str) for n in names):
        return list(names)
    return [f"{key}_{i}" for i in range(width)]


def _numeric_dtype(dtype: Any) -> np.dtype | None:
    try:
        dt = np.dtype(dtype)
    except TypeError:
        return None
    return dt if dt.kind in NUMERIC_KINDS else None


def _image_hwc(path: Path, key: str, ft: dict[str, Any]) -> tuple[int, int, int]:
    shape = tuple(ft.get("shape") or ())
    if len(shape) != 3:
        raise DataError(path, f"features.{key}.shape", f"expected an image shape of 3 entries, got {list(shape)}")
    names = ft.get("names") or []
    if list(names)[:1] == ["channels"]:  # some datasets describe frames channel-first
        c, h, w = shape
    else:
        h, w, c = shape
    return int(h), int(w), int(c)


def default_target(key: str, ft: dict[str, Any]) -> str | None:
    """Store key of a source feature by default; None for what is not converted."""
    if key in BOOKKEEPING:
        return None
    if ft.get("dtype") in CAMERA_DTYPES:
        if key.startswith(IMAGE_PREFIX):
            return key
        return IMAGE_PREFIX + key.removeprefix("observation.").replace(".", "_")
    return key if _numeric_dtype(ft.get("dtype")) is not None else None


def _is_depth(ft: dict[str, Any], channels: int) -> bool:
    return bool((ft.get("info") or {}).get("is_depth_map")) or channels != 3


def default_video_backend() -> str:
    """lerobot's default decoder ('torchcodec' when it loads, else 'pyav'), without the long
    torchcodec loading traceback lerobot logs when FFmpeg's shared libraries are missing."""
    from lerobot.utils.import_utils import get_safe_default_video_backend

    log = logging.getLogger("lerobot.utils.import_utils")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        return get_safe_default_video_backend()
    finally:
        log.setLevel(level)


@contextmanager
def single_torch_thread() -> Iterator[None]:
    """lerobot's decoders copy and stack one small frame tensor at a time; torch's intra-op
    threads only add synchronisation there, and on a busy machine their spin-waits made decoding
    ~18x slower (measured: 44 vs 770 frames/s on 2 loaded cores)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class LeRobotConverter:
    """Reads a LeRobot v3 dataset folder (see the module docstring for the mapping)."""

    def __init__(self, src: Path, decl: Declaration, video_backend: str | None = None):
        self.src = Path(src)
        self.decl = decl
        self.info = read_info(self.src)
        self.info_path = self.src / INFO_PATH
        check_layout(self.src)
        check_files(self.src, self.info)
        self.features: dict[str, dict[str, Any]] = self.info["features"]
        self._map_keys()
        self._check_orientations()
        self.backend = video_backend or default_video_backend()
        self.dataset = self._open()
        self.meta = self.dataset.meta
        tasks = self.meta.tasks  # a DataFrame indexed by task text (None when there are no tasks)
        pairs = zip(tasks.index, tasks["task_index"], strict=True) if tasks is not None else ()
        self.task_names = {int(i): str(text) for text, i in pairs}
        columns = ["index", "timestamp", "task_index", *self.lowdim_sources(), *self.image_cameras]
        # Raw numpy rows: images come back as uint8 HWC arrays, not lerobot's float CHW tensors.
        # dtype=None keeps each column's own dtype: the numpy formatter would cast float64 features
        # to float32 and int32 ones to int64 (a float64 column lost its last bits, found by the export round trip).
        self.rows = self.dataset.hf_dataset.with_format("numpy", columns=columns, dtype=None)

    # --- mapping source features to store keys ---------------------------------------------
    def _map_keys(self) -> None:
        unknown = sorted(set(self.decl.keys) - set(self.features))
        if unknown:
            raise DataError(
                self.info_path, f"features.{unknown[0]}", "declared in keys but not a feature of the dataset"
            )
        self.mapping: dict[str, str] = {}  # source key -> store key
        self.not_converted: dict[str, str] = {}
        for key, ft in self.features.items():
            target = self.decl.keys.get(key) or default_target(key, ft)
            if target is None:
                if key not in BOOKKEEPING:
                    self.not_converted[key] = f"dtype {ft.get('dtype')!r} is not numeric"
                continue
            self.mapping[key] = target
        self.cameras: list[tuple[str, CameraSpec]] = []  # (source key, spec)
        self.video_cameras: list[str] = []
        self.image_cameras: list[str] = []
        self.extra: dict[str, KeySpec] = {}
        seen: dict[str, str] = {}
        for key, target in list(self.mapping.items()):
            where = f"features.{key}"
            if target in seen:
                raise DataError(self.info_path, where, f"maps to {target!r}, as does {seen[target]!r}")
            seen[target] = key
            if target in INDEX_KEYS:
                raise DataError(self.info_path, where, f"cannot map to {target!r}: the store keeps it itself")
            if not self._map_one(key, target, where):
                del self.mapping[key]
        if ACTION_KEY not in seen:
            raise DataError(self.info_path, "features.action", "required feature is missing (name one with --key)")

    def _map_one(self, key: str, target: str, where: str) -> bool:
        """Classify one mapped feature; False when it is left out (depth cameras)."""
        ft = self.features[key]
        is_camera = ft.get("dtype") in CAMERA_DTYPES
        if is_camera != target.startswith(IMAGE_PREFIX):
            kind = "a camera" if is_camera else f"a {ft.get('dtype')} feature"
            raise DataError(self.info_path, where, f"{kind} cannot be stored as {target!r}")
        if is_camera:
            h, w, c = _image_hwc(self.info_path, key, ft)
            if _is_depth(ft, c):
                self.not_converted[key] = "depth map / not 3-channel RGB"
                return False
            self.cameras.append((key, CameraSpec(target.removeprefix(IMAGE_PREFIX), h, w, 3)))
            (self.video_cameras if ft["dtype"] == "video" else self.image_cameras).append(key)
            return True
        shape = tuple(int(s) for s in ft.get("shape") or ())
        dtype = _numeric_dtype(ft.get("dtype"))
        if dtype is None:
            raise DataError(self.info_path, where, f"dtype {ft.get('dtype')!r} is not numeric")
        if target in (ACTION_KEY, STATE_KEY):
            if len(shape) != 1 or dtype.kind not in "iuf":
                raise DataError(self.info_path, where, f"{target} must be a numeric vector, got {dtype} {list(shape)}")
        else:
            self.extra[target] = KeySpec(dtype.name, shape, self._extra_names(key, ft, shape))
        return True

    def _extra_names(self, key: str, ft: dict[str, Any], shape: tuple[int, ...]) -> tuple[str, ...] | None:
        if len(shape) != 1 or shape[0] < 2:
            return None
        return tuple(feature_names(key, ft, shape[0]))

    def _source_of(self, target: str) -> str | None:
        return next((k for k, t in self.mapping.items() if t == target), None)

    def lowdim_sources(self) -> list[str]:
        cams = {k for k, _ in self.cameras}
        return [k for k in self.mapping if k not in cams]

    def _check_orientations(self) -> None:
        names = [cam.name for _, cam in self.cameras]
        for cam, value in self.decl.camera_orientation.items():
            if cam not in names:
                raise DataError(self.src, cam, f"declared orientation for an unknown camera; cameras: {names}")
            if value not in ORIENTATIONS:
                raise DataError(self.src, cam, f"unknown orientation {value!r}; use one of {ORIENTATIONS}")
        self.orientation = {cam: self.decl.camera_orientation.get(cam, "upright") for cam in names}

    # --- opening through lerobot -----------------------------------------------------------
    @property
    def repo_id(self) -> str:
        return f"local/{self.src.name}"

    def _open(self):
        from lerobot.datasets.lerobot_dataset import LeRobotDataset

        try:
            return LeRobotDataset(self.repo_id, root=self.src, video_backend=self.backend)
        except Exception as e:  # lerobot raises many kinds; all mean "cannot read this folder"
            self._diagnose()
            cause = _root_cause(e)
            problem = f"lerobot cannot open the dataset ({type(cause).__name__}: {_one_line(cause)[:500]})"
            raise DataError(self.src, None, problem) from e

    def _diagnose(self) -> None:
        """Name the file when lerobot failed for a Parquet file whose pages cannot be decoded (it says
        only 'DatasetGenerationError') or a missing video (it would then try a hub download)."""
        from lerobot.datasets.dataset_metadata import LeRobotDatasetMetadata

        for path in (p for pattern in PARQUET_FILES for p in sorted(self.src.glob(pattern))):
            try:
                pq.read_table(path)
            except (OSError, pa.ArrowException) as e:
                raise DataError(
                    path, None, f"cannot read, corrupt ({_one_line(e)}); restore it from the original dataset"
                ) from None

        try:
            meta = LeRobotDatasetMetadata(self.repo_id, root=self.src)
        except Exception:
            return  # the metadata itself is unreadable: lerobot's own message says more
        for ep in range(meta.total_episodes):
            for key in self.video_cameras:
                path = self.src / meta.get_video_file_path(ep, key)
                if not path.is_file():
                    raise DataError(path, key, f"video file of episode {ep} is missing")

    # --- the converter protocol ------------------------------------------------------------
    def _dims(self, target: str, declared: tuple[DimSpec, ...] | None) -> tuple[DimSpec, ...]:
        key = self._source_of(target)
        if key is None:
            if declared:
                raise DataError(self.info_path, f"features.{target}", "dimensions declared for a missing feature")
            return ()
        width = int(self.features[key]["shape"][0])
        if declared is None:
            return infer_dims(feature_names(key, self.features[key], width))
        if len(declared) != width:
            raise DataError(
                self.info_path, f"features.{key}", f"declared {len(declared)} dimensions, the data has {width}"
            )
        return tuple(declared)

    def spec(self) -> StoreSpec:
        robot_type = self.decl.robot_type or self.info.get("robot_type") or ""
        cameras = tuple(
            CameraSpec(c.name, c.height, c.width, 3, "upright", self.orientation[c.name]) for _, c in self.cameras
        )
        details = {
            "repo_id": self.repo_id,
            "keys": dict(self.mapping),
            "video_cameras": self.video_cameras,
            "image_cameras": self.image_cameras,
            "video_codecs": {k: (self.features[k].get("info") or {}).get("video.codec") for k in self.video_cameras},
            "video_backend": self.backend,
            "dims": {
                "action": "declared" if self.decl.action else "inferred from feature names",
                "state": "declared" if self.decl.state else "inferred from feature names",
            },
            "language_source": "declaration (task)" if self.decl.task else "meta/tasks.parquet per frame",
            "not_converted": self.not_converted,
        }
        return StoreSpec(
            fps=float(self.decl.fps or self.info["fps"]),
            embodiment=self.decl.embodiment or robot_type or "unknown",
            robot_type=robot_type,
            action=self._dims(ACTION_KEY, self.decl.action),
            state=self._dims(STATE_KEY, self.decl.state),
            cameras=cameras,
            extra_keys=dict(self.extra),
            source=SourceInfo(
                format="lerobot", path=str(self.src), version=str(self.info["codebase_version"]), details=details
            ),
        )

    def num_episodes(self) -> int:
        return int(self.meta.total_episodes)

    def fingerprint(self) -> str:
        files = [p for pattern in ("meta/**/*", "data/**/*.parquet", "videos/**/*.mp4") for p in self.src.glob(pattern)]
        return files_fingerprint([p for p in files if p.is_file()])

    def episodes(self, start: int = 0) -> Iterator[Episode]:
        for index in range(start, self.num_episodes()):
            yield self.episode(index)

    # --- reading one episode -----------------------------------------------------------------
    def episode(self, index: int) -> Episode:
        ep = self.meta.episodes[index]
        begin, end = int(ep["dataset_from_index"]), int(ep["dataset_to_index"])
        data_path = self.src / self.meta.get_data_file_path(index)
        rows = self._rows(data_path, index, begin, end)
        n = end - begin
        frames: dict[str, np.ndarray] = {}
        for key in self.lowdim_sources():
            frames[self.mapping[key]] = self._lowdim(data_path, key, index, rows[key], n)
        for key, cam in self.cameras:
            images = self._video(index, ep, key, rows["timestamp"]) if key in self.video_cameras else rows[key]
            frames[cam.key] = self._upright(data_path, key, cam, np.asarray(images), n)
        task, annotations = self._language(rows["task_index"])
        return Episode(
            frames=frames,
            task=task,
            source_id=f"{self.src}:episode_{index}",
            annotations=annotations,
            timestamps=np.asarray(rows["timestamp"], np.float64),
        )

    def _rows(self, data_path: Path, index: int, begin: int, end: int) -> dict[str, Any]:
        """The episode's rows of the data parquet (pages are decoded here: a garbled one fails here)."""
        try:
            rows = self.rows[begin:end]
        except Exception as e:  # arrow raises many kinds for damaged pages; all mean "cannot read"
            problem = f"cannot read episode {index}'s rows {begin}..{end - 1} ({type(e).__name__}: {_one_line(e)})"
            raise DataError(data_path, None, problem[:800] + "; restore the file") from None
        if end <= begin or not np.array_equal(rows["index"], np.arange(begin, end)):
            raise DataError(data_path, "index", f"episode {index}'s frames {begin}..{end} are not where metadata says")
        return rows

    def _lowdim(self, data_path: Path, key: str, index: int, column: Any, n: int) -> np.ndarray:
        shape = tuple(int(s) for s in self.features[key]["shape"])
        values = np.asarray(column)
        if values.dtype.kind not in NUMERIC_KINDS or values.size != n * int(np.prod(shape)):
            problem = f"episode {index}: {values.dtype} {values.shape}, meta/info.json says shape {list(shape)}"
            raise DataError(data_path, key, problem)
        values = values.reshape(n, *shape)  # lerobot keeps shape-(1,) features as scalars
        self._check_finite(data_path, key, index, values)
        return values

    def _video(self, index: int, ep: dict[str, Any], key: str, timestamps: np.ndarray) -> np.ndarray:
        """The episode's frames of one camera: one seek and one decoding pass over its segment."""
        from lerobot.datasets.video_utils import decode_video_frames

        path = self.src / self.meta.get_video_file_path(index, key)
        offset = float(ep[f"videos/{key}/from_timestamp"])
        query = [offset + float(t) for t in timestamps]  # exactly what LeRobotDataset asks for
        try:
            with single_torch_thread():
                frames = decode_video_frames(path, query, self.dataset.tolerance_s, self.backend, return_uint8=True)
        except Exception as e:  # timestamps outside the video, corrupt or truncated mp4, ...
            problem = (
                f"cannot decode episode {index} ({query[0]:.3f}..{query[-1]:.3f} s): {type(e).__name__}: {_one_line(e)}"
            )
            raise DataError(path, key, problem[:800]) from e
        return frames.permute(0, 2, 3, 1).numpy()  # (T, C, H, W) -> (T, H, W, C)

    def _upright(self, path: Path, key: str, cam: CameraSpec, images: np.ndarray, n: int) -> np.ndarray:
        expected = (n, cam.height, cam.width, 3)
        if images.shape != expected or images.dtype != np.uint8:
            raise DataError(path, key, f"expected uint8 frames of shape {expected}, got {images.dtype} {images.shape}")
        if self.orientation[cam.name] == "rotated_180":
            images = images[:, ::-1, ::-1]
        return np.ascontiguousarray(images)

    @staticmethod
    def _check_finite(path: Path, key: str, index: int, values: np.ndarray) -> None:
        if values.dtype.kind == "f" and not np.isfinite(values).all():
            bad = int(np.argwhere(~np.isfinite(values))[0][0])
            raise DataError(path, key, f"non-finite value (NaN or inf) in episode {index} at frame {bad}")

    def _language(self, task_index: np.ndarray) -> tuple[str | None, list[tuple[int, int, str]]]:
        if self.decl.task:
            return self.decl.task, []
        change = np.flatnonzero(np.diff(task_index)) + 1
        bounds = [0, *change.tolist(), len(task_index)]
        runs = [(s, e, self._task_text(int(task_index[s]))) for s, e in itertools.pairwise(bounds)]
        return runs[0][2], (runs if len(runs) > 1 else [])

    def _task_text(self, task_index: int) -> str:
        if task_index not in self.task_names:
            raise DataError(self.src / "meta/tasks.parquet", "task_index", f"no task with index {task_index}")
        return self.task_names[task_index]
