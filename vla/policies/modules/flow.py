"""Flow matching (rectified flow) over action chunks: time sampling, interpolation, loss, Euler sampling.

The objective of pi0-style action experts (HiMoE's paper, shared/reference/policies.md section 2).
Convention (pi0's, used everywhere here): t = 0 is data and t = 1 is pure noise,

    x_t = t * noise + (1 - t) * x,    velocity target u = dx_t/dt = noise - x,

and sampling integrates dx/dt = v(x_t, t) from t = 1 down to t = 0 with `steps` Euler steps
(dt = -1/steps). Training times lean towards the noisy end:

- "beta" (default): t = 0.001 + 0.999 * Beta(1.5, 1), drawn exactly (Beta(a, 1) is U^(1/a)); mean 0.6.
- "pi0_approx": what the HiMoE/pi0 PyTorch code draws, a / (a + b) with a = U^(1/1.5) and b = U
  (a power of a uniform is not a Gamma variate, so this is only Beta-shaped): mean ~0.56.
- "uniform": t ~ U(0.001, 1).

`FlowMatching.loss` takes a per-element mask (padded chunk steps and unused action slots False) and
averages the squared velocity error over the real elements only, so padding contributes exactly
nothing (no gradient, and changing targets there leaves the loss bit-identical).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

TIME_SAMPLERS = ("beta", "pi0_approx", "uniform")
T_MIN = 0.001  # times are never exactly 0 (pure data): pi0's offset

# velocity(x_t (B, H, A), t (B,)) -> v (B, H, A)
VelocityField = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class FlowSettings:
    time_sampler: str = "beta"
    beta_alpha: float = 1.5  # Beta(alpha, 1)
    steps: int = 10  # Euler steps at inference

    def __post_init__(self) -> None:
        if self.time_sampler not in TIME_SAMPLERS:
            raise ValueError(f"time_sampler {self.time_sampler!r} not in {TIME_SAMPLERS}")
        if self.steps < 1 or self.beta_alpha <= 0:
            raise ValueError(f"steps must be >= 1 and beta_alpha > 0, got {self.steps}, {self.beta_alpha}")


def sample_times(
    n: int,
    sampler: str = "beta",
    alpha: float = 1.5,
    device: torch.device | str = "cpu",
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """(n,) training times in [T_MIN, 1]; see the module docstring for the samplers."""
    u = torch.rand(n, generator=generator, dtype=torch.float64)
    if sampler == "beta":
        base = u.pow(1.0 / alpha)  # inverse CDF of Beta(alpha, 1): F(t) = t^alpha
    elif sampler == "pi0_approx":
        a = u.pow(1.0 / alpha)
        b = torch.rand(n, generator=generator, dtype=torch.float64)
        base = a / (a + b)
    elif sampler == "uniform":
        base = u
    else:
        raise ValueError(f"time sampler {sampler!r} not in {TIME_SAMPLERS}")
    return (T_MIN + (1 - T_MIN) * base).float().to(device)


def interpolate(x: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(x_t, velocity target) for data x, noise and times t (B,)."""
    s = t.to(x).reshape(-1, *([1] * (x.dim() - 1)))
    return s * noise + (1 - s) * x, noise - x


def masked_mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean squared error over the elements where `mask` (broadcastable to pred) is True.

    Masked elements are removed with `where`, not multiplied by 0, so a NaN or a huge value at a padded
    target cannot leak into the loss or its gradient."""
    err = (pred - target).pow(2)
    if mask is None:
        return err.mean()
    m = mask.expand_as(err)
    return torch.where(m, err, torch.zeros_like(err)).sum() / m.sum().clamp_min(1)


def euler_sample(
    velocity: VelocityField, noise: torch.Tensor, steps: int, callback: Callable[[int], None] | None = None
) -> torch.Tensor:
    """Integrate dx/dt = v(x, t) from x(1) = noise to t = 0 in `steps` Euler steps."""
    x = noise
    dt = 1.0 / steps
    for i in range(steps):
        t = torch.full((x.shape[0],), 1.0 - i * dt, device=x.device, dtype=x.dtype)
        x = x - dt * velocity(x, t)
        if callback is not None:
            callback(i)
    return x


def euler_times(steps: int) -> torch.Tensor:
    """The times the Euler sampler evaluates the velocity at: 1, 1 - 1/steps, ..., 1/steps."""
    return 1.0 - torch.arange(steps, dtype=torch.float32) / steps


class FlowMatching:
    """The objective as one object (like diffusion.EDM): `loss(net, x, mask)` and `sample(net, shape)`."""

    def __init__(self, settings: FlowSettings | None = None):
        self.settings = settings or FlowSettings()

    def sample_times(self, n: int, device: torch.device | str = "cpu") -> torch.Tensor:
        s = self.settings
        return sample_times(n, s.time_sampler, s.beta_alpha, device)

    def loss(
        self, velocity: VelocityField, x: torch.Tensor, mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, dict[str, float]]:
        t = self.sample_times(x.shape[0], x.device)
        noise = torch.randn(x.shape, device="cpu").to(x)  # CPU draw: same noise on any device for a seed
        x_t, target = interpolate(x, noise, t)
        loss = masked_mse(velocity(x_t, t), target, mask)
        return loss, {"t_mean": float(t.mean())}

    def sample(
        self,
        velocity: VelocityField,
        shape: tuple[int, ...],
        device: torch.device | str = "cpu",
        steps: int | None = None,
        generator: torch.Generator | None = None,
        noise: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if noise is None:
            noise = torch.randn(shape, generator=generator).to(device)
        return euler_sample(velocity, noise.to(device), steps or self.settings.steps)
