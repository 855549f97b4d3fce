"""Planners: what turns a batch of observation histories into action chunks for the harness.

The harness talks to one small interface (`Planner.plan(batch) -> Plan`), so a trained policy, the
random smoke-test policy, a replay of recorded actions or a client of a policy server plug in the
same way. A `Plan` carries, per row, a chunk of actions and how many of them to execute before
re-planning, so policies that choose their own horizon (Mixture-of-Horizons) need nothing special.

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

from vla.errors import VlaError
from vla.eval.episodes import EvalError
from vla.policies.pretrained import load_data_spec  # noqa: F401  (protocols import it from here until they move)


@dataclass
class Plan:
    actions: np.ndarray  # (B, H, A) in the environment's raw action units
    n_exec: np.ndarray  # (B,) ints in [1, H]: actions to execute before the next plan


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


class PolicyPlanner:
    """A `vla.policies.policy.Policy` behind the planner interface.

    The harness keeps the per-environment observation histories and action queues (the policy's own
    single queue would mix environments), so only `predict_chunk` is called, on the stacked rows.
    A policy that picks its own horizon implements `predict_plan(batch) -> (chunk, n_exec)` instead
    (and, if it only does so in some settings, `decides_horizon` says when). `dynamic_horizon`: the
    threshold ratio of a Mixture-of-Horizons policy's dynamic inference (`set_dynamic_horizon`).
    """

    def __init__(
        self,
        policy: Any,
        replan_steps: int | None = None,
        dynamic_horizon: float | None = None,
        embodiment: str | None = None,
    ):
        self.policy = policy.eval()
        self.layout: Any = None  # a multi-embodiment policy's slot layout of the env's robot (bind_embodiment)
        if embodiment is not None:
            self.bind_embodiment(embodiment)
        if dynamic_horizon is not None:
            if not hasattr(policy, "set_dynamic_horizon"):
                raise EvalError(f"--dynamic-horizon: a {policy.config.name!r} policy has no mixture of horizons")
            try:
                policy.set_dynamic_horizon(float(dynamic_horizon))
            except VlaError as e:
                raise EvalError(f"--dynamic-horizon {dynamic_horizon}: {e}") from None
        cfg = policy.config
        self.n_obs = cfg.n_obs
        self.obs_keys = cfg.observation_keys
        # The re-plan interval cannot exceed the chunk: executing past it would need actions never predicted.
        self.replan_steps = min(replan_steps or cfg.n_action_steps, cfg.chunk_size)

    def plan(self, batch: Mapping[str, Any]) -> Plan:
        import torch

        inputs = self._to_torch(batch)
        with torch.no_grad():
            if self.decides_horizon:
                chunk, n_exec = self.policy.predict_plan(inputs)
                n = np.asarray(torch.as_tensor(n_exec).cpu(), np.int64).reshape(-1)
            else:
                chunk = self.policy.predict_chunk(inputs)
                n = np.full(chunk.shape[0], self.replan_steps)
        if self.layout is not None:
            chunk = self.layout.to_native(chunk)
        actions = chunk.detach().float().cpu().numpy().astype(np.float64)
        return Plan(actions, np.clip(n, 1, actions.shape[1]))

    def bind_embodiment(self, embodiment: str) -> None:
        """Run a multi-embodiment policy as `embodiment`: native observations in, native actions out
        (a no-op for single-embodiment policies)."""
        from vla.policies.embodiment import EmbodimentLayout

        try:
            self.layout = EmbodimentLayout.of(self.policy, embodiment)
        except VlaError as e:
            raise EvalError(str(e)) from None

    @property
    def native_config(self) -> Any:
        """The policy config as the environment sees it: native state/action sizes when bound."""
        cfg = self.policy.config
        if self.layout is None:
            return cfg
        return cfg.replace(state_dim=self.layout.state_dim, action_dim=self.layout.action_dim)

    @property
    def multi_embodiment(self) -> bool:
        return self.policy.embodiments is not None

    @property
    def decides_horizon(self) -> bool:
        return policy_decides_horizon(self.policy)

    def _to_torch(self, batch: Mapping[str, Any]) -> dict[str, Any]:
        import torch

        from vla.policies.runtime import observation_batch

        device = next(self.policy.parameters(), torch.empty(0)).device
        return observation_batch(self.policy.config, batch, batch["task"], device, self.layout)

    def describe(self) -> dict[str, Any]:
        cfg = self.policy.config
        return {
            "type": cfg.name,
            "chunk_size": cfg.chunk_size,
            "n_obs": cfg.n_obs,
            "replan_steps": "policy-decided" if self.decides_horizon else self.replan_steps,
            **({"dynamic_horizon": cfg.dynamic_ratio} if getattr(cfg, "dynamic_ratio", None) is not None else {}),
            "parameters": int(sum(p.numel() for p in self.policy.parameters())),
        }


@dataclass(frozen=True)
class PlannerSpec:
    """How to build a planner, picklable so that worker processes can each build their own."""

    policy: str  # "random" or a checkpoint directory
    replan_steps: int | None = None
    action_low: tuple[float, ...] = ()  # the random planner's bounds
    action_high: tuple[float, ...] = ()
    device: str = "cpu"
    seed: int = 0
    dynamic_horizon: float | None = None  # MoH dynamic inference threshold ratio (None: off)
    embodiment: str | None = None  # the env's robot, for multi-embodiment (slot-layout) policies

    @property
    def is_random(self) -> bool:
        return self.policy == "random"

    def build(self) -> Planner:
        if self.is_random:
            return RandomPlanner(self.action_low, self.action_high, self.replan_steps or 1)
        import torch

        from vla.policies.policy import Policy

        torch.manual_seed(self.seed)
        policy = Policy.from_pretrained(self.policy, map_location=self.device)
        return PolicyPlanner(policy, self.replan_steps, self.dynamic_horizon, self.embodiment)


def policy_decides_horizon(policy: Any) -> bool:
    """Whether a policy chooses how many actions of each chunk to execute (`predict_plan`)."""
    return hasattr(policy, "predict_plan") and bool(getattr(policy, "decides_horizon", True))
