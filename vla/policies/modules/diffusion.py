"""EDM diffusion over action chunks: training inputs (noise level, noised chunk, target) and a
deterministic sampler, behind the objective interface of objective.py.

The network (`objective.Network`) reads the scaled noisy chunk `x_in` = c_in * x at noise conditioning
`noise_cond` = c_noise(sigma) (B,) and returns the raw output F, regressed onto the F-space target.

What comes from diffusers (`EDMEulerScheduler`) and what does not:
- from diffusers: the sampling sigma schedules ("exponential", the MoDE default, and "karras"),
  the input/noise/output preconditioning (c_in, c_noise = log(sigma)/4, and the denoised
  combination c_skip * x + c_out * F), and the update step. The scheduler's Euler step with
  s_churn=0 is exactly the deterministic DDIM / first-order DPM-solver step in sigma space,
  x_next = (s_next/s) x + (1 - s_next/s) D(x), so "DDIM" here is that step.
- not from diffusers: the log-logistic training noise density (diffusers has none); the training
  target F = (x0 - c_skip x) / c_out (the scheduler only exposes the denoised combination;
  recovering the F-space target from it divides by c_out ~ sigma and loses float precision at
  small sigma), with its c_skip/c_out written out here; and the initial noise, drawn as
  sigma_max * N(0, I) like the EDM/k-diffusion reference (the scheduler's `init_noise_sigma` is
  sqrt(sigma_max^2 + 1)).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from diffusers import EDMEulerScheduler

from vla.policies.modules.objective import Network, Objective, TrainingInputs

SIGMA_SCHEDULES = ("exponential", "karras")


def rand_log_logistic(
    shape: tuple[int, ...],
    loc: float,
    scale: float,
    min_value: float,
    max_value: float,
    device: torch.device | str = "cpu",
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Log-logistic samples truncated to [min_value, max_value], by inverting the CDF of log(sigma)
    (a logistic with location `loc` and scale `scale`) between the two truncation points."""
    lo = torch.tensor(math.log(min_value), dtype=torch.float64).sub(loc).div(scale).sigmoid()
    hi = torch.tensor(math.log(max_value), dtype=torch.float64).sub(loc).div(scale).sigmoid()
    u = torch.rand(shape, dtype=torch.float64, generator=generator, device="cpu") * (hi - lo) + lo
    return u.logit().mul(scale).add(loc).exp().to(device=device, dtype=torch.float32)


def _expand(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return v.reshape(-1, *([1] * (like.dim() - 1))).to(like)


@dataclass(frozen=True)
class EDMSettings:
    sigma_data: float = 0.5
    sigma_min: float = 0.001
    sigma_max: float = 80.0
    schedule: str = "exponential"  # sampling sigma schedule: exponential | karras
    rho: float = 7.0  # karras only
    # training noise: log-logistic with location log(sigma_data) (when None) and this scale
    train_loc: float | None = None
    train_scale: float = 0.5
    # the sampler's lowest noise level (None: sigma_min); training noise keeps [sigma_min, sigma_max]
    sampling_sigma_min: float | None = None


class EDM(Objective):
    """EDM-preconditioned diffusion (Karras et al. 2022) with log-logistic training noise."""

    def __init__(self, settings: EDMSettings | None = None):
        s = settings or EDMSettings()
        if s.schedule not in SIGMA_SCHEDULES:
            raise ValueError(f"unknown sigma schedule {s.schedule!r}; choose one of {SIGMA_SCHEDULES}")
        if not 0 < s.sigma_min < s.sigma_max:
            raise ValueError(f"need 0 < sigma_min < sigma_max, got {s.sigma_min}, {s.sigma_max}")
        if s.sampling_sigma_min is not None and not 0 < s.sampling_sigma_min < s.sigma_max:
            raise ValueError(f"need 0 < sampling_sigma_min < sigma_max, got {s.sampling_sigma_min}")
        self.settings = s
        self._pre = self.scheduler(None)  # for the stateless preconditioning helpers

    def scheduler(self, num_steps: int | None) -> EDMEulerScheduler:
        """A fresh diffusers scheduler set to `num_steps` (it is stateful: one per sampling run)."""
        s = self.settings
        sched = EDMEulerScheduler(
            sigma_min=s.sigma_min if s.sampling_sigma_min is None else s.sampling_sigma_min,
            sigma_max=s.sigma_max,
            sigma_data=s.sigma_data,
            sigma_schedule=s.schedule,
            rho=s.rho,
            prediction_type="epsilon",  # EDM's c_out = sigma * sigma_data / sqrt(sigma^2 + sigma_data^2)
            final_sigmas_type="zero",
        )
        if num_steps is not None:
            sched.set_timesteps(num_steps)
        return sched

    def sigmas(self, num_steps: int) -> torch.Tensor:
        """The `num_steps` noise levels the sampler evaluates the network at, then a final 0."""
        if num_steps < 1:
            raise ValueError(f"num_steps must be >= 1, got {num_steps}")
        return self.scheduler(num_steps).sigmas.clone()

    def noise_cond(self, sigma: torch.Tensor) -> torch.Tensor:
        """What the network is told about the noise level: c_noise = log(sigma) / 4."""
        return self._pre.precondition_noise(sigma)

    def scalings(self, sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(c_skip, c_out) of EDM's preconditioning, for the training target."""
        sd2 = self.settings.sigma_data**2
        c_skip = sd2 / (sigma**2 + sd2)
        c_out = sigma * self.settings.sigma_data / (sigma**2 + sd2).sqrt()
        return c_skip, c_out

    def sample_training_sigmas(
        self, n: int, device: torch.device | str = "cpu", generator: torch.Generator | None = None
    ) -> torch.Tensor:
        s = self.settings
        loc = math.log(s.sigma_data) if s.train_loc is None else s.train_loc
        return rand_log_logistic((n,), loc, s.train_scale, s.sigma_min, s.sigma_max, device, generator)

    def training_inputs(
        self,
        x0: torch.Tensor,
        level: torch.Tensor | None = None,
        noise: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> TrainingInputs:
        """Noise level sigma (log-logistic), x = x0 + sigma * noise, the network input c_in * x, and the
        F-space target (x0 - c_skip * x) / c_out."""
        sigma = self.sample_training_sigmas(x0.shape[0], x0.device, generator) if level is None else level
        if noise is None:
            noise = torch.randn(x0.shape, generator=generator, device="cpu").to(x0)
        sigma = sigma.to(x0)
        c_skip, c_out = (_expand(c, x0) for c in self.scalings(sigma))
        noised = x0 + noise * _expand(sigma, x0)
        x_in = self._pre.precondition_inputs(noised, _expand(sigma, x0))
        target = (x0 - c_skip * noised) / c_out
        return TrainingInputs(sigma, noised, x_in, self.noise_cond(sigma), target, "sigma")

    @torch.no_grad()
    def sample(
        self,
        net: Network,
        shape: tuple[int, ...],
        steps: int | None,
        device: torch.device | str = "cpu",
        generator: torch.Generator | None = None,
        noise: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Deterministic DDIM sampling from sigma_max * N(0, I) over the schedule's `steps` levels."""
        if steps is None:
            raise ValueError("EDM sampling needs the number of steps")
        sched = self.scheduler(steps)
        sigmas = sched.sigmas
        if noise is None:
            noise = torch.randn(shape, generator=generator, device="cpu")
        x = noise.to(device=device, dtype=torch.float32) * sigmas[0]
        for i, t in enumerate(sched.timesteps):
            sigma = sigmas[i].to(device)
            x_in = sched.scale_model_input(x, t)  # c_in * x
            out = net(x_in, self.noise_cond(sigma).expand(shape[0]), i)
            denoised = sched.precondition_outputs(x, out.float(), sigma)
            x = sched.step(out, t, x, s_churn=0.0, pred_original_sample=denoised).prev_sample
        return x
