"""The demonstration store: a Zarr v3 group of per-frame arrays plus self-describing metadata.

Layout and fields are documented in docs/store.md. Writing goes to `<dst>.partial` with a journal
of committed episodes; `finalize()` computes statistics, marks the metadata complete and renames
the folder into place, so a killed conversion never leaves a store that looks complete and can be
resumed from its last committed episode.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import math
import os
import shutil
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from zarr.abc.store import OffsetByteRequest, SuffixByteRequest
from zarr.codecs import BloscCodec, Crc32cCodec, ShardingCodec
from zarr.core.buffer import default_buffer_prototype
from zarr.core.sync import sync

from vla import __version__
from vla.datasets import image_codecs
from vla.datasets import slots as slotlib
from vla.datasets.image_codecs import ErrorMeter, ImageCodec
from vla.datasets.spec import SCHEMA_VERSION, STORE_FORMAT, KeySpec, StoreSpec
from vla.datasets.stats import image_stats, lowdim_stats
from vla.errors import DataError
from vla.files import atomic_write_text

ATTRS_KEY = "vla"
JOURNAL = "_vla_journal.json"
PARTIAL_SUFFIX = ".partial"
LOWDIM_CHUNK = 4096
IMAGE_SHARD_FRAMES = 64
# Every chunk is written, even one equal to the fill value, so that a missing chunk always means a
# deleted or lost one: zarr would otherwise read it back as zeros without a word.
WRITE_CONFIG = {"write_empty_chunks": True}
_EMPTY_INDEX_ENTRY = 2**64 - 1  # the sharding codec's (offset, nbytes) of an inner chunk never written
# Frame-level arrays every store has besides the spec's keys.
INDEX_KEYS = {"episode_index": "int32", "frame_index": "int32", "timestamp": "float32"}
NAME_MAX = 255  # bytes in one file name on the usual file systems (ext4, xfs, apfs)
log = logging.getLogger(__name__)


# --- chunk presence --------------------------------------------------------------------------------
def _grid(shape: tuple[int, ...], block: tuple[int, ...]) -> Iterator[tuple[int, ...]]:
    return itertools.product(*(range(math.ceil(n / b)) for n, b in zip(shape, block, strict=True)))


def stored_keys(node: zarr.Array | zarr.Group) -> set[str]:
    """Keys (relative to the node) of every object its store holds under it."""
    prefix = f"{node.path}/" if node.path else ""

    async def listing() -> set[str]:
        return {k[len(prefix) :] async for k in node.store.list_prefix(prefix)}

    return sync(listing())


def _shard_index(arr: zarr.Array, key: str, codec: ShardingCodec, n_inner: int) -> np.ndarray | None:
    """(n_inner, 2) offsets and sizes of a shard's inner chunks, or None when unreadable."""
    size = n_inner * 16 + (4 if any(isinstance(c, Crc32cCodec) for c in codec.index_codecs) else 0)
    at_end = str(getattr(codec.index_location, "value", codec.index_location)) == "end"  # an enum or a str
    where = SuffixByteRequest(size) if at_end else OffsetByteRequest(0)
    buf = sync(arr.store.get(f"{arr.path}/{key}" if arr.path else key, default_buffer_prototype(), where))
    raw = buf.to_bytes()[:size] if buf is not None else b""
    if len(raw) != size:
        return None
    return np.frombuffer(raw[: n_inner * 16], "<u8").reshape(n_inner, 2)


def _missing_inner(arr: zarr.Array, key: str, shard: tuple[int, ...], codec: ShardingCodec) -> list[str]:
    inner = tuple(int(c) for c in codec.chunk_shape)
    outer = tuple(int(s) for s in arr.shards)
    per = tuple(o // i for o, i in zip(outer, inner, strict=True))
    index = _shard_index(arr, key, codec, math.prod(per))
    if index is None:
        return [f"{key} (shard index unreadable)"]
    missing = []
    for j, local in enumerate(itertools.product(*(range(p) for p in per))):
        start = [(s * o + c * i) for s, o, c, i in zip(shard, outer, local, inner, strict=True)]
        inside = all(b < n for b, n in zip(start, arr.shape, strict=True))  # edge shards pad past the array
        if inside and int(index[j, 0]) == _EMPTY_INDEX_ENTRY:
            missing.append(f"{key} (inner chunk {j})")
    return missing


def missing_chunks(arr: zarr.Array) -> list[str]:
    """Chunks the array's grid has but its store lacks: zarr reads those back as the fill value.

    Each entry is a chunk key (or a shard key and inner chunk number), relative to the array.
    """
    codecs = getattr(arr.metadata, "codecs", ())
    sharding = codecs[0] if len(codecs) == 1 and isinstance(codecs[0], ShardingCodec) else None
    block = tuple(int(b) for b in (arr.shards if sharding else arr.chunks))
    stored = stored_keys(arr)
    missing = []
    for coords in _grid(tuple(arr.shape), block):
        key = arr.metadata.encode_chunk_key(coords)
        if key not in stored:
            missing.append(key)
        elif sharding is not None and not isinstance(sharding.codecs[0], ShardingCodec):
            missing.extend(_missing_inner(arr, key, coords, sharding))
    return missing


def check_chunks(arr: zarr.Array, path: str | Path, key: str) -> None:
    """Raise DataError when any chunk of `arr` is missing (deleted, or lost in a copy)."""
    missing = missing_chunks(arr)
    if missing:
        more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
        raise DataError(
            path,
            key,
            f"chunk {missing[0]}{more} missing (deleted or lost in a copy): it would read back as "
            f"{arr.fill_value}; restore the file, or re-write the data with zarr's write_empty_chunks=True",
        )


@dataclass
class Episode:
    """One episode in the store's vocabulary, as converters produce it.

    `frames` maps every key of the spec (action, observation.state, observation.images.<cam>, extra
    keys) to an array whose first axis is time. `annotations` are (start, end, text) windows in
    episode-relative frames, end exclusive (CALVIN's language windows).
    """

    frames: dict[str, np.ndarray]
    task: str | None = None
    source_id: str = ""
    annotations: list[tuple[int, int, str]] = field(default_factory=list)
    timestamps: np.ndarray | None = None

    @property
    def length(self) -> int:
        return len(self.frames["action"])


def _is_image(spec: KeySpec) -> bool:
    return spec.dtype == "uint8" and len(spec.shape) == 3


def _codecs_for(spec: KeySpec, images: ImageCodec = image_codecs.LZ4) -> dict[str, Any]:
    if _is_image(spec):  # images: one frame per inner chunk, blosc-lz4 or one compressed image
        if images.lossy:
            return {"serializer": images.zarr_serializer(), "compressors": None}
        return {"compressors": [BloscCodec(cname="lz4", clevel=5, shuffle="noshuffle")]}
    return {"compressors": [BloscCodec(cname="zstd", clevel=3, shuffle="shuffle")]}


def _chunking(spec: KeySpec) -> dict[str, Any]:
    if spec.dtype == "uint8" and len(spec.shape) == 3:
        # Random windows read a few frames: one frame per chunk, shards keep the file count low.
        return {"chunks": (1, *spec.shape), "shards": (IMAGE_SHARD_FRAMES, *spec.shape)}
    return {"chunks": (LOWDIM_CHUNK, *spec.shape)}


def _atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj))


def is_finished_store(path: Path) -> bool:
    """Whether `path` is a folder holding a store this project finished (its root zarr.json says so)."""
    try:
        meta = json.loads((path / "zarr.json").read_text())["attributes"][ATTRS_KEY]
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return path.is_dir() and not path.is_symlink() and isinstance(meta, dict) and meta.get("format") == STORE_FORMAT


def is_partial_store(path: Path) -> bool:
    """Whether `path` is an unfinished conversion of this project: it has the journal (or, killed
    between finalize's journal removal and its rename, the finished metadata)."""
    if not path.is_dir() or path.is_symlink():
        return False
    return (path / JOURNAL).is_file() or is_finished_store(path)


def _what_is_at(path: Path) -> str:
    if path.is_symlink():
        return "a symlink"
    if path.is_dir():
        n = sum(1 for _ in path.iterdir())
        return f"a folder with {n} entries and no vla store metadata"
    return "a file"


def check_text(src: str, key: str, text: str) -> None:
    """Refuse text the store could not write as UTF-8 (a lone surrogate from a mis-decoded source)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise DataError(
            src, key, f"not valid text: lone surrogate {text[e.start]!r} at character {e.start}; fix its encoding"
        ) from None


def spec_fingerprint(spec: StoreSpec, source_fingerprint: str, images: ImageCodec | None = None) -> str:
    blob = json.dumps(spec.to_json(), sort_keys=True) + "|" + source_fingerprint
    if images is not None and images.lossy:  # a resume never mixes two image codecs in one store
        blob += "|" + json.dumps(images.to_json(), sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


class StoreWriter:
    """Appends episodes to `<path>.partial` and renames it to `path` on `finalize()`.

    With `resume=True` an existing partial store written for the same spec and source is continued
    from its last committed episode (`done_episodes` tells the converter where to restart).
    `image_codec`: how camera frames are compressed (vla.datasets.image_codecs; default lossless lz4).
    """

    def __init__(
        self,
        path: str | Path,
        spec: StoreSpec,
        *,
        source_fingerprint: str = "",
        resume: bool = True,
        overwrite: bool = False,
        image_codec: ImageCodec | None = None,
    ):
        image_codecs.register()
        self.images = image_codec or image_codecs.LZ4
        problems = spec.problems()
        if problems:
            raise DataError(spec.source.path or str(path), None, "invalid dataset description: " + "; ".join(problems))
        if not math.isfinite(spec.fps):  # NaN slips past `fps <= 0`: timestamps would be NaN
            raise DataError(spec.source.path or str(path), "fps", f"must be a finite number, got {spec.fps!r}")
        self.path = Path(path)
        if self.path.name in ("", ".", ".."):  # `.` has no name to put `.partial` after
            self.path = self.path.resolve()
        self.tmp = self.path.with_name(self.path.name + PARTIAL_SUFFIX)
        self.spec = spec
        self.keys = spec.keys()
        self.fingerprint = spec_fingerprint(spec, source_fingerprint, self.images)
        self._check_destination(overwrite)
        self.action_slots = spec.action_slots or slotlib.assign_slots(spec.action)
        self.state_slots = spec.state_slots or (slotlib.assign_slots(spec.state) if spec.state else ())
        self.resumed = False
        if resume and self._journal_matches():
            self._reopen()
        else:
            self._create()

    # --- set-up ----------------------------------------------------------------------------
    def _check_destination(self, overwrite: bool) -> None:
        """Refuse a DST or DST.partial this project did not write: nothing of the user's is ever deleted."""
        if len(self.tmp.name.encode()) > NAME_MAX:
            raise DataError(
                self.path,
                None,
                f"name is too long ({len(self.path.name.encode())} bytes with {PARTIAL_SUFFIX}, "
                f"at most {NAME_MAX - len(PARTIAL_SUFFIX)}); choose a shorter DST",
            )
        if self.path.exists() or self.path.is_symlink():
            if not overwrite:
                raise DataError(self.path, None, "output already exists; choose another path or pass --overwrite")
            if not is_finished_store(self.path):
                raise DataError(
                    self.path,
                    None,
                    f"--overwrite replaces only a vla store, and this is {_what_is_at(self.path)}; "
                    "choose another DST, or move it away yourself",
                )
        if (self.tmp.exists() or self.tmp.is_symlink()) and not is_partial_store(self.tmp):
            raise DataError(
                self.tmp,
                None,
                f"is {_what_is_at(self.tmp)}, not a partial conversion written by vla (no "
                f"{JOURNAL}); rename or move it away, then re-run",
            )

    def _journal_matches(self) -> bool:
        journal = self.tmp / JOURNAL
        if not journal.exists():
            return False
        try:
            state = json.loads(journal.read_text())
        except (OSError, json.JSONDecodeError):
            return False
        return state.get("fingerprint") == self.fingerprint

    def _create(self) -> None:
        if self.tmp.exists():  # a partial conversion (checked in _check_destination) of another source or spec
            log.warning("deleting the partial conversion %s to start over", self.tmp)
            shutil.rmtree(self.tmp)
        try:
            self._create_arrays()
        except OSError as e:
            raise DataError(self.tmp, None, f"cannot write: {e.strerror or e}; choose a writable DST") from None

    def _create_arrays(self) -> None:
        # The journal goes first, so even a run killed right here leaves a folder recognisable as ours.
        self.tmp.mkdir(parents=True)
        _atomic_write_json(self.tmp / JOURNAL, {"fingerprint": None})
        self.root = zarr.open_group(self.tmp, mode="a")
        data = self.root.create_group("data")
        for key, ks in self.keys.items():
            codecs = _codecs_for(ks, self.images)
            data.create_array(key, shape=(0, *ks.shape), dtype=ks.dtype, **_chunking(ks), **codecs)
        for key, dtype in INDEX_KEYS.items():
            data.create_array(key, shape=(0,), dtype=dtype, chunks=(LOWDIM_CHUNK,), **_codecs_for(KeySpec(dtype, ())))
        meta = self.root.create_group("meta")
        for key, dtype in (("episode_ends", "int64"), ("episode_task", "int32")):
            meta.create_array(key, shape=(0,), dtype=dtype, chunks=(LOWDIM_CHUNK,))
        ann = meta.create_group("annotations")
        for key, dtype in (("start", "int64"), ("end", "int64"), ("task", "int32")):
            ann.create_array(key, shape=(0,), dtype=dtype, chunks=(LOWDIM_CHUNK,))
        self.state = {
            "fingerprint": self.fingerprint,
            "episodes": 0,
            "frames": 0,
            "annotations": 0,
            "tasks": [],
            "source_ids": [],
            "image_error": {},  # lossy image codecs: per camera key, ErrorMeter's running sums
        }
        self._commit()

    def _reopen(self) -> None:
        self.state = json.loads((self.tmp / JOURNAL).read_text())
        self.root = zarr.open_group(self.tmp, mode="r+")
        # Anything written after the last journal commit belongs to an unfinished episode: drop it.
        for key in (*self.keys, *INDEX_KEYS):
            arr = self.root["data"][key]
            arr.resize((self.state["frames"], *arr.shape[1:]))
        for key in ("episode_ends", "episode_task"):
            self.root["meta"][key].resize((self.state["episodes"],))
        for key in ("start", "end", "task"):
            self.root["meta/annotations"][key].resize((self.state["annotations"],))
        self.resumed = True

    def _commit(self) -> None:
        _atomic_write_json(self.tmp / JOURNAL, self.state)

    @property
    def done_episodes(self) -> int:
        return int(self.state["episodes"])

    @property
    def num_frames(self) -> int:
        return int(self.state["frames"])

    def _task_index(self, text: str | None) -> int:
        if text is None or text == "":
            return -1
        tasks = self.state["tasks"]
        if text not in tasks:
            tasks.append(text)
        return tasks.index(text)

    # --- writing ---------------------------------------------------------------------------
    def _checked(self, ep: Episode) -> dict[str, np.ndarray]:
        src = ep.source_id or f"episode {self.done_episodes}"
        missing = [k for k in self.keys if k not in ep.frames]
        if missing:
            raise DataError(src, missing[0], "required key is missing from the episode")
        n = len(ep.frames["action"])
        if n == 0:
            raise DataError(src, "action", "episode is empty (0 frames)")
        out = {}
        for key, ks in self.keys.items():
            arr = np.asarray(ep.frames[key])
            if arr.shape != (n, *ks.shape):
                raise DataError(src, key, f"expected shape {(n, *ks.shape)} (T, *{ks.shape}), got {arr.shape}")
            if ks.dtype == "uint8":
                if arr.dtype != np.uint8:
                    raise DataError(src, key, f"images must be uint8, got {arr.dtype}")
            else:
                if not np.issubdtype(arr.dtype, np.number) and arr.dtype != np.bool_:
                    raise DataError(src, key, f"expected numbers, got dtype {arr.dtype}")
                arr = arr.astype(ks.dtype, copy=False)
                if np.issubdtype(arr.dtype, np.floating) and not np.isfinite(arr).all():
                    bad = np.argwhere(~np.isfinite(arr))[0]
                    raise DataError(src, key, f"non-finite value (NaN or inf) at frame {int(bad[0])}")
            out[key] = arr
        if ep.task:
            check_text(src, "task", ep.task)
        for i, (start, end, text) in enumerate(ep.annotations):
            if not (0 <= start < end <= n):
                raise DataError(src, "annotations", f"window [{start}, {end}) outside the episode's {n} frames")
            if not text:
                raise DataError(src, "annotations", f"window [{start}, {end}) has no text")
            check_text(src, f"annotations[{i}]", text)
        return out

    def add_episode(self, ep: Episode) -> None:
        arrays = self._checked(ep)
        n = len(arrays["action"])
        start = self.num_frames
        end = start + n
        ts = ep.timestamps if ep.timestamps is not None else np.arange(n) / self.spec.fps
        arrays["episode_index"] = np.full(n, self.done_episodes, np.int32)
        arrays["frame_index"] = np.arange(n, dtype=np.int32)
        arrays["timestamp"] = np.asarray(ts, np.float32)
        data = self.root["data"]
        for key, arr in arrays.items():
            z = data[key].with_config(WRITE_CONFIG)
            z.resize((end, *z.shape[1:]))
            z[start:end] = arr
            if self.images.lossy and key in self.keys and _is_image(self.keys[key]):
                # What training will see against what the source holds: read back what was just written.
                sums = self.state.setdefault("image_error", {}).setdefault(key, ErrorMeter.empty())
                ErrorMeter(sums).add(arr, z[start:end])
        self._append("meta/episode_ends", [end])
        self._append("meta/episode_task", [self._task_index(ep.task)])
        if ep.annotations:
            self._append("meta/annotations/start", [start + s for s, _, _ in ep.annotations])
            self._append("meta/annotations/end", [start + e for _, e, _ in ep.annotations])
            self._append("meta/annotations/task", [self._task_index(t) for _, _, t in ep.annotations])
            self.state["annotations"] += len(ep.annotations)
        self.state["episodes"] += 1
        self.state["frames"] = end
        self.state["source_ids"].append(ep.source_id)
        self._commit()

    def _append(self, key: str, values: Iterable[int]) -> None:
        z = self.root[key].with_config(WRITE_CONFIG)
        values = np.asarray(list(values), dtype=z.dtype)
        old = z.shape[0]
        z.resize((old + len(values),))
        z[old:] = values

    # --- finishing -------------------------------------------------------------------------
    def finalize(self) -> Store:
        """Compute statistics, write the complete metadata, and rename into place."""
        if self.done_episodes == 0:
            raise DataError(self.spec.source.path or self.path, None, "no episodes were written")
        n = self.num_frames
        data = self.root["data"]
        stats = {}
        for key, ks in self.keys.items():
            stats[key] = (
                image_stats(data[key], n) if ks.dtype == "uint8" and len(ks.shape) == 3 else lowdim_stats(data[key], n)
            )
        meta = {
            "format": STORE_FORMAT,
            "schema_version": SCHEMA_VERSION,
            "created_with": f"vla {__version__}",
            "complete": True,
            "num_episodes": self.done_episodes,
            "num_frames": n,
            "num_annotations": int(self.state["annotations"]),
            "spec": self.spec.to_json(),
            "keys": {
                k: {"dtype": v.dtype, "shape": list(v.shape), "names": list(v.names or [])}
                for k, v in self.keys.items()
            },
            "tasks": self.state["tasks"],
            "slots": {
                "num_slots": slotlib.NUM_SLOTS,
                "action": {"indices": list(self.action_slots), "mask": slotlib.slot_mask(self.action_slots).tolist()},
                "state": {
                    "indices": list(self.state_slots),
                    "mask": slotlib.slot_mask(self.state_slots).tolist()
                    if self.state_slots
                    else [False] * slotlib.NUM_SLOTS,
                },
            },
            "stats": stats,
            "image_codec": {
                **self.images.to_json(),
                "error": {k: ErrorMeter(v).summary() for k, v in self.state.get("image_error", {}).items()},
            },
        }
        self.root.attrs[ATTRS_KEY] = meta
        (self.tmp / JOURNAL).unlink()
        if self.path.exists():  # --overwrite: the old store goes only once the new one is complete
            if not is_finished_store(self.path):  # it changed while we converted
                raise DataError(
                    self.path, None, f"is now {_what_is_at(self.path)}, not the vla store it was; not replaced"
                )
            log.warning("replacing the store at %s (--overwrite)", self.path)
            shutil.rmtree(self.path)
        os.replace(self.tmp, self.path)
        return Store(self.path)


class Store:
    """Read access to a finished store: metadata, statistics, whole episodes and raw arrays."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if self.path.name.endswith(PARTIAL_SUFFIX) or (self.path / JOURNAL).exists():
            raise DataError(
                self.path, None, "store is incomplete (an unfinished conversion); re-run the conversion to resume it"
            )
        if not (self.path / "zarr.json").exists():
            raise DataError(self.path, None, "not a Zarr store (no zarr.json); convert data with `vla data convert`")
        image_codecs.register()  # image arrays may name an imagecodecs codec
        self.root = zarr.open_group(self.path, mode="r")
        meta = self.root.attrs.get(ATTRS_KEY)
        if not isinstance(meta, dict) or meta.get("format") != STORE_FORMAT:
            raise DataError(self.path, f"attrs.{ATTRS_KEY}", "missing vla metadata: not a vla store")
        version = meta.get("schema_version")
        if version != SCHEMA_VERSION:
            raise DataError(
                self.path,
                f"attrs.{ATTRS_KEY}.schema_version",
                f"unsupported schema version {version!r} (this vla reads version {SCHEMA_VERSION})",
            )
        if not meta.get("complete"):
            raise DataError(self.path, f"attrs.{ATTRS_KEY}.complete", "store is not marked complete")
        self.meta: dict[str, Any] = meta
        self.spec = StoreSpec.from_json(meta["spec"])

    # --- metadata --------------------------------------------------------------------------
    @property
    def num_episodes(self) -> int:
        return int(self.meta["num_episodes"])

    @property
    def num_frames(self) -> int:
        return int(self.meta["num_frames"])

    @property
    def fps(self) -> float:
        return self.spec.fps

    @property
    def tasks(self) -> list[str]:
        return list(self.meta["tasks"])

    @property
    def stats(self) -> dict[str, dict[str, Any]]:
        return self.meta["stats"]

    @property
    def keys(self) -> dict[str, KeySpec]:
        return self.spec.keys()

    @property
    def camera_keys(self) -> list[str]:
        return [c.key for c in self.spec.cameras]

    @property
    def action_slots(self) -> tuple[int, ...]:
        return tuple(self.meta["slots"]["action"]["indices"])

    @property
    def state_slots(self) -> tuple[int, ...]:
        return tuple(self.meta["slots"]["state"]["indices"])

    @cached_property
    def episode_ends(self) -> np.ndarray:
        return np.asarray(self.root["meta/episode_ends"][:], np.int64)

    @cached_property
    def episode_starts(self) -> np.ndarray:
        return np.concatenate([[0], self.episode_ends[:-1]]).astype(np.int64)

    @cached_property
    def episode_task(self) -> np.ndarray:
        return np.asarray(self.root["meta/episode_task"][:], np.int32)

    @cached_property
    def annotations(self) -> np.ndarray:
        """(K, 3) int64 rows of (global start, global end exclusive, task index)."""
        a = self.root["meta/annotations"]
        return (
            np.stack([a["start"][:], a["end"][:], a["task"][:].astype(np.int64)], axis=1)
            if a["start"].shape[0]
            else np.zeros((0, 3), np.int64)
        )

    def task_of(self, episode: int) -> str | None:
        t = int(self.episode_task[episode])
        return self.tasks[t] if t >= 0 else None

    # --- data ------------------------------------------------------------------------------
    def array(self, key: str) -> zarr.Array:
        try:
            return self.root["data"][key]
        except KeyError:
            raise DataError(self.path, key, f"no such key; the store has {sorted(self.keys)}") from None

    def episode(self, index: int, keys: Iterable[str] | None = None) -> Episode:
        if not 0 <= index < self.num_episodes:
            raise IndexError(f"episode {index} out of range 0..{self.num_episodes - 1}")
        s, e = int(self.episode_starts[index]), int(self.episode_ends[index])
        frames = {k: np.asarray(self.array(k)[s:e]) for k in (keys or self.keys)}
        ann = [(int(a - s), int(b - s), self.tasks[t]) for a, b, t in self.annotations if s <= a < e]
        return Episode(
            frames=frames,
            task=self.task_of(index),
            source_id=str(index),
            annotations=ann,
            timestamps=np.asarray(self.array("timestamp")[s:e]),
        )

    def __len__(self) -> int:
        return self.num_episodes

    def __repr__(self) -> str:
        return f"Store({str(self.path)!r}, episodes={self.num_episodes}, frames={self.num_frames}, fps={self.fps})"
