"""The policy runtime shared by evaluation, deployment and the policy server: observation histories in the
store's layout -> a policy batch (the one HWC -> CHW boundary of every closed-loop caller)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from vla.policies.config import PolicyConfig
from vla.policies.embodiment import EmbodimentLayout


def observation_batch(
    config: PolicyConfig,
    frames: Mapping[str, np.ndarray],
    tasks: Sequence[str],
    device: torch.device | str = "cpu",
    layout: EmbodimentLayout | None = None,
) -> dict[str, Any]:
    """Stacked observation histories in the store's layout -> a policy batch.

    `frames[key]` is (B, n_obs, ...) as environments, robots and stores hold it (images uint8 HWC);
    this is the one HWC -> CHW boundary of every closed-loop caller (evaluation, deployment, server).
    `layout`: the robot's place in a multi-embodiment policy (its native state goes into its slots).
    """
    cams = set(config.camera_keys)
    out: dict[str, Any] = {"task": [str(t) for t in tasks]}
    for key in config.observation_keys:
        x = torch.from_numpy(np.ascontiguousarray(frames[key]))
        out[key] = x.permute(0, 1, 4, 2, 3).contiguous() if key in cams else x.float()
    rows = len(out["task"])
    out["observation_is_pad"] = torch.zeros(rows, config.n_obs, dtype=torch.bool)
    out["embodiment_id"] = torch.zeros(rows, dtype=torch.long)  # single-embodiment callers
    if layout is not None:
        out = layout.to_policy(out)
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in out.items()}
