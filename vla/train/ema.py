"""Exponential moving average of a model's weights, with the usual warm-up.

Written here rather than taken from torch's `AveragedModel` or diffusers' `EMAModel` because the
shadow weights must save as a flat safetensors dict next to the model (no pickle) and the decay
needs the (1 + t) / (10 + t) warm-up so short CPU runs do not evaluate a lagging average.

diffusers' `EMAModel` (0.42, use_ema_warmup=False) was tried against this class and gives other
numbers (tests/train/test_ema.py): its warm-up is shifted by one update (decay 0 on the first
update, then 2/11, 3/12, ...; here 1/10, 2/11, ...), it averages parameters only (floating buffers
are averaged here too), and its `s - (1 - d) * (s - p)` rounds differently from `lerp_` while
1 - d >= 0.5. Switching would change every trained checkpoint's EMA weights, so this one stays.
"""

from __future__ import annotations

import torch
from torch import nn


class EMA:
    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.updates = 0
        self.shadow = {k: v.detach().clone() for k, v in model.state_dict().items()}

    def current_decay(self) -> float:
        return min(self.decay, (1 + self.updates) / (10 + self.updates))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        d = self.current_decay()
        for k, v in model.state_dict().items():
            s = self.shadow[k]
            if v.dtype.is_floating_point:
                s.lerp_(v.detach().to(s.dtype), 1 - d)
            else:  # counters and integer buffers follow the model
                s.copy_(v)
        self.updates += 1

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.shadow

    def load_state_dict(self, shadow: dict[str, torch.Tensor], updates: int) -> None:
        missing = set(self.shadow) - set(shadow)
        if missing:
            raise KeyError(f"EMA state lacks {sorted(missing)[:5]}")
        for k, v in shadow.items():
            self.shadow[k].copy_(v)
        self.updates = updates
