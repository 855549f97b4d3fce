"""Offline action error: how far a checkpoint's predicted chunks are from held-out demonstrations.

For robots that cannot be simulated here (a second embodiment of a mixture) this is the number to
compare: per embodiment, the mean squared error between predicted and demonstrated chunks in the
robot's native layout, divided per dimension by the demonstrations' variance (so 1.0 is the error
of always predicting the mean action and dimensions of different units weigh the same), over real
(unpadded) chunk steps.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from vla.analysis.windows import collate, embodiment_remap, policy_windows, uses_slots
from vla.datasets import slots as slotlib
from vla.policies.policy import Policy


@dataclass
class ActionError:
    embodiment: str
    windows: int
    nmse: float  # variance-normalised MSE over dimensions and real steps
    nmse_first: float  # the same, first step of the chunk only (what executes first)
    per_dim: list[float]

    def to_json(self) -> dict[str, object]:
        return {"embodiment": self.embodiment, "windows": self.windows, "nmse": round(self.nmse, 5),
                "nmse_first": round(self.nmse_first, 5), "per_dim": [round(v, 5) for v in self.per_dim]}  # fmt: skip


@torch.no_grad()
def offline_action_error(
    policy: Policy,
    stores: Sequence[str | Path],
    stride: int = 5,
    max_windows: int = 2000,
    batch_size: int = 64,
    seed: int = 0,
) -> dict[str, ActionError]:
    """Per embodiment, the variance-normalised error of `policy.predict_chunk` on every `stride`-th
    window of `stores` (at most `max_windows` per store), with seeded sampling noise."""
    mixture = policy_windows(policy, stores)
    remap = embodiment_remap(policy, mixture.embodiments)
    slots = uses_slots(policy)
    policy.eval()
    out: dict[str, ActionError] = {}
    for k, ds in enumerate(mixture.datasets):
        picks = np.arange(0, len(ds), stride)[:max_windows] + int(mixture.offsets[k])
        native = ds.action_slots if slots else None
        var = np.asarray(ds.stats["action"]["std"], np.float64) ** 2
        sq, sq_first, n_steps, n_first = np.zeros_like(var), np.zeros_like(var), 0, 0
        gen = torch.Generator().manual_seed(seed + k)
        for start in range(0, len(picks), batch_size):
            batch = collate([mixture[int(i)] for i in picks[start : start + batch_size]], remap)
            torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=gen)))
            pred = policy.predict_chunk(batch).float().cpu().numpy()
            true = batch["action"].float().numpy()
            if native is not None:
                pred, true = slotlib.from_slots(pred, native), slotlib.from_slots(true, native)
            real = ~batch["action_is_pad"].numpy()  # (B, H)
            err = (pred - true) ** 2
            sq += (err * real[..., None]).sum((0, 1))
            n_steps += int(real.sum())
            sq_first += err[:, 0].sum(0)
            n_first += err.shape[0]
        per_dim = sq / max(n_steps, 1) / np.maximum(var, 1e-12)
        first = sq_first / max(n_first, 1) / np.maximum(var, 1e-12)
        prev = out.get(ds.embodiment)
        result = ActionError(ds.embodiment, len(picks), float(per_dim.mean()), float(first.mean()), per_dim.tolist())
        if prev is not None:  # several stores of one embodiment: weight by windows
            w = prev.windows / (prev.windows + result.windows)
            result = ActionError(
                ds.embodiment,
                prev.windows + result.windows,
                w * prev.nmse + (1 - w) * result.nmse,
                w * prev.nmse_first + (1 - w) * result.nmse_first,
                [w * a + (1 - w) * b for a, b in zip(prev.per_dim, result.per_dim, strict=True)],
            )
        out[ds.embodiment] = result
    return out
