"""Training windows from stores, and weighted mixtures of stores from different robots.

A window is anchored at frame t of an episode: `n_obs` observation frames ending at t (padded at
the episode start by repeating the first frame) and an action chunk of `max(horizons)` steps
starting at t (padded at the episode end by repeating the last action). Pad masks say which
entries are padding; windows never cross an episode boundary. Several horizons are prefixes of
that chunk (`horizon_masks`).

Low-dimensional arrays are loaded into memory once (they are small); images are read per window
straight from the store's shard files (see `FrameReader`), opened lazily in each process, so the
datasets work in DataLoader workers (fork or spawn).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import google_crc32c
import numcodecs.blosc
import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from vla.datasets import image_codecs
from vla.datasets import slots as slotlib
from vla.datasets.spec import KeySpec
from vla.datasets.store import Store
from vla.errors import DataError, VlaError
from vla.keys import IMAGE_PREFIX, STATE_KEY

LANGUAGE_MODES = ("episode", "all", "annotations")


class SamplerError(VlaError):
    """A window or mixture configuration that cannot work with the given stores."""


@dataclass(frozen=True)
class WindowConfig:
    n_obs: int = 1  # observation history length
    horizons: tuple[int, ...] = (10,)  # action chunk lengths; the chunk has max(horizons) steps
    obs_keys: tuple[str, ...] | None = None  # default: every camera + observation.state
    action_key: str = "action"  # emitted as "action" whatever its store key
    # "episode": every frame; text = the episode's task, else an annotation covering the frame, else "".
    # "all": every frame; text = an annotation covering the frame, else the episode's task, else "".
    # "annotations": anchors only inside annotation windows (CALVIN-style), one per (window, frame).
    language: str = "episode"

    def __post_init__(self) -> None:
        # Lists from configs/CLIs become tuples, so configs stay hashable and comparable.
        object.__setattr__(self, "horizons", tuple(int(h) for h in self.horizons))
        if self.obs_keys is not None:
            object.__setattr__(self, "obs_keys", tuple(self.obs_keys))
        if self.n_obs < 1 or not self.horizons or min(self.horizons) < 1:
            raise SamplerError(f"n_obs and horizons must be positive, got n_obs={self.n_obs}, horizons={self.horizons}")
        if self.language not in LANGUAGE_MODES:
            raise SamplerError(f"language must be one of {LANGUAGE_MODES}, got {self.language!r}")

    @property
    def chunk(self) -> int:
        return max(self.horizons)


def horizon_masks(horizons: Sequence[int], action_is_pad: torch.Tensor) -> dict[int, torch.Tensor]:
    """Per horizon h: which chunk steps belong to it (step < h and not padding), shaped like the pad mask."""
    steps = torch.arange(action_is_pad.shape[-1], device=action_is_pad.device)
    return {h: (steps < h) & ~action_is_pad for h in horizons}


# --- reading frames -------------------------------------------------------------------------------
_EMPTY_CHUNK = 2**64 - 1  # the sharding codec's index entry for a chunk that was never written
_MISSING = "missing (deleted or lost in a copy); check with `vla data validate` and re-convert the store"
MAX_OPEN_SHARDS = 256  # per camera and process; the cache is dropped when full


@dataclass(frozen=True)
class _ShardLayout:
    frames_per_shard: int
    separator: str
    compressed: bool  # inner codecs bytes+blosc (else bytes only)
    image_decoder: Any = None  # inner codec one compressed image per frame (vla.datasets.image_codecs)


def _shard_layout(meta_path: Path, frame_shape: tuple[int, ...]) -> _ShardLayout | None:
    """The layout the fast path understands, or None (then frames are read through zarr)."""
    try:
        meta = json.loads(meta_path.read_text())
        (codec,) = meta["codecs"]
        cfg = codec["configuration"]
        shard = meta["chunk_grid"]["configuration"]["chunk_shape"]
        inner = [c["name"] for c in cfg["codecs"]]
        image = image_codecs.decoder(cfg["codecs"][0]) if len(inner) == 1 else None
        index = cfg["index_codecs"]
        enc = meta["chunk_key_encoding"]
        ok = (
            codec["name"] == "sharding_indexed"
            and meta["data_type"] == "uint8"
            and not meta.get("storage_transformers")
            and list(cfg["chunk_shape"]) == [1, *frame_shape]
            and list(shard[1:]) == list(frame_shape)
            and (inner in (["bytes"], ["bytes", "blosc"]) or image is not None)
            and [c["name"] for c in index] == ["bytes", "crc32c"]
            and index[0].get("configuration", {}).get("endian", "little") == "little"
            and cfg.get("index_location", "end") == "end"
            and enc["name"] == "default"
        )
        if not ok:
            return None
        sep = enc.get("configuration", {}).get("separator", "/")
        return _ShardLayout(int(shard[0]), sep, len(inner) == 2, image)
    except (OSError, KeyError, TypeError, ValueError):
        return None


class FrameReader:
    """Reads consecutive frames of one uint8 image array of a store.

    The store keeps images as Zarr v3 shards of one-frame chunks (bytes + blosc) with the shard
    index, (offset, nbytes) per chunk and a crc32c, at the shard's end: the sharding codec's
    published layout. Reading a frame is then one `pread` and one blosc decompress (~0.1 ms)
    instead of zarr's generic read path (~2-4 ms a call), which dominated the cost of a window.
    Arrays laid out any other way (or not on a local disk) are read through zarr.
    """

    def __init__(self, store_path: str | Path, key: str, frame_shape: tuple[int, ...]):
        self.store_path = Path(store_path)
        self.key = key
        self.frame_shape = tuple(frame_shape)
        self.frame_bytes = int(np.prod(self.frame_shape))
        self.dir = self.store_path / "data" / key
        self.layout = _shard_layout(self.dir / "zarr.json", self.frame_shape)
        self._index: dict[int, np.ndarray] = {}  # shard -> (frames_per_shard, 2) offsets and sizes
        self._fds: dict[int, int] = {}  # shard -> open descriptor (pread is safe in forked workers)
        self._zarr: Any = None

    def read(self, start: int, out: np.ndarray) -> None:
        """Fill `out` (n, *frame_shape), C-contiguous, with frames start .. start+n-1."""
        if self.layout is None:
            if self._zarr is None:
                self._zarr = Store(self.store_path).array(self.key)
            out[...] = self._zarr[start : start + len(out)]
            return
        per = self.layout.frames_per_shard
        k = 0
        while k < len(out):
            shard, first = divmod(start + k, per)
            n = min(len(out) - k, per - first)  # frames of this request inside this shard
            self._read_shard(shard, first, out[k : k + n])
            k += n

    def _shard_path(self, shard: int) -> str:
        sep = self.layout.separator
        return str(self.dir / sep.join(["c", str(shard), *["0"] * len(self.frame_shape)]))

    def _open(self, shard: int) -> int:
        """A read-only descriptor of the shard file (cached: opening costs more than reading a frame)."""
        fd = self._fds.get(shard)
        if fd is None:
            if len(self._fds) >= MAX_OPEN_SHARDS:
                self.close()
            try:
                fd = os.open(self._shard_path(shard), os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
            except FileNotFoundError:  # the writer writes every shard: a missing one was deleted
                raise DataError(self._shard_path(shard), self.key, _MISSING) from None
            self._fds[shard] = fd
        return fd

    def _read_shard(self, shard: int, first: int, out: np.ndarray) -> None:
        fd = self._open(shard)
        index = self._index.get(shard)
        if index is None:
            index = self._index[shard] = self._read_index(fd, self._shard_path(shard))
        for j, (offset, nbytes) in enumerate(index[first : first + len(out)].tolist()):
            if offset == _EMPTY_CHUNK:  # never a black frame: the writer writes every chunk
                raise DataError(self._shard_path(shard), self.key, f"frame {first + j} of the shard: {_MISSING}")
            self._decode(os.pread(fd, nbytes, offset), out[j], shard)

    def close(self) -> None:
        fds, self._fds = self._fds, {}
        for fd in fds.values():
            os.close(fd)

    def __del__(self) -> None:
        self.close()

    def _read_index(self, fd: int, path: str) -> np.ndarray:
        size = self.layout.frames_per_shard * 16 + 4
        raw = os.pread(fd, size, os.fstat(fd).st_size - size)
        if len(raw) != size or google_crc32c.value(raw[:-4]) != int.from_bytes(raw[-4:], "little"):
            raise DataError(path, self.key, "corrupt shard index (checksum mismatch); re-convert the store")
        return np.frombuffer(raw[:-4], "<u8").reshape(-1, 2)

    def _decode(self, buf: bytes, out: np.ndarray, shard: int) -> None:
        if self.layout.image_decoder is not None:
            try:  # straight into the window's buffer: no allocation or copy per frame
                self.layout.image_decoder.decode(buf, out=out)
            except Exception as e:  # imagecodecs raises its own error types on corrupt data or another size
                raise DataError(
                    self._shard_path(shard), self.key, f"frame does not decode to {out.shape}: {e}"
                ) from None
            return
        if not self.layout.compressed:
            if len(buf) != self.frame_bytes:
                raise DataError(self._shard_path(shard), self.key, f"chunk of {len(buf)} bytes, not one frame")
            out[...] = np.frombuffer(buf, np.uint8).reshape(out.shape)
            return
        if len(buf) < 16 or int.from_bytes(buf[4:8], "little") != self.frame_bytes:  # blosc header: raw size
            raise DataError(self._shard_path(shard), self.key, "chunk does not decompress to one frame")
        numcodecs.blosc.decompress(buf, out)

    def __getstate__(self) -> dict[str, Any]:
        # Descriptors, index cache and zarr handle are per process: a spawned worker rebuilds them.
        return {**self.__dict__, "_index": {}, "_fds": {}, "_zarr": None}


# --- one store --------------------------------------------------------------------------------------
def _is_image(spec: KeySpec) -> bool:
    return spec.dtype == "uint8" and len(spec.shape) == 3


def _frame_tasks(store: Store, language: str, ep: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(anchor frames, task index per anchor; -1 = no text) for a language mode."""
    ann = store.annotations
    if language == "annotations":
        if not len(ann):
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        anchors = np.concatenate([np.arange(s, e, dtype=np.int64) for s, e, _ in ann])
        return anchors, np.repeat(ann[:, 2], ann[:, 1] - ann[:, 0])
    episode_task = store.episode_task.astype(np.int64)[ep]
    ann_task = np.full(store.num_frames, -1, np.int64)
    for s, e, t in ann[::-1]:  # reversed: the first annotation covering a frame wins
        ann_task[s:e] = t
    if language == "episode":
        task = np.where(episode_task >= 0, episode_task, ann_task)
    else:
        task = np.where(ann_task >= 0, ann_task, episode_task)
    return np.arange(store.num_frames, dtype=np.int64), task


class WindowDataset(Dataset):
    """Training windows of one store: one per anchor frame (or per annotation frame).

    `ds[i]` is a dict of torch tensors: each image key (n_obs, C, H, W) uint8, each low-dim
    observation key (n_obs, D) float32, `observation_is_pad` (n_obs,), `action` (chunk, A) float32,
    `action_is_pad` (chunk,), `action_slot_mask` / `state_slot_mask` (24,) bool (which slots this
    robot's vectors occupy; all False when they have no slot meaning), `task` str, `embodiment` str,
    and ints (int64 tensors once collated) `embodiment_id`, `index` (global anchor frame),
    `episode_index`, `frame_index`, `window_index` (= i). `raw(i)` is the same as numpy, images HWC.
    """

    def __init__(self, store: Store | str | Path, config: WindowConfig | None = None, embodiment_id: int = 0):
        store = store if isinstance(store, Store) else Store(store)
        self._store: Store | None = store
        self.path = str(store.path)
        self.config = config or WindowConfig()
        self.embodiment = store.spec.embodiment
        self.embodiment_id = int(embodiment_id)
        self.fps = store.fps
        self.keys: dict[str, KeySpec] = store.keys
        self.stats = store.stats
        self.action_slots = store.action_slots
        self.state_slots = store.state_slots
        self._resolve_keys(store)
        lowdim = {*self.lowdim_obs_keys, self.action_source}
        self._lowdim = {k: np.asarray(store.array(k)[:], np.float32) for k in lowdim}
        self._build_index(store)
        self._readers: dict[str, FrameReader] = {}
        chunk_slots = {"action": self.action_slots, STATE_KEY: self.state_slots}.get(self.action_source, ())
        self._action_mask = slotlib.slot_mask(chunk_slots)
        self._state_mask = slotlib.slot_mask(self.state_slots)  # all False for a store without state
        for m in (self._action_mask, self._state_mask):
            m.setflags(write=False)  # shared by every window: to_torch copies read-only arrays

    def _resolve_keys(self, store: Store) -> None:
        obs_keys = self.config.obs_keys
        if obs_keys is None:
            obs_keys = (*store.camera_keys, *([STATE_KEY] if STATE_KEY in self.keys else []))
        self.action_source = self.config.action_key
        for k in (*obs_keys, self.action_source):
            if k not in self.keys:
                raise SamplerError(f"{self.path}: the window needs key {k!r}, the store has {sorted(self.keys)}")
        self.image_keys = tuple(k for k in obs_keys if _is_image(self.keys[k]))
        self.lowdim_obs_keys = tuple(k for k in obs_keys if k not in self.image_keys)

    def _build_index(self, store: Store) -> None:
        self._episode = np.asarray(store.array("episode_index")[:], np.int64)
        self._anchor, self._anchor_task = _frame_tasks(store, self.config.language, self._episode)
        self._starts = store.episode_starts
        self._ends = store.episode_ends
        self._task_text = [*store.tasks, ""]  # task index -1 -> ""
        self._obs_offsets = np.arange(-self.config.n_obs + 1, 1, dtype=np.int64)
        self._act_offsets = np.arange(self.config.chunk, dtype=np.int64)

    @property
    def store(self) -> Store:
        if self._store is None:  # dropped when pickled for a spawned worker
            self._store = Store(self.path)
        return self._store

    @property
    def horizons(self) -> tuple[int, ...]:
        return self.config.horizons

    def __len__(self) -> int:
        return len(self._anchor)

    def window_episodes(self) -> np.ndarray:
        """The episode index of every window (without reading any window), e.g. to split by episode."""
        return self._episode[self._anchor]

    def __getstate__(self) -> dict[str, Any]:
        # Zarr handles and file state stay in the process that opened them.
        return {**self.__dict__, "_store": None, "_readers": {}}

    def _reader(self, key: str) -> FrameReader:
        r = self._readers.get(key)
        if r is None:
            r = self._readers[key] = FrameReader(self.path, key, self.keys[key].shape)
        return r

    def read_images(self, key: str, t: int, first: int) -> np.ndarray:
        """(n_obs, H, W, C) frames ending at t, frames before `first` (the episode start) repeating it."""
        n = self.config.n_obs
        out = np.empty((n, *self.keys[key].shape), np.uint8)
        lo = max(t - n + 1, first)
        pad = lo - (t - n + 1)
        self._reader(key).read(lo, out[pad:])  # one request per camera for the whole history
        if pad:
            out[:pad] = out[pad]
        return out

    def raw(self, i: int) -> dict[str, Any]:
        """The window as numpy arrays (images HWC); `ds[i]` is the same as torch tensors, images CHW."""
        if not 0 <= i < len(self._anchor):
            raise IndexError(f"window {i} out of range 0..{len(self._anchor) - 1}")
        t = int(self._anchor[i])
        ep = int(self._episode[t])
        s, e = int(self._starts[ep]), int(self._ends[ep])
        obs = t + self._obs_offsets
        act = t + self._act_offsets
        out: dict[str, Any] = {key: self.read_images(key, t, s) for key in self.image_keys}
        obs_idx = np.maximum(obs, s)
        for key in self.lowdim_obs_keys:
            out[key] = self._lowdim[key][obs_idx]
        out["observation_is_pad"] = obs < s
        out["action"] = self._lowdim[self.action_source][np.minimum(act, e - 1)]
        out["action_is_pad"] = act >= e
        out["action_slot_mask"] = self._action_mask
        out["state_slot_mask"] = self._state_mask
        out["task"] = self._task_text[self._anchor_task[i]]
        out["embodiment"] = self.embodiment
        out["embodiment_id"] = self.embodiment_id
        out["index"] = t
        out["episode_index"] = ep
        out["frame_index"] = t - s
        out["window_index"] = int(i)
        return out

    def __getitem__(self, i: int) -> dict[str, Any]:
        return to_torch(self.raw(int(i)))


def to_torch(sample: dict[str, Any]) -> dict[str, Any]:
    """numpy window -> torch: images (T, H, W, C) -> (T, C, H, W), the one layout change.

    Integers stay Python ints (the default collate makes one int64 tensor per batch: a tensor per
    sample and key cost more than reading a frame); strings stay strings."""
    out: dict[str, Any] = {}
    for k, v in sample.items():
        if isinstance(v, np.ndarray):
            if v.dtype == np.uint8 and v.ndim == 4:
                v = np.ascontiguousarray(v.transpose(0, 3, 1, 2))
            out[k] = torch.from_numpy(v if v.flags.writeable else v.copy())
        else:
            out[k] = v
    return out


# --- mixtures ---------------------------------------------------------------------------------------
def resize_frames(frames: np.ndarray, size: tuple[int, int]) -> torch.Tensor:
    """(T, H, W, C) uint8 -> (T, C, h, w) uint8 tensor, contiguous: the layout change and the resize
    in one pass (antialiased bilinear, which torch runs natively on uint8 channels-last frames)."""
    x = torch.from_numpy(frames).permute(0, 3, 1, 2)
    if tuple(frames.shape[1:3]) != tuple(size):
        x = torch.nn.functional.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)
    return x.contiguous()


def _camera_key(name: str) -> str:
    return name if name.startswith(IMAGE_PREFIX) else IMAGE_PREFIX + name


class MixtureDataset(Dataset):
    """Several WindowDatasets behind one index: global index = offset of its store + local index.

    Robots with different action/state sizes mix through the 24-slot layout (`slots=True`): `action`
    and `observation.state` become (.., 24) with zeros in unused slots, and `action_slot_mask` /
    `state_slot_mask` say which slots are real (a store without state gets zeros and an empty mask).
    Cameras: `camera_maps[k]` renames store k's cameras ({"wrist_image": "wrist"}, bare names or
    full keys); the cameras every store has are emitted, resized to `image_size` (H, W) when given.
    Embodiment ids follow the sorted embodiment names of the mixture. Items add `source_index`.
    """

    def __init__(
        self,
        datasets: Sequence[WindowDataset],
        *,
        slots: bool = False,
        image_size: tuple[int, int] | None = None,
        camera_maps: Sequence[Mapping[str, str] | None] | None = None,
    ):
        if not datasets:
            raise SamplerError("a mixture needs at least one dataset")
        self.datasets = list(datasets)
        self.slots = slots
        self.image_size = (int(image_size[0]), int(image_size[1])) if image_size else None
        maps = list(camera_maps) if camera_maps is not None else [None] * len(self.datasets)
        if len(maps) != len(self.datasets):
            raise SamplerError(f"camera_maps has {len(maps)} entries for {len(self.datasets)} datasets")
        self.camera_maps = [{_camera_key(a): _camera_key(b) for a, b in (m or {}).items()} for m in maps]
        self.embodiments = sorted({d.embodiment for d in self.datasets})
        self.embodiment_ids = [self.embodiments.index(d.embodiment) for d in self.datasets]
        for d in self.datasets:
            if len(d) == 0:
                raise SamplerError(f"{d.path}: no training windows (language={d.config.language!r})")
        self.offsets = np.cumsum([0, *(len(d) for d in self.datasets)]).astype(np.int64)
        self._names = [f"#{k} {d.path}" for k, d in enumerate(self.datasets)]  # one store may appear twice
        self._check_windows()
        self._check_lowdim()
        self._check_cameras()

    def _check_windows(self) -> None:
        shapes = {n: (d.config.n_obs, d.config.chunk) for n, d in zip(self._names, self.datasets, strict=True)}
        if len(set(shapes.values())) > 1:
            raise SamplerError(f"(n_obs, chunk) differ between datasets {shapes}; use one WindowConfig")
        if self.slots and any(d.action_source != "action" for d in self.datasets):
            raise SamplerError("slots=True places the store's `action` into slots; use action_key='action'")

    def _check_lowdim(self) -> None:
        keys = sorted({k for d in self.datasets for k in d.lowdim_obs_keys})
        for key in keys:
            lacking = [n for n, d in zip(self._names, self.datasets, strict=True) if key not in d.lowdim_obs_keys]
            if lacking and not (self.slots and key == STATE_KEY):
                raise SamplerError(f"{key} is missing from {lacking}; choose common obs_keys (or slots=True for state)")
        self.lowdim_keys = tuple(keys)
        if self.slots:
            return
        for key, sources in [("action", [d.action_source for d in self.datasets])] + [
            (k, [k] * len(self.datasets)) for k in keys
        ]:
            shapes = {n: d.keys[src].shape for n, d, src in zip(self._names, self.datasets, sources, strict=True)}
            if len(set(shapes.values())) > 1:
                raise SamplerError(f"{key} sizes differ between stores {shapes}; mix them with slots=True")

    def _check_cameras(self) -> None:
        renamed = [{m.get(k, k) for k in d.image_keys} for d, m in zip(self.datasets, self.camera_maps, strict=True)]
        self.image_keys = tuple(sorted(set.intersection(*renamed)))
        # Per dataset: (store key, emitted key) of the cameras it contributes.
        self._cameras = [
            [(k, m.get(k, k)) for k in d.image_keys if m.get(k, k) in self.image_keys]
            for d, m in zip(self.datasets, self.camera_maps, strict=True)
        ]
        for name, cams in zip(self._names, self._cameras, strict=True):
            emitted = [dst for _, dst in cams]
            if len(set(emitted)) != len(emitted):
                raise SamplerError(f"{name}: camera_maps maps two cameras to one name ({emitted})")
        for key in self.image_keys:
            shapes = {}
            for name, d, cams in zip(self._names, self.datasets, self._cameras, strict=True):
                src = next(s for s, dst in cams if dst == key)
                h, w, c = d.keys[src].shape
                shapes[name] = (*self.image_size, c) if self.image_size else (h, w, c)
            if len(set(shapes.values())) > 1:
                hint = "" if self.image_size else "; pass image_size to resize them"
                raise SamplerError(f"{key} has different shapes (H, W, C) {shapes}{hint}")

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def locate(self, i: int) -> tuple[int, int]:
        """Global index -> (dataset number, local window index)."""
        if not 0 <= i < len(self):
            raise IndexError(f"window {i} out of range 0..{len(self) - 1}")
        k = int(np.searchsorted(self.offsets, i, side="right") - 1)
        return k, int(i - self.offsets[k])

    def __getitem__(self, i: int) -> dict[str, Any]:
        k, local = self.locate(int(i))
        d = self.datasets[k]
        w = d.raw(local)
        out: dict[str, Any] = {}
        for src, dst in self._cameras[k]:
            out[dst] = resize_frames(w[src], self.image_size) if self.image_size else w[src]
        for key in self.lowdim_keys:
            out[key] = w.get(key)
        if self.slots:
            out["action"] = slotlib.to_slots(w["action"], d.action_slots)
            if STATE_KEY in self.lowdim_keys:
                state = out[STATE_KEY]
                out[STATE_KEY] = (
                    slotlib.to_slots(state, d.state_slots)
                    if state is not None
                    else np.zeros((d.config.n_obs, slotlib.NUM_SLOTS), np.float32)
                )
        for key in ("observation_is_pad", "action_is_pad", "action_slot_mask", "state_slot_mask", "task"):
            out[key] = w[key]
        out.setdefault("action", w["action"])
        out["embodiment"] = d.embodiment
        out["embodiment_id"] = self.embodiment_ids[k]
        for key in ("index", "episode_index", "frame_index", "window_index"):
            out[key] = w[key]
        out["source_index"] = k
        return to_torch(out)


def _dist_rank_world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


class MixtureSampler(Sampler[int]):
    """Deterministic weighted sampling over a MixtureDataset, epoch by epoch.

    Each epoch draws `num_samples` windows (default: the mixture's size): dataset k gets its share
    by weight (largest remainders for the rounding; weights default to dataset sizes), drawn without
    replacement from a fresh permutation per pass over that dataset, and the whole list is
    shuffled. The order depends only on (seed, epoch): call `set_epoch(e)` each epoch.
    `rank`/`world_size` (default: torch.distributed's, else 0/1) give each process an equal-length
    strided slice; the list wraps around so every rank gets the same number of windows.
    """

    def __init__(
        self,
        mixture: MixtureDataset,
        weights: Sequence[float] | None = None,
        num_samples: int | None = None,
        seed: int = 0,
        rank: int | None = None,
        world_size: int | None = None,
    ):
        sizes = np.diff(mixture.offsets)
        w = np.asarray(weights if weights is not None else sizes, np.float64)
        if w.shape != sizes.shape or np.any(w < 0) or not np.all(np.isfinite(w)) or w.sum() <= 0:
            raise SamplerError(f"need one non-negative weight per dataset ({len(sizes)}), got {w.tolist()}")
        self.weights = w / w.sum()
        self.sizes = sizes
        self.offsets = mixture.offsets
        self.num_samples = int(num_samples if num_samples is not None else sizes.sum())
        if self.num_samples < 1:
            raise SamplerError(f"num_samples must be positive, got {self.num_samples}")
        self.seed, self.epoch = int(seed), 0
        dist_rank, dist_world = _dist_rank_world()
        self.rank = dist_rank if rank is None else int(rank)
        self.world_size = dist_world if world_size is None else int(world_size)
        if not 0 <= self.rank < self.world_size:
            raise SamplerError(f"rank {self.rank} outside world_size {self.world_size}")

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def counts(self) -> np.ndarray:
        """Windows per dataset in one epoch (before the split between processes)."""
        exact = self.weights * self.num_samples
        counts = np.floor(exact).astype(np.int64)
        short = self.num_samples - int(counts.sum())
        counts[np.argsort(-(exact - counts), kind="stable")[:short]] += 1
        return counts

    def epoch_indices(self) -> np.ndarray:
        """Every global index of this epoch, before the split between processes."""
        rng = np.random.default_rng([self.seed, self.epoch])
        parts = []
        for k, (count, size) in enumerate(zip(self.counts(), self.sizes, strict=True)):
            passes = -(-int(count) // int(size))
            local = [rng.permutation(int(size)) for _ in range(passes)]
            parts.append(np.concatenate(local)[:count] + self.offsets[k] if local else np.zeros(0, np.int64))
        return rng.permutation(np.concatenate(parts))

    def __iter__(self) -> Iterator[int]:
        idx = np.resize(self.epoch_indices(), len(self) * self.world_size)
        return iter(idx[self.rank :: self.world_size].tolist())

    def __len__(self) -> int:
        return -(-self.num_samples // self.world_size)
