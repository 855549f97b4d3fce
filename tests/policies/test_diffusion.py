"""EDM objective and DDIM sampler: schedules, preconditioning, oracle denoisers, training noise."""

from __future__ import annotations

import math

import pytest
import torch

from vla.policies.modules.diffusion import EDM, EDMSettings, rand_log_logistic


def _oracle_net(edm: EDM, target: torch.Tensor):
    """The raw network output whose preconditioned denoising is exactly `target`."""

    def net(x_in, noise_cond, step):
        sigma = (4 * noise_cond).exp().view(-1, 1, 1)
        x = x_in * (sigma**2 + edm.settings.sigma_data**2).sqrt()  # undo c_in
        c_skip, c_out = edm.scalings(sigma)
        return (target - c_skip * x) / c_out

    return net


def _gaussian_net(edm: EDM, mu: float, s: float):
    """Exact denoiser for data ~ N(mu, s^2) per entry."""

    def net(x_in, noise_cond, step):
        sigma = (4 * noise_cond).exp().view(-1, 1, 1)
        x = x_in * (sigma**2 + edm.settings.sigma_data**2).sqrt()
        denoised = mu + s**2 / (s**2 + sigma**2) * (x - mu)
        c_skip, c_out = edm.scalings(sigma)
        return (denoised - c_skip * x) / c_out

    return net


def test_exponential_schedule_matches_paper_settings():
    sig = EDM().sigmas(10)
    assert len(sig) == 11 and sig[-1] == 0
    assert sig[0].item() == pytest.approx(80.0) and sig[-2].item() == pytest.approx(0.001, rel=1e-4)
    ratios = sig[1:-1] / sig[:-2]
    assert torch.allclose(ratios, ratios[0].expand_as(ratios), rtol=1e-4)  # geometric
    karras = EDM(EDMSettings(schedule="karras")).sigmas(10)
    assert not torch.allclose(karras, sig) and karras[0].item() == pytest.approx(80.0)


def test_sampler_returns_oracle_target_and_passes_step_index():
    edm = EDM()
    target = torch.randn(3, 10, 7)
    seen = []
    oracle = _oracle_net(edm, target)

    def net(x_in, noise_cond, step):
        seen.append(step)
        assert noise_cond.shape == (3,)
        return oracle(x_in, noise_cond, step)

    out = edm.sample(net, (3, 10, 7), 5, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(out, target, rtol=1e-5, atol=1e-5)
    assert seen == [0, 1, 2, 3, 4]


def test_sampler_on_gaussian_data_converges_with_steps():
    edm = EDM()
    mu, s = 0.3, 0.2
    errs = []
    for steps in (5, 10, 40):
        out = edm.sample(_gaussian_net(edm, mu, s), (2000, 4, 1), steps, generator=torch.Generator().manual_seed(0))
        assert out.mean().item() == pytest.approx(mu, abs=0.01)
        errs.append(abs(out.std().item() - s))
    assert errs[0] > errs[1] > errs[2] and errs[2] < 0.02


def test_sampler_is_deterministic_given_noise():
    edm = EDM()
    net = _gaussian_net(edm, 0.0, 0.5)
    noise = torch.randn(2, 10, 3)
    a = edm.sample(net, (2, 10, 3), 10, noise=noise)
    b = edm.sample(net, (2, 10, 3), 10, noise=noise.clone())
    assert torch.equal(a, b)


def test_loss_is_zero_for_the_oracle_and_respects_mask():
    edm = EDM()
    x0 = torch.randn(4, 10, 7) * 0.5
    loss, info = edm.network_loss(_oracle_net(edm, x0), x0)
    assert loss.item() < 1e-8 and "sigma_mean" in info
    # a network wrong only on padded steps has zero masked loss
    mask = torch.ones(4, 10, dtype=torch.bool)
    mask[:, 7:] = False
    wrong = x0.clone()
    wrong[:, 7:] += 1.0
    oracle = _oracle_net(edm, wrong)
    masked, _ = edm.network_loss(oracle, x0, mask)
    unmasked, _ = edm.network_loss(oracle, x0)
    assert masked.item() < 1e-8 < unmasked.item()


def test_loss_target_has_unit_scale_for_zero_output():
    """With EDM preconditioning the target F has unit variance when data has std sigma_data."""
    edm = EDM()
    x0 = torch.randn(4096, 1, 1) * edm.settings.sigma_data
    loss, _ = edm.network_loss(lambda x, c, s: torch.zeros_like(x), x0, generator=torch.Generator().manual_seed(0))
    assert loss.item() == pytest.approx(1.0, abs=0.1)


def test_log_logistic_training_noise():
    sig = rand_log_logistic((200_000,), math.log(0.5), 0.5, 0.001, 80.0, generator=torch.Generator().manual_seed(0))
    assert sig.min() >= 0.001 and sig.max() <= 80.0
    assert sig.median().item() == pytest.approx(0.5, rel=0.03)
    # log(sigma) is logistic with scale 0.5: P(log sigma < loc - 0.5) = sigmoid(-1)
    frac = (sig.log() < math.log(0.5) - 0.5).float().mean().item()
    assert frac == pytest.approx(1 / (1 + math.e), abs=0.01)
    narrow = EDM(EDMSettings(sigma_min=0.1, sigma_max=0.2)).sample_training_sigmas(1000)
    assert narrow.min() >= 0.1 and narrow.max() <= 0.2


def test_settings_are_validated():
    with pytest.raises(ValueError, match="schedule"):
        EDM(EDMSettings(schedule="linear"))
    with pytest.raises(ValueError, match="sigma_min"):
        EDM(EDMSettings(sigma_min=1.0, sigma_max=0.5))
    with pytest.raises(ValueError, match="num_steps"):
        EDM().sigmas(0)
