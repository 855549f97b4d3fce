"""What routing inspection returns for one mixture-of-experts layer (`Policy.inspect_routing`)."""

from __future__ import annotations

import dataclasses

import torch


@dataclasses.dataclass
class LayerRouting:
    """One MoE layer's routing decision for a batch, as `Policy.inspect_routing` returns it.

    `weights` (B, T, E): the combine weight of each expert for each routing unit (token or, for
    sequence-level routers, T = 1), zero for experts not selected. `kind` says what the router
    reads: "noise" (MoDE), "action_space" (HiMoE AS-MoE), "token" (HiMoE HB-MoE). `probs` (B, T, E): the
    router's full softmax, which also says how alike it treats experts it did not pick (None: not given).
    A policy lists its MoE layers in module order (the order `expert_map` entries refer to)."""

    layer: str
    kind: str
    weights: torch.Tensor
    probs: torch.Tensor | None = None
