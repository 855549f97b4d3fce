"""Invertible per-key normalisation from store statistics, for numpy arrays and torch tensors.

Every mode is an affine map x -> (x - offset) / scale, so `unnormalize(normalize(x)) == x` up to
float rounding (quantile clipping, when asked for, is the one non-invertible option):
- "mean_std": zero mean, unit variance;
- "min_max": [min, max] -> [-1, 1];
- "quantile": [q01, q99] -> [-1, 1] (robust to outliers; the usual choice for actions);
- "identity": unchanged.
Policies keep their Normalizer with the checkpoint (`state_dict`), so the statistics a model was
trained with travel with it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from vla.datasets import slots as slotlib

MODES = ("mean_std", "min_max", "quantile", "identity")
EPS = 1e-6

Array = np.ndarray | torch.Tensor


def _affine(stats: Mapping[str, Any], mode: str) -> tuple[np.ndarray, np.ndarray]:
    if mode == "mean_std":
        offset, scale = np.asarray(stats["mean"]), np.asarray(stats["std"])
    elif mode == "min_max":
        lo, hi = np.asarray(stats["min"]), np.asarray(stats["max"])
        offset, scale = (hi + lo) / 2, (hi - lo) / 2
    elif mode == "quantile":
        lo, hi = np.asarray(stats["q01"]), np.asarray(stats["q99"])
        offset, scale = (hi + lo) / 2, (hi - lo) / 2
    elif mode == "identity":
        ref = np.asarray(stats.get("mean", [0.0]))
        offset, scale = np.zeros_like(ref), np.ones_like(ref)
    else:
        raise ValueError(f"unknown normalisation mode {mode!r}; choose one of {MODES}")
    # A constant dimension (zero spread) is centred but not scaled, instead of dividing by zero.
    scale = np.where(np.abs(scale) < EPS, 1.0, scale)
    return offset.astype(np.float32), scale.astype(np.float32)


def _like(value: np.ndarray, x: Array) -> Array:
    if isinstance(x, torch.Tensor):
        return torch.as_tensor(value, dtype=x.dtype, device=x.device)
    return value.astype(x.dtype, copy=False)


@dataclass
class KeyNorm:
    mode: str
    offset: np.ndarray
    scale: np.ndarray
    clip: bool = False


class Normalizer:
    """Normalisation of several keys, each with its own mode."""

    def __init__(self, norms: Mapping[str, KeyNorm]):
        self.norms = dict(norms)

    @classmethod
    def from_stats(
        cls, stats: Mapping[str, Mapping[str, Any]], modes: Mapping[str, str], clip: bool = False
    ) -> Normalizer:
        missing = [k for k in modes if k not in stats]
        if missing:
            raise KeyError(f"no statistics for {missing}; the store has statistics for {sorted(stats)}")
        return cls({k: KeyNorm(m, *_affine(stats[k], m), clip=clip and m != "identity") for k, m in modes.items()})

    def normalize(self, key: str, x: Array) -> Array:
        n = self.norms.get(key)
        if n is None:
            return x
        y = (x - _like(n.offset, x)) / _like(n.scale, x)
        if n.clip:
            y = y.clamp(-1, 1) if isinstance(y, torch.Tensor) else np.clip(y, -1, 1)
        return y

    def unnormalize(self, key: str, y: Array) -> Array:
        n = self.norms.get(key)
        if n is None:
            return y
        return y * _like(n.scale, y) + _like(n.offset, y)

    def normalize_batch(self, batch: Mapping[str, Any]) -> dict[str, Any]:
        return {k: self.normalize(k, v) if k in self.norms else v for k, v in batch.items()}

    def state_dict(self) -> dict[str, Any]:
        return {
            k: {"mode": n.mode, "offset": n.offset.tolist(), "scale": n.scale.tolist(), "clip": n.clip}
            for k, n in self.norms.items()
        }

    @classmethod
    def from_state_dict(cls, d: Mapping[str, Mapping[str, Any]]) -> Normalizer:
        return cls(
            {
                k: KeyNorm(
                    v["mode"],
                    np.asarray(v["offset"], np.float32),
                    np.asarray(v["scale"], np.float32),
                    bool(v.get("clip", False)),
                )
                for k, v in d.items()
            }
        )


class MultiNormalizer:
    """Per-embodiment normalisation of slot-layout tensors (B, ..., 24).

    Each embodiment's native statistics are placed into its slots; unused slots get offset 0 and
    scale 1, so padded zeros stay zero in both directions.
    """

    def __init__(self, normalizers: Sequence[Normalizer], slots: Mapping[str, Sequence[Sequence[int]]]):
        # slots[key][embodiment_id] = the native->slot indices of that embodiment for that key
        self.normalizers = list(normalizers)
        self.slots = {k: [list(s) for s in v] for k, v in slots.items()}
        self.tables: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        for key, per_emb in self.slots.items():
            off = np.zeros((len(per_emb), slotlib.NUM_SLOTS), np.float32)
            scl = np.ones((len(per_emb), slotlib.NUM_SLOTS), np.float32)
            for e, idx in enumerate(per_emb):
                n = self.normalizers[e].norms.get(key)
                if n is not None and idx:
                    off[e, idx], scl[e, idx] = n.offset, n.scale
            self.tables[key] = (off, scl)

    def _rows(self, key: str, x: Array, embodiment_id: Array) -> tuple[Array, Array]:
        off, scl = self.tables[key]
        ids = embodiment_id.cpu().numpy() if isinstance(embodiment_id, torch.Tensor) else np.asarray(embodiment_id)
        shape = (len(ids),) + (1,) * (x.ndim - 2) + (slotlib.NUM_SLOTS,)
        return _like(off[ids].reshape(shape), x), _like(scl[ids].reshape(shape), x)

    def normalize(self, key: str, x: Array, embodiment_id: Array) -> Array:
        if key not in self.tables:
            return x
        off, scl = self._rows(key, x, embodiment_id)
        return (x - off) / scl

    def unnormalize(self, key: str, y: Array, embodiment_id: Array) -> Array:
        if key not in self.tables:
            return y
        off, scl = self._rows(key, y, embodiment_id)
        return y * scl + off

    def state_dict(self) -> dict[str, Any]:
        return {"normalizers": [n.state_dict() for n in self.normalizers], "slots": self.slots}

    @classmethod
    def from_state_dict(cls, d: Mapping[str, Any]) -> MultiNormalizer:
        return cls([Normalizer.from_state_dict(n) for n in d["normalizers"]], d["slots"])
