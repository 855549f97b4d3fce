"""Planners: what turns a batch of observation histories into action chunks for the harness.

The harness talks to one small interface (`Planner.plan(batch) -> Plan`), so a trained policy (the policy
runtime's `PolicyPlanner`, vla.policies.runtime), the random smoke-test policy, a replay of recorded actions
or a client of a policy server plug in the same way. A `Plan` carries, per row, a chunk of actions and how
many of them to execute before re-planning, so policies that choose their own horizon (Mixture-of-Horizons)
need nothing special.

Batch layout (numpy, one row per environment that needs a plan): each observation key the planner
reads -> (B, n_obs, ...) with images uint8 HWC as the environment gives them; `task` list[str];
`episode_id` list[str]; `plan_index` list[int] (0 for an episode's first plan); `policy_seed`
list[int]; `stage` list[int] (multi-stage episodes such as CALVIN chains: the stage whose
instruction `task` holds; a new stage starts from a fresh observation history).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from vla.policies.foreign import build_foreign, is_foreign
from vla.policies.runtime import Plan, PolicyPlanner


class Planner(Protocol):
    n_obs: int  # observation frames per row
    obs_keys: tuple[str, ...]  # observation keys read (the harness ships only these between processes)

    def plan(self, batch: Mapping[str, Any]) -> Plan: ...

    def describe(self) -> dict[str, Any]:
        """What to record in summary.json about this planner."""
        ...


class RandomPlanner:
    """Uniform random actions in the action bounds; reproducible per (episode, plan), for smoke tests."""

    n_obs = 1
    obs_keys: tuple[str, ...] = ()

    def __init__(self, low: Sequence[float], high: Sequence[float], chunk: int = 1):
        self.low, self.high = np.asarray(low, np.float64), np.asarray(high, np.float64)
        self.chunk = chunk

    def plan(self, batch: Mapping[str, Any]) -> Plan:
        rows = [
            np.random.default_rng([seed, index]).uniform(self.low, self.high, (self.chunk, len(self.low)))
            for seed, index in zip(batch["policy_seed"], batch["plan_index"], strict=True)
        ]
        return Plan(np.stack(rows), np.full(len(rows), self.chunk))

    def describe(self) -> dict[str, Any]:
        return {"type": "random", "low": self.low.tolist(), "high": self.high.tolist(), "chunk": self.chunk}


@dataclass(frozen=True)
class PlannerSpec:
    """How to build a planner, picklable so that worker processes can each build their own."""

    policy: str  # "random", a checkpoint directory, "lerobot:DIR" or "ws://HOST:PORT" (vla.policies.foreign)
    replan_steps: int | None = None
    action_low: tuple[float, ...] = ()  # the random planner's bounds
    action_high: tuple[float, ...] = ()
    device: str = "cpu"
    seed: int = 0
    dynamic_horizon: float | None = None  # MoH dynamic inference threshold ratio (None: off)
    embodiment: str | None = None  # the env's robot, for multi-embodiment (slot-layout) policies
    api_key: str | None = None  # a websocket policy server's (`ws://`)

    @property
    def is_random(self) -> bool:
        return self.policy == "random"

    @property
    def is_foreign(self) -> bool:
        return is_foreign(self.policy)

    def build(self) -> Planner:
        if self.is_random:
            return RandomPlanner(self.action_low, self.action_high, self.replan_steps or 1)
        if self.is_foreign:
            return build_foreign(self.policy, self.device, self.replan_steps, self.api_key)
        import torch

        torch.manual_seed(self.seed)
        return PolicyPlanner.load(self.policy, self.device, replan_steps=self.replan_steps,
                                  dynamic_horizon=self.dynamic_horizon, embodiment=self.embodiment)  # fmt: skip
