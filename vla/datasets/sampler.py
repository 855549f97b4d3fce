"""Training windows from stores, and weighted mixtures of stores from different robots.

A window is anchored at frame t of an episode: `n_obs` observation frames ending at t (padded at
the episode start by repeating the first frame) and an action chunk of `max(horizons)` steps
starting at t (padded at the episode end by repeating the last action). Pad masks say which
entries are padding. Several horizons are prefixes of that chunk (`horizon_masks`).

Low-dimensional arrays are loaded into memory once (they are small); images are read from the
store per window, one slice per camera. Zarr handles are opened lazily in each process, so the
datasets work in DataLoader workers.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from vla.datasets import slots as slotlib
from vla.datasets.store import Store
from vla.errors import VlaError

LANGUAGE_MODES = ("all", "annotations")


class SamplerError(VlaError):
    """A window or mixture configuration that cannot work with the given stores."""


@dataclass(frozen=True)
class WindowConfig:
    n_obs: int = 1  # observation history length
    horizons: tuple[int, ...] = (10,)  # action chunk lengths; the chunk has max(horizons) steps
    obs_keys: tuple[str, ...] | None = None  # default: every camera + observation.state
    action_key: str = "action"
    # "all": every frame is an anchor, language = a covering annotation, else the episode's task.
    # "annotations": anchors only inside language windows (CALVIN-style), one per (window, frame).
    language: str = "all"

    @property
    def chunk(self) -> int:
        return max(self.horizons)

    def __post_init__(self) -> None:
        if self.n_obs < 1 or not self.horizons or min(self.horizons) < 1:
            raise SamplerError(f"n_obs and horizons must be positive, got n_obs={self.n_obs}, horizons={self.horizons}")
        if self.language not in LANGUAGE_MODES:
            raise SamplerError(f"language must be one of {LANGUAGE_MODES}, got {self.language!r}")


def horizon_masks(horizons: Sequence[int], action_is_pad: torch.Tensor) -> dict[int, torch.Tensor]:
    """Per horizon h: which chunk steps belong to it (step < h and not padding)."""
    steps = torch.arange(action_is_pad.shape[-1], device=action_is_pad.device)
    return {h: (steps < h) & ~action_is_pad for h in horizons}


def _to_torch(sample: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in sample.items():
        if isinstance(v, np.ndarray):
            if v.dtype == np.uint8 and v.ndim == 4:  # (T, H, W, C) -> (T, C, H, W): the one layout change
                v = np.ascontiguousarray(v.transpose(0, 3, 1, 2))
            out[k] = torch.from_numpy(v)
        else:
            out[k] = v
    return out


class WindowDataset(Dataset):
    """Windows of one store: `len()` anchors, each a dict of numpy-backed torch tensors."""

    def __init__(self, store: Store | str | Path, config: WindowConfig | None = None, embodiment_id: int = 0):
        self.store = store if isinstance(store, Store) else Store(store)
        self.path = str(self.store.path)
        self.config = config or WindowConfig()
        self.embodiment = self.store.spec.embodiment
        self.embodiment_id = embodiment_id
        keys = self.store.keys
        obs_keys = self.config.obs_keys
        if obs_keys is None:
            obs_keys = (*self.store.camera_keys, *(["observation.state"] if "observation.state" in keys else []))
        for k in (*obs_keys, self.config.action_key):
            if k not in keys:
                raise SamplerError(f"{self.path}: the window needs key {k!r}, the store has {sorted(keys)}")
        self.image_keys = tuple(k for k in obs_keys if keys[k].dtype == "uint8" and len(keys[k].shape) == 3)
        self.lowdim_obs_keys = tuple(k for k in obs_keys if k not in self.image_keys)
        self._lowdim = {
            k: np.asarray(self.store.array(k)[:], np.float32) for k in (*self.lowdim_obs_keys, self.config.action_key)
        }
        self._build_index()
        self._images: dict[str, Any] | None = None
        self._images_pid = -1

    def _build_index(self) -> None:
        store = self.store
        ep = np.asarray(store.array("episode_index")[:], np.int64)
        self._frame_start = store.episode_starts[ep]
        self._frame_end = store.episode_ends[ep]
        self._frame_index = np.asarray(store.array("frame_index")[:], np.int64)
        self._episode = ep
        tasks = np.asarray([*store.tasks, ""], dtype=object)  # index -1 -> ""
        self._tasks = tasks
        ann = store.annotations
        if self.config.language == "annotations":
            lengths = ann[:, 1] - ann[:, 0]
            self._anchor = np.concatenate([np.arange(s, e) for s, e, _ in ann]) if len(ann) else np.zeros(0, np.int64)
            self._anchor_task = np.repeat(ann[:, 2], lengths) if len(ann) else np.zeros(0, np.int64)
        else:
            n = store.num_frames
            task = store.episode_task[ep].astype(np.int64)
            for s, e, t in ann[::-1]:  # the first annotation covering a frame wins
                task[s:e] = t
            self._anchor = np.arange(n, dtype=np.int64)
            self._anchor_task = task

    def __len__(self) -> int:
        return len(self._anchor)

    def _image_arrays(self) -> dict[str, Any]:
        # Reopen per process: a DataLoader worker must not share the parent's handles.
        if self._images is None or self._images_pid != os.getpid():
            self._images = {k: Store(self.path).array(k) for k in self.image_keys}
            self._images_pid = os.getpid()
        return self._images

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_images"] = None
        return state

    def raw(self, i: int) -> dict[str, Any]:
        """The window as numpy arrays (images HWC); `__getitem__` converts to torch."""
        if not 0 <= i < len(self):
            raise IndexError(f"window {i} out of range 0..{len(self) - 1}")
        cfg = self.config
        t = int(self._anchor[i])
        s, e = int(self._frame_start[t]), int(self._frame_end[t])
        obs = np.arange(t - cfg.n_obs + 1, t + 1)
        obs_pad = obs < s
        obs = np.maximum(obs, s)
        act = np.arange(t, t + cfg.chunk)
        act_pad = act >= e
        act = np.minimum(act, e - 1)
        out: dict[str, Any] = {}
        first = int(obs[0])
        for k, arr in self._image_arrays().items():
            frames = np.asarray(arr[first : t + 1])  # one read per camera
            out[k] = frames[obs - first]
        for k in self.lowdim_obs_keys:
            out[k] = self._lowdim[k][obs]
        out["observation_is_pad"] = obs_pad
        out["action"] = self._lowdim[cfg.action_key][act]
        out["action_is_pad"] = act_pad
        out["task"] = str(self._tasks[self._anchor_task[i]])
        out["embodiment"] = self.embodiment
        out["embodiment_id"] = np.int64(self.embodiment_id)
        out["index"] = np.int64(t)
        out["episode_index"] = np.int64(self._episode[t])
        out["frame_index"] = np.int64(self._frame_index[t])
        return out

    def __getitem__(self, i: int) -> dict[str, Any]:
        return _to_torch(self.raw(i))


def _resize(frames: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    import cv2

    h, w = size
    if frames.shape[1:3] == (h, w):
        return frames
    return np.stack([cv2.resize(f, (w, h), interpolation=cv2.INTER_AREA) for f in frames])


class MixtureDataset(Dataset):
    """Several WindowDatasets behind one index: global index = offset of its store + local index.

    Robots with different action/state sizes mix through the 24-slot layout (`slots=True`), which
    adds `action_slot_mask` / `state_slot_mask`. Cameras: `camera_maps[k]` renames store k's camera
    keys; the cameras every store has are emitted, resized to `image_size` when given.
    """

    def __init__(
        self,
        datasets: Sequence[WindowDataset],
        *,
        slots: bool = False,
        image_size: tuple[int, int] | None = None,
        camera_maps: Sequence[dict[str, str]] | None = None,
    ):
        if not datasets:
            raise SamplerError("a mixture needs at least one dataset")
        self.datasets = list(datasets)
        self.slots = slots
        self.image_size = tuple(image_size) if image_size else None
        self.camera_maps = list(camera_maps) if camera_maps else [{} for _ in datasets]
        self.embodiments = sorted({d.embodiment for d in datasets})
        for d in self.datasets:
            d.embodiment_id = self.embodiments.index(d.embodiment)
        self.offsets = np.cumsum([0, *(len(d) for d in self.datasets)])
        for d in self.datasets:
            if len(d) == 0:
                raise SamplerError(f"{d.path}: no training windows (language={d.config.language!r})")
        self._check_compatible()

    def _check_compatible(self) -> None:
        if not self.slots:
            for key in ("action", "observation.state"):
                dims = {d.path: d.store.keys[key].shape for d in self.datasets if key in d.store.keys}
                if len(set(dims.values())) > 1:
                    raise SamplerError(f"{key} sizes differ between stores {dims}; mix them with slots=True")
        renamed = [{m.get(k, k) for k in d.image_keys} for d, m in zip(self.datasets, self.camera_maps, strict=True)]
        self.image_keys = tuple(sorted(set.intersection(*renamed)))
        if self.image_size is None:
            for key in self.image_keys:
                shapes = {}
                for d, m in zip(self.datasets, self.camera_maps, strict=True):
                    src = next(k for k in d.image_keys if m.get(k, k) == key)
                    shapes[d.path] = d.store.keys[src].shape
                if len(set(shapes.values())) > 1:
                    raise SamplerError(f"{key} has different sizes {shapes}; pass image_size to resize them")

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def locate(self, i: int) -> tuple[int, int]:
        """Global index -> (store number, local window index)."""
        k = int(np.searchsorted(self.offsets, i, side="right") - 1)
        return k, int(i - self.offsets[k])

    def __getitem__(self, i: int) -> dict[str, Any]:
        k, local = self.locate(i)
        d, cmap = self.datasets[k], self.camera_maps[k]
        raw = d.raw(local)
        out: dict[str, Any] = {}
        for key, value in raw.items():
            if key in d.image_keys:
                key = cmap.get(key, key)
                if key not in self.image_keys:
                    continue
                value = _resize(value, self.image_size) if self.image_size else value
            out[key] = value
        if self.slots:
            out["action"] = slotlib.to_slots(out["action"], d.store.action_slots)
            out["action_slot_mask"] = slotlib.slot_mask(d.store.action_slots)
            if "observation.state" in out:
                out["observation.state"] = slotlib.to_slots(out["observation.state"], d.store.state_slots)
                out["state_slot_mask"] = slotlib.slot_mask(d.store.state_slots)
        out["source_index"] = np.int64(k)
        return _to_torch(out)


class MixtureSampler(Sampler[int]):
    """Deterministic weighted sampling over a MixtureDataset, epoch by epoch.

    Each epoch draws `num_samples` windows: store k gets its share by weight (largest remainders
    for the rounding), drawn without replacement from a fresh permutation per pass over the store,
    and the whole list is shuffled. `rank`/`world_size` give each distributed process a disjoint
    slice of equal length.
    """

    def __init__(
        self,
        mixture: MixtureDataset,
        weights: Sequence[float] | None = None,
        num_samples: int | None = None,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ):
        sizes = np.diff(mixture.offsets)
        w = np.asarray(weights if weights is not None else sizes, np.float64)
        if len(w) != len(sizes) or np.any(w < 0) or w.sum() <= 0:
            raise SamplerError(f"need one non-negative weight per store ({len(sizes)}), got {list(w)}")
        self.weights = w / w.sum()
        self.sizes = sizes
        self.offsets = mixture.offsets
        self.num_samples = int(num_samples if num_samples is not None else sizes.sum())
        self.seed, self.epoch = seed, 0
        self.rank, self.world_size = rank, world_size

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def counts(self) -> np.ndarray:
        exact = self.weights * self.num_samples
        counts = np.floor(exact).astype(np.int64)
        short = self.num_samples - counts.sum()
        counts[np.argsort(-(exact - counts), kind="stable")[:short]] += 1
        return counts

    def epoch_indices(self) -> np.ndarray:
        """Every global index of this epoch, before the split between processes."""
        rng = np.random.default_rng([self.seed, self.epoch])
        parts = []
        for k, (count, size) in enumerate(zip(self.counts(), self.sizes, strict=True)):
            passes = -(-int(count) // int(size)) if count else 0
            local = np.concatenate([rng.permutation(size) for _ in range(passes)])[:count] if passes else []
            parts.append(np.asarray(local, np.int64) + self.offsets[k])
        return rng.permutation(np.concatenate(parts))

    def __iter__(self):
        idx = self.epoch_indices()
        per_rank = -(-len(idx) // self.world_size)
        idx = np.resize(idx, per_rank * self.world_size)  # wrap around so every rank has equal length
        return iter(idx[self.rank :: self.world_size].tolist())

    def __len__(self) -> int:
        return -(-self.num_samples // self.world_size)
