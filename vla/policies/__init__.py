"""Policies: the config and model bases, checkpoints, the runtime, the registry, shared modules, one folder
per policy. Names are imported on first use, so reading the registry (a CLI's `--help`) loads no torch."""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Policy": "vla.policies.policy",
    "PolicyConfig": "vla.policies.config",
    "PolicyError": "vla.errors",
    "available_policies": "vla.policies.registry",
    "get_policy": "vla.policies.registry",
    "make_policy": "vla.policies.registry",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'vla.policies' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
