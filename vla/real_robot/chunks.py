"""Action chunks labelled with the tick they were computed for, and how a new chunk merges with the current one.

A chunk computed from the observation of tick `t` holds actions for ticks t, t+1, ... t+H-1. By the time it
arrives the loop is at a later tick, so steps in the past are dropped. Chunks may have any length (dynamic
horizons): a short one simply runs out sooner.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MERGE_MODES = ("replace", "ensemble")


@dataclass(frozen=True)
class Chunk:
    tick: int  # the tick whose observation produced it: actions[i] is meant for tick + i
    actions: np.ndarray  # (H, A), H >= 1

    @property
    def end(self) -> int:
        return self.tick + len(self.actions)


class ChunkBuffer:
    """The plan for upcoming ticks. `replace`: the newest chunk wins from its first live step on.
    `ensemble`: temporal ensembling (ACT): every chunk covering a tick votes, older ones weighted
    exp(-k * age_rank) as in Zhao et al. 2023, so boundaries are smooth."""

    def __init__(self, mode: str = "replace", ensemble_k: float = 0.1, max_chunks: int = 8):
        if mode not in MERGE_MODES:
            raise ValueError(f"merge mode must be one of {MERGE_MODES}, got {mode!r}")
        self.mode = mode
        self.k = ensemble_k
        self.max_chunks = max_chunks
        self._chunks: list[Chunk] = []  # oldest first
        self.dropped_steps = 0  # steps that arrived already in the past
        self.stale_chunks = 0  # chunks that arrived entirely in the past

    def add(self, chunk: Chunk, now_tick: int) -> None:
        late = max(0, now_tick - chunk.tick)
        if late >= len(chunk.actions):
            self.stale_chunks += 1
            self.dropped_steps += len(chunk.actions)
            return
        self.dropped_steps += late
        live = Chunk(chunk.tick + late, chunk.actions[late:])
        if self.mode == "replace":
            self._chunks = [live]
        else:
            self._chunks.append(live)
            self._chunks = self._chunks[-self.max_chunks :]

    def action_for(self, tick: int) -> np.ndarray | None:
        """The action planned for `tick`, or None when no chunk covers it (the loop then holds)."""
        self._chunks = [c for c in self._chunks if c.end > tick]
        covering = [c for c in self._chunks if c.tick <= tick]
        if not covering:
            return None
        if self.mode == "replace":
            c = covering[-1]
            return c.actions[tick - c.tick]
        # ACT weights: w_i = exp(-k * i), i = 0 for the oldest chunk.
        acts = np.stack([c.actions[tick - c.tick] for c in covering])
        w = np.exp(-self.k * np.arange(len(covering)))
        return (w[:, None] * acts).sum(0) / w.sum()

    def horizon(self, tick: int) -> int:
        """How many future ticks (from `tick` on) are still planned."""
        return max((c.end - tick for c in self._chunks), default=0)

    def clear(self) -> None:
        self._chunks.clear()
