"""Flow matching: time samplers' moments, interpolation, Euler integration, the masked loss."""

from __future__ import annotations

import math

import pytest
import torch

from vla.policies.modules.flow import (
    T_MIN,
    FlowMatching,
    FlowSettings,
    euler_sample,
    euler_times,
    interpolate,
    sample_times,
)

N = 400_000


def test_exact_beta_sampler_has_the_beta_moments():
    t = sample_times(N, "beta", generator=torch.Generator().manual_seed(0)).double()
    base = (t - T_MIN) / (1 - T_MIN)
    # Beta(1.5, 1): mean a / (a + b) = 0.6, variance ab / ((a + b)^2 (a + b + 1)) = 0.0686
    assert abs(float(base.mean()) - 0.6) < 2e-3
    assert abs(float(base.var()) - 1.5 / (2.5**2 * 3.5)) < 1e-3
    # CDF t^1.5: the median is 0.5^(1/1.5)
    assert abs(float(base.median()) - 0.5 ** (1 / 1.5)) < 3e-3
    assert float(t.min()) >= T_MIN and float(t.max()) <= 1.0


def test_the_authors_approximation_and_uniform_differ_as_documented():
    g = torch.Generator().manual_seed(1)
    approx = sample_times(N, "pi0_approx", generator=g)
    assert 0.55 < float(approx.mean()) < 0.567  # ~0.56, not Beta(1.5, 1)'s 0.6
    uniform = sample_times(N, "uniform", generator=g)
    assert abs(float(uniform.mean()) - 0.5) < 3e-3
    with pytest.raises(ValueError, match="time sampler"):
        sample_times(4, "lognormal")
    with pytest.raises(ValueError, match="time_sampler"):
        FlowSettings(time_sampler="lognormal")


def test_interpolation_convention_is_noise_at_one_data_at_zero():
    x, noise = torch.randn(3, 4, 2), torch.randn(3, 4, 2)
    x0, target = interpolate(x, noise, torch.zeros(3))
    x1, _ = interpolate(x, noise, torch.ones(3))
    assert torch.equal(x0, x) and torch.equal(x1, noise) and torch.equal(target, noise - x)
    xt, _ = interpolate(x, noise, torch.tensor([0.25, 0.5, 0.75]))
    assert torch.allclose(xt[1], 0.5 * (x[1] + noise[1]))


def test_euler_on_a_linear_field():
    noise = torch.randn(2, 3, 4, dtype=torch.float64)
    k = 0.7
    for steps in (1, 4, 10):
        out = euler_sample(lambda x, t, step: k * x, noise, steps)
        assert torch.allclose(out, noise * (1 - k / steps) ** steps)  # each step x <- x - dt * k * x
    fine = euler_sample(lambda x, t, step: k * x, noise, 2000)
    assert torch.allclose(fine, noise * math.exp(-k), rtol=1e-3)  # converges to the exact flow
    # the exact straight path: a constant velocity noise - x0 is integrated exactly in one step
    x0 = torch.randn_like(noise)
    assert torch.allclose(euler_sample(lambda x, t, step: noise - x0, noise, 3), x0)
    assert torch.allclose(euler_times(4), torch.tensor([1.0, 0.75, 0.5, 0.25]))
    seen, steps = [], []
    euler_sample(lambda x, t, step: seen.append(float(t[0])) or steps.append(step) or x * 0, noise, 5)
    assert seen == pytest.approx(euler_times(5).tolist()) and steps == [0, 1, 2, 3, 4]


def test_masked_loss_ignores_masked_elements_exactly():
    g = torch.Generator().manual_seed(0)
    pred = torch.randn(2, 5, 6, generator=g, requires_grad=True)
    target = torch.randn(2, 5, 6, generator=g)
    mask = torch.rand(2, 5, 6, generator=g) > 0.4
    loss = FlowMatching().loss(pred, target, mask)
    assert torch.allclose(loss, ((pred - target)[mask] ** 2).mean())  # mean over the real elements only
    loss.backward()
    assert torch.all(pred.grad[~mask] == 0) and torch.all(pred.grad[mask] != 0)
    changed = target.clone()
    changed[~mask] = torch.randn(int((~mask).sum()), generator=g) * 1e6
    changed[0, 0][~mask[0, 0]] = float("nan")
    assert torch.equal(FlowMatching().loss(pred, changed, mask), loss)  # bit-identical
    assert torch.equal(FlowMatching().loss(pred, target, None), ((pred - target) ** 2).mean())
    steps = mask.any(-1)  # a (B, H) mask of chunk steps covers every action dimension of a step
    assert torch.equal(FlowMatching().loss(pred, target, steps), FlowMatching().loss(pred, target, steps[..., None]))


def test_flow_matching_object_trains_a_velocity_and_samples():
    torch.manual_seed(0)
    fm = FlowMatching(FlowSettings(steps=10))
    x = torch.randn(16, 3, 2)
    mask = torch.ones(16, 3, 2, dtype=torch.bool)
    mask[:, -1] = False
    seen = {}

    def net(x_t, t, step):
        seen["t"], seen["step"] = t, step
        return x_t * 0

    loss, info = fm.network_loss(net, x, mask)
    assert seen["t"].shape == (16,) and seen["step"] is None and 0 < info["t_mean"] < 1 and torch.isfinite(loss)
    out = fm.sample(lambda x_t, t, step: x_t * 0, (2, 3, 2), noise=torch.ones(2, 3, 2))
    assert torch.equal(out, torch.ones(2, 3, 2))  # zero velocity: the sample stays at the noise
