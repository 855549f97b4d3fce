"""The one environment interface evaluation code depends on (LIBERO, CALVIN, ...).

An environment describes itself with the same `StoreSpec` a dataset store carries (fps, action and
state dimensions, cameras with their orientation, extra keys), so a harness can check that a
checkpoint trained on a store fits the environment before running a single step (`check_fits`).
Observations are dicts in the store's key vocabulary: `observation.state`,
`observation.images.<camera>` (uint8 HWC), `observation.<extra>`; actions are what the store's
`action` key holds.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable
from types import TracebackType
from typing import Any, NamedTuple

import numpy as np

from vla.datasets.spec import KeySpec, StoreSpec
from vla.errors import VlaError
from vla.keys import ACTION_KEY, STATE_KEY

Obs = dict[str, np.ndarray]


class SimError(VlaError):
    """A simulator cannot be built or used as asked (unknown suite/task, bad action, spec mismatch...)."""


class StepResult(NamedTuple):
    obs: Obs
    success: bool  # the task's own success predicate after this step
    info: dict[str, Any]


class SimEnv(ABC):
    """A task in a simulator: reset to a fixed initial state, step with actions, report success."""

    @property
    @abstractmethod
    def spec(self) -> StoreSpec:
        """Keys, shapes and meaning of what `reset`/`step` return and `step` accepts."""

    @property
    @abstractmethod
    def task_language(self) -> str: ...

    @property
    @abstractmethod
    def max_steps(self) -> int:
        """Step budget of one episode (after settling); the harness enforces it."""

    @property
    @abstractmethod
    def num_init_states(self) -> int: ...

    @abstractmethod
    def reset(self, init_state_id: int) -> Obs:
        """Start an episode from fixed initial state `init_state_id` (same id -> same observation)."""

    @abstractmethod
    def step(self, action: np.ndarray) -> StepResult: ...

    @abstractmethod
    def close(self) -> None: ...

    def sim_state(self) -> np.ndarray | None:
        """The full simulator state (to re-render an episode afterwards); None if the env has none."""
        return None

    def obs_keys(self) -> dict[str, KeySpec]:
        return obs_keys(self.spec)

    def __enter__(self) -> SimEnv:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def obs_keys(spec: StoreSpec) -> dict[str, KeySpec]:
    """The per-frame observation arrays of a spec (every key but the action)."""
    return {k: v for k, v in spec.keys().items() if k != ACTION_KEY}


def fit_problems(env: StoreSpec, policy: StoreSpec, keys: Iterable[str] | None = None) -> list[str]:
    """Why a policy trained on data described by `policy` cannot run in `env` (empty list: it fits).

    `keys`: the observation keys the policy reads (default: every observation key of its data).
    Names of dimensions may differ between sources; their meaning (kind, mode, frame) may not.
    """
    out: list[str] = []
    if env.fps != policy.fps:
        out.append(f"control rate: policy data is {policy.fps:g} Hz, the environment runs at {env.fps:g} Hz")
    out += _dim_problems(ACTION_KEY, env.action, policy.action)
    env_keys, pol_keys = obs_keys(env), obs_keys(policy)
    wanted = list(pol_keys) if keys is None else list(keys)
    env_cams = {c.key: c for c in env.cameras}
    pol_cams = {c.key: c for c in policy.cameras}
    for key in wanted:
        if key not in pol_keys:
            out.append(f"{key}: not in the policy's data (its keys: {', '.join(pol_keys)})")
            continue
        if key not in env_keys:
            out.append(f"{key}: the environment does not provide it (it provides: {', '.join(env_keys)})")
            continue
        want, have = pol_keys[key], env_keys[key]
        if want.shape != have.shape:
            hint = " (choose the environment's image size to match)" if key in pol_cams else ""
            out.append(f"{key}: policy expects shape {want.shape}, environment gives {have.shape}{hint}")
        if key in pol_cams and pol_cams[key].orientation != env_cams[key].orientation:
            out.append(
                f"{key}: policy was trained on {pol_cams[key].orientation} frames, the environment delivers "
                f"{env_cams[key].orientation} (set the environment's image orientation to match)"
            )
        if key == STATE_KEY:
            out += _dim_problems(STATE_KEY, env.state, policy.state)
    return out


def check_fits(env: StoreSpec, policy: StoreSpec, keys: Iterable[str] | None = None) -> None:
    """Raise a `SimError` listing every mismatch between a policy's data and an environment."""
    problems = fit_problems(env, policy, keys)
    if problems:
        raise SimError("the policy does not fit this environment:\n  - " + "\n  - ".join(problems))


def _dim_problems(what: str, env_dims: tuple, pol_dims: tuple) -> list[str]:
    if len(env_dims) != len(pol_dims):
        return [f"{what}: policy has {len(pol_dims)} dimensions, the environment {len(env_dims)}"]
    out = []
    for i, (e, p) in enumerate(zip(env_dims, pol_dims, strict=True)):
        frames_differ = e.frame and p.frame and e.frame != p.frame
        if (e.kind, e.mode) != (p.kind, p.mode) or frames_differ:
            out.append(
                f"{what}[{i}]: policy's {p.name!r} is {p.kind}/{p.mode}{'@' + p.frame if p.frame else ''}, "
                f"the environment's {e.name!r} is {e.kind}/{e.mode}{'@' + e.frame if e.frame else ''}"
            )
    return out
