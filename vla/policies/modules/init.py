"""Weight initialisation shared by the policies' transformers."""

from __future__ import annotations

from torch import nn


def init_linear_weights(module: nn.Module) -> None:
    """Every `nn.Linear` inside `module` (in module order): weights N(0, 0.02), biases 0 (GPT-style)."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
