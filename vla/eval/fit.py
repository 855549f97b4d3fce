"""Does a policy fit an environment? Checked before the first episode, every problem at once."""

from __future__ import annotations

from typing import Any

from vla.datasets.spec import StoreSpec
from vla.keys import STATE_KEY
from vla.sim.base import SimError, fit_problems


def policy_fit_problems(env_spec: StoreSpec, config: Any, data_spec: StoreSpec | None) -> list[str]:
    """Mismatches between an environment and a policy (its config, and its training data's spec when the
    checkpoint carries one: then dimension meanings, control rate and image orientation are checked too)."""
    from vla.errors import PolicyError

    keys = [*config.camera_keys, *([STATE_KEY] if config.state_dim is not None else [])]
    problems = fit_problems(env_spec, data_spec, keys=keys) if data_spec is not None else []
    try:
        config.check_features(env_spec.keys())
    except PolicyError as e:
        problems.append(str(e))
    return problems


def check_policy_fits(env_spec: StoreSpec, config: Any, data_spec: StoreSpec | None, where: str = "") -> None:
    problems = policy_fit_problems(env_spec, config, data_spec)
    if problems:
        head = f"the policy{f' {where}' if where else ''} does not fit this environment"
        raise SimError(head + ":\n  - " + "\n  - ".join(problems))
