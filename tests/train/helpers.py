"""A simple task for training tests: reach a fixed goal from random starts, state only.

The action chunk is a deterministic function of the state (a_t = gain * (goal - p_t), and
p_{t+1} = p_t + a_t), so a policy that learned the task predicts the demonstrated chunk."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tests.datasets.store_helpers import small_spec
from vla.datasets.store import Episode, Store, StoreWriter

GOAL = np.array([0.5, -0.3, 0.2, 0.8], np.float32)
GAIN = 0.1
TINY = {"width": 32, "n_heads": 2, "n_layers": 1, "num_sampling_steps": 4}  # for tests about mechanics


def reach_episode(rng: np.random.Generator, length: int) -> tuple[np.ndarray, np.ndarray]:
    p = rng.uniform(-1, 1, size=4).astype(np.float32)
    states, actions = [], []
    for _ in range(length):
        a = GAIN * (GOAL - p)
        states.append(p.copy())
        # 7-D action: 4 dims drive the state, 3 more are a fixed mix of them (still predictable)
        actions.append(np.concatenate([a, a[:3] * -0.5]))
        p = p + a
    return np.stack(states), np.stack(actions).astype(np.float32)


def write_reach_store(path: Path, episodes: int = 12, length: int = 30, seed: int = 0, **spec_kw) -> Store:
    spec = small_spec(cameras=(), **spec_kw)
    rng = np.random.default_rng(seed)
    w = StoreWriter(path, spec)
    for i in range(episodes):
        s, a = reach_episode(rng, length)
        a = a[:, : spec.action_dim]  # smaller action spaces keep a prefix (another robot, same task)
        w.add_episode(Episode(frames={"observation.state": s, "action": a}, task="reach the goal", source_id=f"{i}"))
    return w.finalize()
