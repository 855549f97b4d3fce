"""Windows of stores laid out as a trained policy expects them (inspection and offline evaluation).

A checkpoint trained on several embodiments reads slot-layout vectors and addresses embodiments by
the ids of ITS training mixture; the stores inspected now may be a different selection, so ids are
mapped by embodiment name.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import default_collate

from vla.datasets.sampler import MixtureDataset, WindowConfig, WindowDataset
from vla.errors import VlaError
from vla.policies.policy import Policy


class WindowsError(VlaError):
    """Stores that do not fit the checkpoint being inspected or evaluated."""


def policy_windows(policy: Policy, stores: Sequence[str | Path], language: str = "episode") -> MixtureDataset:
    """The stores' windows with the policy's observation keys, history and chunk (slots if it uses them)."""
    cfg = policy.config
    window = WindowConfig(n_obs=cfg.n_obs, horizons=(cfg.chunk_size,), obs_keys=tuple(cfg.observation_keys),
                          language=language)  # fmt: skip
    datasets = [WindowDataset(str(s), window) for s in stores]
    return MixtureDataset(datasets, slots=uses_slots(policy))


def uses_slots(policy: Policy) -> bool:
    return policy.embodiments is not None


def embodiment_remap(policy: Policy, embodiments: Sequence[str]) -> dict[str, int] | None:
    """Store embodiment name -> the checkpoint's embodiment id (None for single-embodiment policies)."""
    if policy.embodiments is None:
        return None
    names = list(policy.embodiments.names)
    unknown = [e for e in embodiments if e not in names]
    if unknown:
        raise WindowsError(
            f"embodiment(s) {unknown} are not in the checkpoint (trained on {names}); use stores of those embodiments"
        )
    return {e: names.index(e) for e in embodiments}


def collate(items: list[dict[str, Any]], remap: dict[str, int] | None = None) -> dict[str, Any]:
    """Stack windows into a batch as the trainer's DataLoader does; embodiment ids mapped to the checkpoint's."""
    out = default_collate(items)
    if remap is not None:
        out["embodiment_id"] = torch.tensor([remap[e] for e in out["embodiment"]])
    return out
