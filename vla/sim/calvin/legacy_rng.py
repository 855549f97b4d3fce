"""numpy's legacy `RandomState` (MT19937) in pure Python, for the draws CALVIN's evaluation makes.

The reference evaluation seeds numpy's global generator with small integers and calls `permutation`,
`shuffle` and `uniform`. Integer seeding there is MT19937's `init_genrand` (not Python's
`random.seed`, which goes through `init_by_array`); once the 624-word state is loaded into a
`random.Random`, its 32-bit outputs and 53-bit doubles are numpy's, so only the seeding and the
bounded-integer rejection rule are written out here. numpy stays a test-only reference.
"""

from __future__ import annotations

import random
import sys
from array import array
from collections.abc import MutableSequence
from functools import cache
from typing import Any

_N = 624
_MASK32 = 0xFFFFFFFF
_AHEAD = 4 * _N  # words kept buffered before a permutation (it needs ~50)


def init_genrand(seed: int) -> tuple[int, ...]:
    """MT19937's integer seeding: the 624-word state numpy's `RandomState(seed)` starts from."""
    if not 0 <= seed <= _MASK32:
        raise ValueError(f"seed must be in [0, 2**32 - 1], got {seed}")
    mt = [seed]
    for k in range(1, _N):
        prev = mt[-1]
        mt.append((1812433253 * (prev ^ (prev >> 30)) + k) & _MASK32)
    return tuple(mt)


class LegacyRandom:
    """The subset of `numpy.random.RandomState` the CALVIN protocol uses, draw for draw.

    32-bit words are taken from a `random.Random` loaded with the seeded state, a block of 624 at
    a time (one `getrandbits` call; CPython emits the words least significant first), because the
    chain generation makes millions of draws and a Python call per draw would triple its time."""

    def __init__(self, seed: int = 0):
        self._rng = random.Random()
        self.seed(seed)

    def seed(self, seed: int) -> None:
        # Position 624: the first draw regenerates the whole block, as numpy's does.
        self._rng.setstate((3, (*init_genrand(seed), _N), None))
        self._words: list[int] = []
        self._pos = 0

    def _refill(self, keep: int = 0) -> None:
        """Append fresh blocks of words until at least `keep` are unread."""
        words = self._words[self._pos :]
        while len(words) < max(keep, 1):
            buf = array("I")
            buf.frombytes(self._rng.getrandbits(32 * _N).to_bytes(4 * _N, "little"))
            if sys.byteorder != "little":
                buf.byteswap()
            words += buf.tolist()
        self._words, self._pos = words, 0

    def bits32(self) -> int:
        if self._pos == len(self._words):
            self._refill()
        self._pos += 1
        return self._words[self._pos - 1]

    def random(self) -> float:
        """A double in [0, 1) from two 32-bit draws, 27 + 26 bits (numpy's `random_sample`)."""
        a, b = self.bits32() >> 5, self.bits32() >> 6
        return (a * 67108864.0 + b) / 9007199254740992.0

    def uniform(self, low: float, high: float) -> float:
        return low + (high - low) * self.random()

    def interval(self, top: int) -> int:
        """An integer in [0, top]: mask to the smallest all-ones value >= top, reject results above top."""
        if top == 0:
            return 0
        if top > _MASK32:
            raise ValueError("bounds above 2**32 - 1 are not needed by the protocol and not implemented")
        mask = (1 << top.bit_length()) - 1
        while True:
            value = self.bits32() & mask
            if value <= top:
                return value

    def shuffle(self, items: MutableSequence[Any]) -> None:
        """In place, numpy's order: for i from n-1 down to 1 swap i with a bounded draw in [0, i]."""
        for i in range(len(items) - 1, 0, -1):
            j = self.interval(i)
            items[i], items[j] = items[j], items[i]

    def permutation(self, n: int) -> list[int]:
        """`permutation(n)`: `shuffle` of range(n), written out inline (the generator's hot loop)."""
        steps = _steps(n)
        if len(self._words) - self._pos < _AHEAD:
            self._refill(_AHEAD)
        while True:
            items, words, pos = list(range(n)), self._words, self._pos
            try:
                for i, mask in steps:
                    j = words[pos] & mask
                    pos += 1
                    while j > i:
                        j = words[pos] & mask
                        pos += 1
                    items[i], items[j] = items[j], items[i]
            except IndexError:  # ran out of buffered words (very rare): buffer more, redo the same draws
                self._refill(2 * (len(self._words) - self._pos))
                continue
            self._pos = pos
            return items

    def choice_without_replacement(self, n: int, size: int) -> list[int]:
        """`choice(n, size, replace=False)`: the first `size` entries of a full permutation."""
        return self.permutation(n)[:size]


@cache
def _steps(n: int) -> tuple[tuple[int, int], ...]:
    """(i, mask) for i from n-1 down to 1: the bounded draws of a shuffle of n items."""
    return tuple((i, (1 << i.bit_length()) - 1) for i in range(n - 1, 0, -1))


def fnv1_32(data: bytes | str) -> int:
    """FNV-1 32-bit with start value 0 (as `pyhash.fnv1_32` computes it); text is hashed as
    UTF-16-LE without a BOM, which is what that library saw of a Python `str`."""
    raw = data.encode("utf-16-le") if isinstance(data, str) else data
    h = 0
    for byte in raw:
        h = ((h * 16777619) & _MASK32) ^ byte
    return h
