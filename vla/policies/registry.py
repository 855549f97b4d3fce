"""Every policy by name: one line per policy (its model class; the model names its config class)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from vla.errors import PolicyError
from vla.registry import Registry, RegistryError

if TYPE_CHECKING:
    from vla.policies.config import PolicyConfig
    from vla.policies.policy import Policy

POLICIES = Registry(
    "policy",
    {
        "mode": "vla.policies.mode.modeling_mode:MoDEPolicy",
        "himoe": "vla.policies.himoe.modeling_himoe:HiMoEPolicy",
    },
)


def get_policy(name: str) -> tuple[type[PolicyConfig], type[Policy]]:
    """(config class, model class) of a registered policy."""
    try:
        model_cls = POLICIES.load(name)
    except RegistryError as e:
        raise PolicyError(str(e)) from None
    return model_cls.config_class, model_cls


def available_policies() -> list[str]:
    return POLICIES.names()


def make_policy(
    name: str, preset: str | None = None, dataset_stats: Mapping[str, Any] | None = None, **overrides: Any
) -> Policy:
    config_cls, model_cls = get_policy(name)
    config = config_cls.from_preset(preset, **overrides) if preset else config_cls(**overrides)
    return model_cls(config, dataset_stats)
