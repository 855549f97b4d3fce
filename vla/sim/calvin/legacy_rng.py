"""The draws CALVIN's reference evaluation makes with numpy's legacy generator, and FNV-1.

The reference seeds numpy's global `RandomState` (MT19937) with small integers and calls
`permutation`/`choice`, `shuffle` and `uniform`; `LegacyRandom` is a `numpy.random.RandomState`
with those calls returning plain Python values, so chains and scene layouts are the reference's
draw for draw. (`Generator`/`default_rng` would give other numbers: the legacy stream is the point.)
"""

from __future__ import annotations

from collections.abc import MutableSequence
from typing import Any

import numpy as np

_MASK32 = 0xFFFFFFFF


class LegacyRandom:
    """The subset of `numpy.random.RandomState` the CALVIN protocol uses, as Python values."""

    def __init__(self, seed: int = 0):
        self._rng = np.random.RandomState(seed)

    def seed(self, seed: int) -> None:
        self._rng.seed(seed)

    def random(self) -> float:
        return float(self._rng.random_sample())

    def uniform(self, low: float, high: float) -> float:
        return float(self._rng.uniform(low, high))

    def shuffle(self, items: MutableSequence[Any]) -> None:
        """In place, numpy's order (a list of tuples is shuffled as a sequence, never as an array)."""
        self._rng.shuffle(items)

    def permutation(self, n: int) -> list[int]:
        return self._rng.permutation(n).tolist()

    def choice_without_replacement(self, n: int, size: int) -> list[int]:
        """`choice(n, size, replace=False)`: the first `size` entries of a full permutation."""
        return self._rng.choice(n, size=size, replace=False).tolist()


def fnv1_32(data: bytes | str) -> int:
    """FNV-1 32-bit with start value 0 (as `pyhash.fnv1_32` computes it); text is hashed as
    UTF-16-LE without a BOM, which is what that library saw of a Python `str`."""
    raw = data.encode("utf-16-le") if isinstance(data, str) else data
    h = 0
    for byte in raw:
        h = ((h * 16777619) & _MASK32) ^ byte
    return h
