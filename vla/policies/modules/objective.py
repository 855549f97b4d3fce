"""The interface of a generative objective over action chunks (EDM diffusion in diffusion.py, flow matching
in flow.py), so a policy and the mixture of horizons (horizons.py) train and sample any of them alike:

- `training_inputs(x0)`: for a clean chunk, the noise level, the noised chunk, what the network reads
  (`x_in`, `noise_cond`) and the target its output is regressed onto (`TrainingInputs`);
- `loss(out, target, valid)`: the mean squared error of a network output over the valid entries;
- `network_loss(net, x0, valid)`: both together for a plain network;
- `sample(net, shape, steps, device, generator, noise)`: a chunk from noise in `steps` network calls.

The network is a `Network`: `net(x_in, noise_cond, step) -> output` (B, H, A), with `step` the sampling-step
index while sampling (None in training), so a network can use state precomputed per step (MoDE's expert
cache). Training noise is drawn on the CPU, so a seed gives the same noise on any device.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Protocol

import torch


class Network(Protocol):
    def __call__(self, x_in: torch.Tensor, noise_cond: torch.Tensor, step: int | None) -> torch.Tensor: ...


def masked_mean(x: torch.Tensor, mask: torch.Tensor | None, dims: tuple[int, ...] | None = None) -> torch.Tensor:
    """Mean of `x` over the entries where `mask` (broadcastable to x) is True, over `dims` (None: all).

    Masked entries are removed with `where`, not multiplied by 0, so a NaN or a huge value there cannot
    reach the mean or its gradient. Empty selections give 0."""
    if mask is None:
        return x.mean() if dims is None else x.mean(dims)
    m = mask.bool().expand_as(x)
    kept = torch.where(m, x, torch.zeros_like(x))
    if dims is None:
        return kept.sum() / m.sum().clamp_min(1)
    return kept.sum(dims) / m.to(x.dtype).sum(dims).clamp_min(1)


@dataclass
class TrainingInputs:
    """One training draw for a batch of clean chunks."""

    level: torch.Tensor  # (B,) the noise level: EDM's sigma, flow matching's time t
    noised: torch.Tensor  # (B, H, A) the noised chunk (EDM: x0 + sigma * noise; flow: x_t)
    x_in: torch.Tensor  # (B, H, A) what the network reads (EDM: c_in * noised; flow: x_t)
    noise_cond: torch.Tensor  # (B,) what the network is told about the level
    target: torch.Tensor  # (B, H, A) what the network output is regressed onto
    level_name: str  # "sigma" | "t"

    @property
    def info(self) -> dict[str, float]:
        """For training logs: the batch's mean noise level."""
        return {f"{self.level_name}_mean": float(self.level.mean())}


class Objective(ABC):
    """A generative objective (see the module docstring)."""

    @abstractmethod
    def training_inputs(
        self,
        x0: torch.Tensor,
        level: torch.Tensor | None = None,
        noise: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> TrainingInputs:
        """`level` (B,) and `noise` (like x0): drawn (level first) when None."""

    @abstractmethod
    def sample(
        self,
        net: Network,
        shape: tuple[int, ...],
        steps: int | None,
        device: torch.device | str = "cpu",
        generator: torch.Generator | None = None,
        noise: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """A chunk of `shape` from noise (`noise`: fixes it) in `steps` network calls (None: the default)."""

    def loss(self, out: torch.Tensor, target: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        """Mean squared error of the network output over the valid entries: `valid` (B, H) marks real chunk
        steps, (B, H, A) real elements (padded action slots excluded too); None: every entry."""
        err = (out - target).pow(2)
        if valid is not None and valid.dim() == err.dim() - 1:
            valid = valid.unsqueeze(-1)
        return masked_mean(err, valid)

    def network_loss(
        self,
        net: Network,
        x0: torch.Tensor,
        valid: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """The training loss of a plain network on clean chunks `x0`, and the mean noise level for logs."""
        inputs = self.training_inputs(x0, generator=generator)
        return self.loss(net(inputs.x_in, inputs.noise_cond, None), inputs.target, valid), inputs.info
