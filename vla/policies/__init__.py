"""Policies: the shared interface and registry (base.py), shared modules, and one folder per policy."""

from vla.policies.base import (
    Policy,
    PolicyConfig,
    PolicyError,
    available_policies,
    get_policy,
    make_policy,
    register_policy,
)

__all__ = [
    "Policy",
    "PolicyConfig",
    "PolicyError",
    "available_policies",
    "get_policy",
    "make_policy",
    "register_policy",
]
