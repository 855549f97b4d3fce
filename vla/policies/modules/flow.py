"""Flow matching (rectified flow) over action chunks: time sampling, interpolation, Euler sampling, behind
the objective interface of objective.py.

The objective of pi0-style action experts (and of HiMoE's action head). Convention (pi0's, used
everywhere here): t = 0 is data and t = 1 is pure noise,

    x_t = t * noise + (1 - t) * x,    velocity target u = dx_t/dt = noise - x,

and sampling integrates dx/dt = v(x_t, t) from t = 1 down to t = 0 with `steps` Euler steps
(dt = -1/steps). Training times lean towards the noisy end:

- "beta" (default): t = 0.001 + 0.999 * Beta(1.5, 1), drawn exactly (Beta(a, 1) is U^(1/a)); mean 0.6.
- "pi0_approx": what the HiMoE/pi0 PyTorch code draws, a / (a + b) with a = U^(1/1.5) and b = U
  (a power of a uniform is not a Gamma variate, so this is only Beta-shaped): mean ~0.56.
- "uniform": t ~ U(0.001, 1).

The network reads x_t at noise conditioning t and returns the velocity. `FlowMatching.loss` takes a
per-element mask (padded chunk steps and unused action slots False) and averages the squared velocity
error over the real elements only, so padding contributes exactly nothing (no gradient, and changing
targets there leaves the loss bit-identical).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vla.policies.modules.objective import Network, Objective, TrainingInputs

TIME_SAMPLERS = ("beta", "pi0_approx", "uniform")
T_MIN = 0.001  # times are never exactly 0 (pure data): pi0's offset


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


def euler_sample(velocity: Network, noise: torch.Tensor, steps: int) -> torch.Tensor:
    """Integrate dx/dt = v(x, t) from x(1) = noise to t = 0 in `steps` Euler steps (`velocity(x, t, step)`)."""
    x = noise
    dt = 1.0 / steps
    for i in range(steps):
        t = torch.full((x.shape[0],), 1.0 - i * dt, device=x.device, dtype=x.dtype)
        x = x - dt * velocity(x, t, i)
    return x


def euler_times(steps: int) -> torch.Tensor:
    """The times the Euler sampler evaluates the velocity at: 1, 1 - 1/steps, ..., 1/steps."""
    return 1.0 - torch.arange(steps, dtype=torch.float32) / steps


class FlowMatching(Objective):
    """Flow matching as an objective (objective.py): the network predicts the velocity."""

    def __init__(self, settings: FlowSettings | None = None):
        self.settings = settings or FlowSettings()

    def sample_times(
        self, n: int, device: torch.device | str = "cpu", generator: torch.Generator | None = None
    ) -> torch.Tensor:
        s = self.settings
        return sample_times(n, s.time_sampler, s.beta_alpha, device, generator)

    def training_inputs(
        self,
        x0: torch.Tensor,
        level: torch.Tensor | None = None,
        noise: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> TrainingInputs:
        """Time t, x_t (the network reads it as is, with t) and the velocity target noise - x0."""
        t = self.sample_times(x0.shape[0], x0.device, generator) if level is None else level
        if noise is None:
            noise = torch.randn(x0.shape, generator=generator, device="cpu").to(x0)
        x_t, target = interpolate(x0, noise, t)
        return TrainingInputs(t, x_t, x_t, t, target, "t")

    def sample(
        self,
        net: Network,
        shape: tuple[int, ...],
        steps: int | None = None,
        device: torch.device | str = "cpu",
        generator: torch.Generator | None = None,
        noise: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Euler integration from noise at t = 1 to t = 0 in `steps` steps (None: the settings')."""
        if noise is None:
            noise = torch.randn(shape, generator=generator).to(device)
        return euler_sample(net, noise.to(device), steps or self.settings.steps)
