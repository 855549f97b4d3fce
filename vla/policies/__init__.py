"""Policies: the config and model bases, checkpoints, the runtime, the registry, shared modules, one folder
per policy."""

from vla.errors import PolicyError
from vla.policies.config import PolicyConfig
from vla.policies.policy import Policy
from vla.policies.registry import available_policies, get_policy, make_policy

__all__ = [
    "Policy",
    "PolicyConfig",
    "PolicyError",
    "available_policies",
    "get_policy",
    "make_policy",
]
