"""ResNet-style image encoders with optional FiLM conditioning, built from scratch.

No pretrained weights are downloaded: an encoder starts from random weights, or loads a local
safetensors (or weights-only torch) file (`load_weights`) whose keys match this module. The ResNet-18 layout is
`widths=(64, 128, 256, 512), blocks=(2, 2, 2, 2)`; smaller presets shrink both.

FiLM (Perez et al. 2018): each residual block scales and shifts its second normalised feature map
by (1 + gamma, beta) computed from a conditioning vector (the goal), so what the encoder extracts
depends on the task. The FiLM projections start at zero: the block starts as a plain ResNet block.
GroupNorm is the default normalisation: it does not depend on the batch, so small CPU batches,
batch-1 inference and EMA weights behave the same; BatchNorm (the ResNet original) is an option.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

from vla.errors import PolicyError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
NORMS = ("group", "batch")


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "group":
        return nn.GroupNorm(min(32, max(1, channels // 8)), channels)
    raise ValueError(f"unknown norm {kind!r}; choose one of {NORMS}")


class FiLMBlock(nn.Module):
    """Basic residual block (two 3x3 convs) with FiLM after the second normalisation."""

    def __init__(self, c_in: int, c_out: int, stride: int, cond_dim: int | None, norm: str):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.norm1 = _norm(norm, c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.norm2 = _norm(norm, c_out)
        self.shortcut = (
            nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), _norm(norm, c_out))
            if stride != 1 or c_in != c_out
            else nn.Identity()
        )
        self.film = None
        if cond_dim:
            self.film = nn.Sequential(nn.SiLU(), nn.Linear(cond_dim, 2 * c_out))
            nn.init.zeros_(self.film[1].weight)
            nn.init.zeros_(self.film[1].bias)

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        out = F.relu(self.norm1(self.conv1(x)))
        out = self.norm2(self.conv2(out))
        if self.film is not None and cond is not None:
            gamma, beta = self.film(cond)[..., None, None].chunk(2, dim=1)
            out = out * (1 + gamma) + beta
        return F.relu(out + self.shortcut(x))


class FiLMResNet(nn.Module):
    """Image (N, 3, H, W) float in [0, 1] -> one token (N, out_dim); FiLM-conditioned when cond_dim is set."""

    def __init__(
        self,
        out_dim: int,
        cond_dim: int | None = None,
        widths: Sequence[int] = (64, 128, 256, 512),
        blocks: Sequence[int] = (2, 2, 2, 2),
        norm: str = "group",
        in_channels: int = 3,
    ):
        super().__init__()
        if len(widths) != len(blocks):
            raise ValueError(f"widths {tuple(widths)} and blocks {tuple(blocks)} must have the same length")
        self.cond_dim = cond_dim
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, widths[0], 7, 2, 3, bias=False),
            _norm(norm, widths[0]),
            nn.ReLU(),
            nn.MaxPool2d(3, 2, 1),
        )
        layers, c = [], widths[0]
        for stage, (w, n) in enumerate(zip(widths, blocks, strict=True)):
            for b in range(n):
                layers.append(FiLMBlock(c, w, 2 if (b == 0 and stage > 0) else 1, cond_dim, norm))
                c = w
        self.blocks = nn.ModuleList(layers)
        self.head = nn.Linear(c, out_dim)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        if self.cond_dim and cond is None:
            raise ValueError("this encoder is FiLM-conditioned: pass the conditioning vector")
        x = self.stem((images - self.mean) / self.std)
        for block in self.blocks:
            x = block(x, cond)
        return self.head(x.mean(dim=(-2, -1)))

    def load_weights(self, path: str | Path, strict: bool = True) -> None:
        """Load a local file with this module's keys (safetensors, or a torch file read weights-only)."""
        try:
            self.load_state_dict(read_weights(path), strict=strict)
        except RuntimeError as e:
            first = str(e).splitlines()[1].strip() if len(str(e).splitlines()) > 1 else str(e)
            raise PolicyError(f"{path}: the weights do not fit this FiLM ResNet ({first})") from None


def read_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from a local safetensors file or a torch file (weights_only=True: no pickled code)."""
    p = Path(path)
    if not p.is_file():
        raise PolicyError(f"vision weights {str(p)!r} not found: give a local .safetensors (or torch) file")
    if p.suffix == ".safetensors":
        return load_file(str(p))
    try:
        state = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # a pickle needing code, or not a torch file at all
        raise PolicyError(f"{p}: cannot be read as weights with weights_only=True ({e}); use safetensors") from e
    for key in ("state_dict", "model"):  # common checkpoint wrappers
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise PolicyError(f"{p}: expected a state dict of tensors")
    return state


def to_float_images(images: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
    """uint8 (..., 3, H, W) -> float in [0, 1], resized to `size` (H, W) when it differs."""
    x = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
    if size is not None and tuple(x.shape[-2:]) != tuple(size):
        lead = x.shape[:-3]
        x = F.interpolate(x.reshape(-1, *x.shape[-3:]), size=tuple(size), mode="bilinear", antialias=True)
        x = x.reshape(*lead, *x.shape[-3:])
    return x
