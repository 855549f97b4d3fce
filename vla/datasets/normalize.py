"""Invertible per-key normalisation from store statistics, for numpy arrays and torch tensors.

Every mode is an affine map x -> (x - offset) / scale over the last axis, so `unnormalize` undoes
`normalize` up to float rounding (quantile clipping, when asked for, is the one lossy option):
- "mean_std": zero mean, unit variance;
- "min_max": [min, max] -> [-1, 1];
- "quantile": [q01, q99] -> [-1, 1] (robust to outliers; optionally clipped to [-1, 1]);
- "identity": unchanged.
A dimension without spread (std or range below EPS) is centred but not scaled, instead of being
divided by ~0. Policies keep their normaliser with the checkpoint (`state_dict()` is plain JSON),
so the statistics a model was trained with travel with it.

`MultiNormalizer` does the same per embodiment on the 24-slot layout of a mixture: each robot's
statistics sit in its own slots, padded slots are kept at exactly 0. Both take the rows' embodiment
ids (`normalize(key, x, embodiment)`; a `Normalizer` covers one embodiment and ignores them), so a
caller never needs to know which one it holds. They only normalise: which robots a policy was trained
on, and where their vectors sit, is the policy's embodiment table (vla.policies.embodiment).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from vla.datasets import slots as slotlib

MODES = ("mean_std", "min_max", "quantile", "identity")
EPS = 1e-6
SLOT_KEYS = {"action": "action_slots", "observation.state": "state_slots"}  # key -> dataset attribute

Array = np.ndarray | torch.Tensor


def _stat(stats: Mapping[str, Any], name: str, key: str, mode: str) -> np.ndarray:
    if name not in stats:
        raise KeyError(f"statistics for {key!r} have no {name!r}, which mode {mode!r} needs (has {sorted(stats)})")
    return np.asarray(stats[name], np.float64)


def affine(stats: Mapping[str, Any], mode: str, key: str = "") -> tuple[np.ndarray, np.ndarray]:
    """(offset, scale) of a mode, as float32 vectors."""
    if mode == "mean_std":
        offset, scale = _stat(stats, "mean", key, mode), _stat(stats, "std", key, mode)
    elif mode in ("min_max", "quantile"):
        lo_name, hi_name = ("min", "max") if mode == "min_max" else ("q01", "q99")
        lo, hi = _stat(stats, lo_name, key, mode), _stat(stats, hi_name, key, mode)
        offset, scale = (hi + lo) / 2, (hi - lo) / 2
    elif mode == "identity":
        ref = next((np.asarray(stats[n]) for n in ("mean", "min", "q01") if n in stats), np.zeros(1))
        offset, scale = np.zeros_like(ref, np.float64), np.ones_like(ref, np.float64)
    else:
        raise ValueError(f"unknown normalisation mode {mode!r} for {key!r}; choose one of {MODES}")
    scale = np.where(np.abs(scale) < EPS, 1.0, scale)  # zero spread: centre only
    return offset.astype(np.float32), scale.astype(np.float32)


def _float_input(x: Array) -> Array:
    # Integer inputs would truncate the float statistics: compute in float32.
    if isinstance(x, torch.Tensor):
        return x if x.is_floating_point() else x.float()
    x = np.asarray(x)
    return x if np.issubdtype(x.dtype, np.floating) else x.astype(np.float32)


@dataclass
class KeyNorm:
    """One key's affine map; torch copies of the constants are cached per (device, dtype)."""

    mode: str
    offset: np.ndarray
    scale: np.ndarray
    clip: bool = False
    _cache: dict[tuple[Any, Any], tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict, repr=False)

    def consts(self, x: Array) -> tuple[Array, Array]:
        if isinstance(x, torch.Tensor):
            k = (x.device, x.dtype)
            if k not in self._cache:
                self._cache[k] = (
                    torch.as_tensor(self.offset, dtype=x.dtype, device=x.device),
                    torch.as_tensor(self.scale, dtype=x.dtype, device=x.device),
                )
            return self._cache[k]
        return self.offset.astype(x.dtype, copy=False), self.scale.astype(x.dtype, copy=False)


class Normalizer:
    """Normalisation of several keys, each with its own mode; keys it does not know pass through."""

    def __init__(self, norms: Mapping[str, KeyNorm]):
        self.norms = dict(norms)

    @classmethod
    def from_stats(
        cls, stats: Mapping[str, Mapping[str, Any]], modes: Mapping[str, str], clip: bool = False
    ) -> Normalizer:
        """`modes` maps key -> mode; `clip` clamps "quantile" outputs to [-1, 1] (not invertible there)."""
        missing = [k for k in modes if k not in stats]
        if missing:
            raise KeyError(f"no statistics for {missing}; the store has statistics for {sorted(stats)}")
        return cls({k: KeyNorm(m, *affine(stats[k], m, k), clip=clip and m == "quantile") for k, m in modes.items()})

    def __contains__(self, key: str) -> bool:
        return key in self.norms

    def _get(self, key: str, x: Array) -> KeyNorm:
        n = self.norms[key]
        if tuple(x.shape[-1:]) != n.offset.shape[-1:] and n.offset.size != 1:
            raise ValueError(f"{key}: last axis has {x.shape[-1]} values, the statistics {n.offset.shape[-1]}")
        return n

    def normalize(self, key: str, x: Array, embodiment: Any = None) -> Array:
        """`embodiment`: the rows' embodiment ids, accepted for a common interface with MultiNormalizer
        (one embodiment: nothing to choose)."""
        if key not in self.norms:
            return x
        x = _float_input(x)
        n = self._get(key, x)
        offset, scale = n.consts(x)
        y = (x - offset) / scale
        if n.clip:
            y = y.clamp(-1, 1) if isinstance(y, torch.Tensor) else np.clip(y, -1, 1)
        return y

    def unnormalize(self, key: str, y: Array, embodiment: Any = None) -> Array:
        if key not in self.norms:
            return y
        y = _float_input(y)
        n = self._get(key, y)
        offset, scale = n.consts(y)
        return y * scale + offset

    def normalize_batch(self, batch: Mapping[str, Any]) -> dict[str, Any]:
        return {k: self.normalize(k, v) if k in self.norms else v for k, v in batch.items()}

    def unnormalize_batch(self, batch: Mapping[str, Any]) -> dict[str, Any]:
        return {k: self.unnormalize(k, v) if k in self.norms else v for k, v in batch.items()}

    def state_dict(self) -> dict[str, Any]:
        """Plain JSON: key -> {mode, offset, scale, clip}."""
        return {
            k: {"mode": n.mode, "offset": n.offset.tolist(), "scale": n.scale.tolist(), "clip": n.clip}
            for k, n in self.norms.items()
        }

    @classmethod
    def from_state_dict(cls, d: Mapping[str, Mapping[str, Any]]) -> Normalizer:
        def vec(v: Any) -> np.ndarray:
            return (v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else np.asarray(v)).astype(np.float32)

        return cls(
            {k: KeyNorm(v["mode"], vec(v["offset"]), vec(v["scale"]), bool(v.get("clip", False))) for k, v in d.items()}
        )


def merge_stats(parts: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Statistics of several stores' data together (one embodiment in several stores).

    mean/std (pooled, count-weighted) and min/max are exact; quantiles are count-weighted averages
    of the stores' quantiles, an approximation.
    """
    if len(parts) == 1:
        return dict(parts[0])
    shapes = {np.asarray(p["mean"]).shape for p in parts}
    if len(shapes) > 1:
        raise ValueError(f"cannot merge statistics of different sizes {sorted(shapes)}")
    w = np.asarray([float(p.get("count", 1)) for p in parts])
    w = w / w.sum()
    mean = sum(wi * np.asarray(p["mean"]) for wi, p in zip(w, parts, strict=True))
    second = sum(wi * (np.asarray(p["std"]) ** 2 + np.asarray(p["mean"]) ** 2) for wi, p in zip(w, parts, strict=True))
    out: dict[str, Any] = {
        "count": int(sum(p.get("count", 0) for p in parts)),
        "mean": mean.tolist(),
        "std": np.sqrt(np.maximum(second - mean**2, 0.0)).tolist(),
        "min": np.min([p["min"] for p in parts], axis=0).tolist(),
        "max": np.max([p["max"] for p in parts], axis=0).tolist(),
    }
    for q in ("q01", "q10", "q50", "q90", "q99"):
        if all(q in p for p in parts):
            out[q] = sum(wi * np.asarray(p[q]) for wi, p in zip(w, parts, strict=True)).tolist()
    return out


def _embodiment_of(d: Any) -> str:
    return d.embodiment if hasattr(d, "embodiment") else d.spec.embodiment


class MultiNormalizer:
    """Per-embodiment normalisation of slot-layout tensors (..., 24), rows chosen by embodiment.

    `normalizers[e]` holds embodiment e's native statistics; `slots[key][e]` its native->slot
    indices for that key. Slots an embodiment does not use get offset 0, scale 1 and are zeroed in
    both directions, so padding stays exactly 0 (and a prediction there never reaches a robot).
    Embodiments are addressed by id (int, array, tensor) or by name (str or list of str).
    """

    def __init__(
        self,
        normalizers: Sequence[Normalizer],
        slots: Mapping[str, Sequence[Sequence[int]]],
        names: Sequence[str] | None = None,
    ):
        self.normalizers = list(normalizers)
        self.names = list(names) if names is not None else [str(i) for i in range(len(self.normalizers))]
        if len(self.names) != len(self.normalizers):
            raise ValueError(f"{len(self.names)} names for {len(self.normalizers)} normalizers")
        self.slots = {k: [[int(i) for i in s] for s in v] for k, v in slots.items()}
        # key -> (offset, scale, slot mask), each (embodiments, 24): one row per embodiment id
        self._tables: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        for key, per_emb in self.slots.items():
            if len(per_emb) != len(self.normalizers):
                raise ValueError(f"slots[{key!r}] has {len(per_emb)} entries for {len(self.normalizers)} embodiments")
            self._tables[key] = self._table(key, per_emb)
        self._cache: dict[tuple[str, Any, Any], tuple[torch.Tensor, ...]] = {}

    def _table(self, key: str, per_emb: list[list[int]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        n = len(per_emb)
        off = np.zeros((n, slotlib.NUM_SLOTS), np.float32)
        scl = np.ones((n, slotlib.NUM_SLOTS), np.float32)
        mask = np.zeros((n, slotlib.NUM_SLOTS), np.float32)
        for e, idx in enumerate(per_emb):
            if not idx:
                continue
            mask[e, idx] = 1.0
            norm = self.normalizers[e].norms.get(key)
            if norm is not None:
                if norm.offset.size != len(idx):
                    raise ValueError(f"{self.names[e]}: {len(idx)} {key} slots but {norm.offset.size} statistics")
                off[e, idx], scl[e, idx] = norm.offset, norm.scale
        return off, scl, mask

    @classmethod
    def from_datasets(
        cls,
        datasets: Sequence[Any],
        modes: Mapping[str, str],
        clip: bool = False,
        embodiments: Sequence[str] | None = None,
    ) -> MultiNormalizer:
        """From WindowDatasets (or Stores); datasets of one embodiment pool their statistics.

        `embodiments` fixes the id order (default: sorted names, as MixtureDataset numbers them)."""
        bad = [k for k in modes if k not in SLOT_KEYS]
        if bad:
            raise ValueError(f"MultiNormalizer normalises slot-layout keys {sorted(SLOT_KEYS)}, not {bad}")
        names = list(embodiments) if embodiments is not None else sorted({_embodiment_of(d) for d in datasets})
        normalizers, slots = [], {k: [] for k in modes}
        for name in names:
            group = [d for d in datasets if _embodiment_of(d) == name]
            if not group:
                raise ValueError(f"no dataset of embodiment {name!r}")
            for key in modes:
                layouts = {tuple(getattr(d, SLOT_KEYS[key])) for d in group}
                if len(layouts) > 1:
                    raise ValueError(f"embodiment {name!r}: datasets disagree on {key} slots {sorted(layouts)}")
                slots[key].append(list(layouts.pop()))
            present = {k: m for k, m in modes.items() if all(k in d.stats for d in group)}
            stats = {k: merge_stats([d.stats[k] for d in group]) for k in present}
            normalizers.append(Normalizer.from_stats(stats, present, clip=clip))
        return cls(normalizers, slots, names)

    @classmethod
    def from_mixture(cls, mixture: Any, modes: Mapping[str, str], clip: bool = False) -> MultiNormalizer:
        """Ids match the mixture's `embodiment_id`s."""
        return cls.from_datasets(mixture.datasets, modes, clip=clip, embodiments=mixture.embodiments)

    def ids(self, embodiment: Any) -> Any:
        """Embodiment ids from ids or names (a name, or a list of names as a collated batch has)."""
        if embodiment is None:
            if len(self.names) == 1:
                return 0
            raise ValueError(f"pass embodiment ids: this normaliser covers {self.names}")
        if isinstance(embodiment, str):
            return self._index(embodiment)
        if isinstance(embodiment, (list, tuple)) and embodiment and isinstance(embodiment[0], str):
            return np.asarray([self._index(e) for e in embodiment], np.int64)
        return embodiment

    def _index(self, name: str) -> int:
        if name not in self.names:
            raise KeyError(f"unknown embodiment {name!r}; known: {self.names}")
        return self.names.index(name)

    def _rows(self, key: str, x: Array, embodiment: Any) -> tuple[Array, Array, Array]:
        ids = self.ids(embodiment)
        if isinstance(x, torch.Tensor):
            ck = (key, x.device, x.dtype)
            if ck not in self._cache:
                self._cache[ck] = tuple(torch.as_tensor(t, dtype=x.dtype, device=x.device) for t in self._tables[key])
            tables = self._cache[ck]
            ids = torch.as_tensor(ids, device=x.device, dtype=torch.long)
        else:
            tables = tuple(t.astype(x.dtype, copy=False) for t in self._tables[key])
            ids = np.asarray(ids, np.int64)
        # One row per batch element, broadcast over the middle axes (time, horizon, ...).
        shape = (*ids.shape, *([1] * (x.ndim - ids.ndim - 1)), slotlib.NUM_SLOTS)
        return tuple(t[ids].reshape(shape) for t in tables)  # type: ignore[return-value]

    def _check(self, key: str, x: Array) -> None:
        if x.shape[-1] != slotlib.NUM_SLOTS:
            raise ValueError(f"{key}: expected the {slotlib.NUM_SLOTS}-slot layout, got last axis {x.shape[-1]}")

    def __contains__(self, key: str) -> bool:
        return key in self._tables

    def normalize(self, key: str, x: Array, embodiment: Any = None) -> Array:
        if key not in self._tables:
            return x
        self._check(key, x)
        x = _float_input(x)
        off, scl, mask = self._rows(key, x, embodiment)
        return (x - off) / scl * mask

    def unnormalize(self, key: str, y: Array, embodiment: Any = None) -> Array:
        if key not in self._tables:
            return y
        self._check(key, y)
        y = _float_input(y)
        off, scl, mask = self._rows(key, y, embodiment)
        return (y * scl + off) * mask

    def state_dict(self) -> dict[str, Any]:
        return {"names": self.names, "normalizers": [n.state_dict() for n in self.normalizers], "slots": self.slots}

    @classmethod
    def from_state_dict(cls, d: Mapping[str, Any]) -> MultiNormalizer:
        return cls([Normalizer.from_state_dict(n) for n in d["normalizers"]], d["slots"], d.get("names"))
