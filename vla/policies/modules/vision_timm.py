"""Camera encoders from timm ResNets (resnet18, resnet50, ...) with FiLM, weights from local files only.

`make_camera_encoder` picks the encoder a config names: "film_resnet" (vla.policies.modules.vision, built
here from scratch) or a timm ResNet name. A timm model is built with `pretrained=False` (timm never
touches the network) and its weights come from `load_weights(path)`: a local safetensors file, or a torch
file read with `weights_only=True`, holding either the timm model's own state dict (its classifier is
ignored) or this encoder's (as a policy checkpoint stores it).

FiLM: as in the scratch FiLM ResNet, every residual block's last normalised feature map (bn2 of a basic
block, bn3 of a bottleneck) is scaled and shifted by (1 + gamma, beta) from the goal, before the shortcut
is added; the FiLM projections start at zero, so a pretrained network starts out unchanged. They are a
forward hook on that norm, so the timm weight names stay as they are and a timm file loads unchanged.

BatchNorm: the statistics stay frozen (every BatchNorm is kept in eval mode, also while training), so the
pretrained running means and variances are used as they are and never re-estimated from small robot
batches; the affine weights still train. Swapping in GroupNorm would discard the pretrained statistics.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from vla.errors import PolicyError
from vla.policies.modules.vision import IMAGENET_MEAN, IMAGENET_STD, FiLMResNet, read_weights

SCRATCH = "film_resnet"
CLASSIFIER_PREFIXES = ("fc.", "head.", "classifier.")


def vision_backbone_problems(name: str) -> list[str]:
    """What is wrong with a `vision_backbone` value (empty: fine)."""
    if name == SCRATCH:
        return []
    import timm

    if not name.startswith("resnet") or not timm.is_model(name):
        return [f"vision_backbone {name!r}: use {SCRATCH!r} or a timm ResNet name (e.g. resnet18, resnet50)"]
    return []


def make_camera_encoder(
    backbone: str,
    out_dim: int,
    cond_dim: int | None,
    widths: Sequence[int],
    blocks: Sequence[int],
    norm: str,
) -> nn.Module:
    """One camera's encoder: image (N, 3, H, W) in [0, 1] (+ goal (N, cond_dim)) -> token (N, out_dim)."""
    if backbone == SCRATCH:
        return FiLMResNet(out_dim, cond_dim, widths, blocks, norm)
    return TimmFiLMResNet(backbone, out_dim, cond_dim)


class TimmFiLMResNet(nn.Module):
    """A timm ResNet with FiLM after each residual block's last norm, pooled and projected to one token."""

    def __init__(self, name: str, out_dim: int, cond_dim: int | None = None):
        super().__init__()
        import timm

        problems = vision_backbone_problems(name)
        if problems:
            raise PolicyError(problems[0])
        self.name = name
        self.cond_dim = cond_dim
        self.backbone = timm.create_model(name, pretrained=False, num_classes=0)  # global-average-pooled features
        norms = [_last_norm(block) for stage in _stages(self.backbone) for block in stage]
        self.film = nn.ModuleList()
        if cond_dim:
            for norm in norms:
                proj = nn.Linear(cond_dim, 2 * norm.num_features)
                nn.init.zeros_(proj.weight)
                nn.init.zeros_(proj.bias)
                self.film.append(nn.Sequential(nn.SiLU(), proj))
            for norm in norms:
                norm.register_forward_hook(_apply_film)
        self.head = nn.Linear(self.backbone.num_features, out_dim)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.train()

    def _norms(self) -> list[nn.Module]:
        return [_last_norm(block) for stage in _stages(self.backbone) for block in stage]

    def train(self, mode: bool = True) -> TimmFiLMResNet:
        super().train(mode)
        for m in self.backbone.modules():  # frozen statistics: see the module docstring
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()
        return self

    def forward(self, images: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        if self.cond_dim and cond is None:
            raise ValueError("this encoder is FiLM-conditioned: pass the conditioning vector")
        norms = self._norms() if self.cond_dim else []
        # each block's (gamma, beta) is left on its norm for the hook, which holds no reference to this
        # module (a deep copy of the encoder keeps working)
        for norm, film in zip(norms, self.film, strict=True):
            norm._film = film(cond)[..., None, None].chunk(2, dim=1)
        try:
            feats = self.backbone((images - self.mean) / self.std)
        finally:
            for norm in norms:
                norm._film = None
        return self.head(feats)

    def load_weights(self, path: str | Path) -> None:
        """Weights from a local file: this encoder's state dict, or the timm model's (classifier ignored)."""
        state = read_weights(path)
        if any(k.startswith("backbone.") for k in state):
            target, state_keys = self, state
        else:
            target = self.backbone
            state_keys = {k: v for k, v in state.items() if not k.startswith(CLASSIFIER_PREFIXES)}
        hint = f"give the weight file of the same timm model (vision_backbone={self.name})"
        try:
            result = target.load_state_dict(state_keys, strict=False)
        except RuntimeError as e:  # a tensor of another shape
            first = str(e).splitlines()[1].strip() if len(str(e).splitlines()) > 1 else str(e)
            raise PolicyError(f"{path}: the weights do not fit a timm {self.name!r} ({first}); {hint}") from None
        if result.missing_keys or result.unexpected_keys:
            raise PolicyError(
                f"{path}: the weights do not fit a timm {self.name!r}: missing {result.missing_keys[:5]}, "
                f"unexpected {result.unexpected_keys[:5]}; {hint}"
            )


def _apply_film(module: nn.Module, inputs: tuple[torch.Tensor, ...], out: torch.Tensor) -> torch.Tensor:
    """Forward hook on a block's last norm: out * (1 + gamma) + beta while a FiLM forward is running."""
    film = getattr(module, "_film", None)
    if film is None:
        return out
    gamma, beta = film
    return out * (1 + gamma) + beta


def _stages(model: nn.Module) -> list[nn.Sequential]:
    stages = [getattr(model, f"layer{i}", None) for i in range(1, 5)]
    if any(s is None for s in stages):
        raise PolicyError(f"{type(model).__name__} has no layer1..layer4: only timm ResNets are supported")
    return stages  # type: ignore[return-value]


def _last_norm(block: nn.Module) -> nn.Module:
    """The norm right before a residual block's shortcut add: bn3 (bottleneck) or bn2 (basic block)."""
    for name in ("bn3", "bn2"):
        norm = getattr(block, name, None)
        if norm is not None:
            return norm
    raise PolicyError(f"{type(block).__name__}: no bn2/bn3 to apply FiLM after")
