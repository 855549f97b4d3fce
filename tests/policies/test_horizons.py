"""Mixture of Horizons, the objective-agnostic pieces: layout and block mask, gate and fusion, the
combined loss, and dynamic inference (how many steps to execute from the horizons' consensus)."""

from __future__ import annotations

import pytest
import torch

from vla.policies.modules.horizons import (
    DEFAULT_HORIZONS,
    HorizonLayout,
    HorizonOutput,
    MixtureOfHorizons,
    balance_loss,
    disagreement,
    dynamic_horizon,
    mixture_loss,
    parse_horizons,
    segment_balance_loss,
)


def test_default_horizons_and_parsing():
    assert DEFAULT_HORIZONS == (3, 6, 9, 12, 15, 18, 21, 24, 27, 30)
    assert parse_horizons("3-30:3") == DEFAULT_HORIZONS
    assert parse_horizons("10,5,20") == (5, 10, 20)
    for bad in ("", "3,3", "0,4", "a-b"):
        with pytest.raises(ValueError):
            parse_horizons(bad)


def test_layout_positions_cover_and_block_mask():
    lay = HorizonLayout((2, 3), n_context=2, action_attention="full")
    assert lay.positions.tolist() == [0, 1, 0, 1, 2] and lay.segments.tolist() == [0, 0, 1, 1, 1]
    assert lay.cover.tolist() == [[True, True, False], [True, True, True]]
    assert lay.cover_count.tolist() == [2, 2, 1]
    m = lay.attention_mask()
    assert m.shape == (7, 7)
    assert m[:2, :2].tolist() == [[True, False], [True, True]], "context stays causal"
    assert not m[:2, 2:].any(), "context never sees action tokens"
    assert m[2:, :2].all(), "every action token sees all context"
    assert m[2:4, 2:4].all() and m[4:, 4:].all(), "full attention inside a segment"
    assert not m[2:4, 4:].any() and not m[4:, 2:4].any(), "never across segments"
    causal = HorizonLayout((2, 3), 2, "causal").attention_mask()
    assert causal[4:, 4:].tolist() == torch.ones(3, 3, dtype=torch.bool).tril().tolist()
    # expand/split round trip: each horizon reads the prefix of the chunk
    x = torch.arange(3.0).view(1, 3, 1)
    assert lay.expand(x).flatten().tolist() == [0, 1, 0, 1, 2]
    assert lay.split(lay.expand(x)).squeeze(-1).tolist() == [[[0, 1, 0], [0, 1, 2]]]


class ToyBackbone(torch.nn.Module):
    """A one-layer masked attention backbone: hidden = Attn(tokens), out = Linear(hidden)."""

    def __init__(self, width: int = 16, action_dim: int = 3, n_context: int = 2):
        super().__init__()
        self.inp = torch.nn.Linear(action_dim, width)
        self.pos = torch.nn.Parameter(torch.randn(64, width))
        self.context = torch.nn.Parameter(torch.randn(n_context, width))
        self.attn = torch.nn.MultiheadAttention(width, 2, batch_first=True)
        self.out = torch.nn.Linear(width, action_dim)

    def __call__(self, seq, positions, mask):
        b = seq.shape[0]
        tokens = torch.cat([self.context.expand(b, -1, -1), self.inp(seq) + self.pos[positions]], dim=1)
        h, _ = self.attn(tokens, tokens, tokens, attn_mask=~mask)  # torch: True = NOT allowed
        h = h[:, self.context.shape[0] :]
        return h, self.out(h)


def test_fusion_weights_sum_to_one_over_covering_horizons():
    torch.manual_seed(0)
    moh = MixtureOfHorizons(16, (2, 4, 5), n_context=2)
    with torch.no_grad():
        moh.gate.weight.normal_(std=2.0)  # real preferences, so the weights are not uniform
    backbone = ToyBackbone()
    for training in (True, False):  # with and without gate noise
        moh.train(training)
        out = moh(backbone, torch.randn(3, 5, 3))
        assert out.weights.shape == (3, 3, 5) and out.fused.shape == (3, 5, 3)
        torch.testing.assert_close(out.weights.sum(1), torch.ones(3, 5))
        assert (out.weights[:, ~out.cover.bool()] == 0).all(), "no weight on a horizon that does not reach"
        assert (out.weights[:, 0, :2] < 1).all() and (out.weights[:, 0, :2] > 0).all()
        assert torch.allclose(out.weights[:, 2, 4], torch.ones(3)), "only the longest horizon covers the last step"
        manual = (out.weights.unsqueeze(-1) * out.per_horizon).sum(1)
        torch.testing.assert_close(out.fused, manual)


def test_gate_noise_only_in_training():
    torch.manual_seed(0)
    moh, backbone, x = MixtureOfHorizons(16, (2, 5), 2), ToyBackbone(), torch.randn(2, 5, 3)
    moh.train()
    assert not torch.allclose(moh(backbone, x).weights, moh(backbone, x).weights)
    moh.eval()
    torch.testing.assert_close(moh(backbone, x).weights, moh(backbone, x).weights)
    assert MixtureOfHorizons(16, (2, 5), 2, gate_noise=False).gate_noise is None


def test_a_horizon_never_sees_another_horizons_tokens():
    torch.manual_seed(0)
    lay = HorizonLayout((2, 3, 5), n_context=2)
    backbone = ToyBackbone().eval()
    seq = torch.randn(1, lay.n_action_tokens, 3)
    pos, mask = lay.positions, lay.attention_mask()
    base = lay.split(backbone(seq, pos, mask)[1])
    poked = seq.clone()
    poked[:, 2:5] += 10.0  # the tokens of horizon 3 only
    moved = lay.split(backbone(poked, pos, mask)[1])
    torch.testing.assert_close(moved[:, 0], base[:, 0])
    torch.testing.assert_close(moved[:, 2], base[:, 2])
    assert not torch.allclose(moved[:, 1], base[:, 1]), "its own horizon does change"


def _output(per_horizon: torch.Tensor, weights: torch.Tensor, cover: torch.Tensor) -> HorizonOutput:
    fused = (weights.unsqueeze(-1) * per_horizon).sum(1)
    return HorizonOutput(fused, per_horizon, weights, cover, weights.log())


def test_mixture_loss_is_fused_plus_per_horizon_plus_balance():
    torch.manual_seed(0)
    lay = HorizonLayout((2, 4), 0)
    cover = lay.cover
    per = torch.randn(2, 2, 4, 3) * cover[None, :, :, None]
    w = torch.softmax(torch.randn(2, 2, 4).masked_fill(~cover, float("-inf")), dim=1)
    out, target = _output(per, w, cover), torch.randn(2, 4, 3)
    loss, info = mixture_loss(out, target, horizon_weight=1.0, balance_weight=0.5)
    fused = (out.fused - target).pow(2).mean()
    h0 = (per[:, 0, :2] - target[:, :2]).pow(2).mean()
    h1 = (per[:, 1] - target).pow(2).mean()
    torch.testing.assert_close(loss, fused + h0 + h1 + 0.5 * balance_loss(w, cover))
    assert info["fused_loss"] == pytest.approx(float(fused))
    # padded steps are excluded
    valid = torch.tensor([[True, True, True, False], [True, True, True, True]])
    loss_masked, _ = mixture_loss(out, target, valid, balance_weight=0.0)
    target2 = target.clone()
    target2[0, 3] += 100.0
    torch.testing.assert_close(mixture_loss(out, target2, valid, balance_weight=0.0)[0], loss_masked)


def test_balance_is_zero_for_even_use_and_grows_with_imbalance():
    cover = HorizonLayout((2, 4), 0).cover
    natural = torch.where(cover, 0.5, 0.0)
    natural[:, 2:] = torch.tensor([0.0, 1.0]).unsqueeze(-1)  # only the long horizon covers steps 2-3
    assert float(balance_loss(natural.unsqueeze(0), cover)) > 0  # usage (0.5, 0.75): uneven
    uniform = torch.where(cover, 0.5, 0.0)
    uniform[1, 2:] = 0.5  # mean over covered steps: both 0.5
    assert float(balance_loss(uniform.unsqueeze(0), cover)) == pytest.approx(0.0, abs=1e-7)
    skewed = torch.where(cover, 0.0, 0.0)
    skewed[1] = 1.0
    assert float(balance_loss(skewed.unsqueeze(0), cover)) > float(balance_loss(natural.unsqueeze(0), cover))


def test_disagreement_is_gate_weighted_l1():
    cover = HorizonLayout((1, 2), 0).cover
    per = torch.tensor([[[[1.0, 0.0], [0.0, 0.0]], [[3.0, 0.0], [2.0, 2.0]]]])  # (1, 2, 2, 2)
    w = torch.tensor([[[0.5, 0.0], [0.5, 1.0]]])
    d = disagreement(_output(per, w, cover))
    # step 0: fused (2, 0); |1-2| * .5 + |3-2| * .5 = 1; step 1: one horizon, no disagreement
    torch.testing.assert_close(d, torch.tensor([[1.0, 0.0]]))


def test_dynamic_horizon_executes_fewer_steps_when_horizons_disagree():
    count = HorizonLayout(DEFAULT_HORIZONS, 0).cover_count  # step 16 is covered by 5 horizons
    agree = torch.full((1, 30), 0.2)
    disagree = agree.clone()
    disagree[0, 7:] = 1.0  # the horizons part ways after 7 steps
    early = agree.clone()
    early[0, 1] = 5.0  # a large disagreement inside the first steps only raises the threshold
    score = torch.cat([agree, disagree, early])
    n = dynamic_horizon(score, count, ratio=1.2)
    assert n.tolist() == [15, 7, 15], "full prefix (15: then 5 or fewer horizons cover) / stop at 7"
    assert dynamic_horizon(disagree, count, ratio=10.0).tolist() == [15], "a loose ratio runs the prefix"
    everywhere = torch.linspace(1, 2, 30).unsqueeze(0)  # rising at once: only the minimum runs
    assert dynamic_horizon(everywhere, count, ratio=1.0).tolist() == [5]
    assert dynamic_horizon(everywhere, count, ratio=1.0, min_steps=3).tolist() == [3]
    assert dynamic_horizon(agree, count, ratio=1.2, stop_cover=8).tolist() == [6], "steps 7-9: 8 horizons"
    with pytest.raises(ValueError):
        dynamic_horizon(agree, count, ratio=0.0)


def test_segment_balance_is_the_authors_per_boundary_cv2_with_unbiased_variance():
    torch.manual_seed(0)
    horizons = (2, 4, 6)
    cover = HorizonLayout(horizons, 0).cover
    w = torch.softmax(torch.randn(3, 3, 6).masked_fill(~cover, float("-inf")), dim=1)  # (B, n_h, H)
    # by hand: segments [0, 2) (3 horizons active), [2, 4) (2), [4, 6) (1: no term)
    terms = []
    for start, end, active in ((0, 2, [0, 1, 2]), (2, 4, [1, 2])):
        usage = torch.stack([w[:, i, start:end].mean() for i in active])
        var = ((usage - usage.mean()) ** 2).sum() / (len(active) - 1)  # unbiased
        terms.append(var / usage.mean() ** 2)
    expected = (terms[0] + terms[1]) / 2
    torch.testing.assert_close(segment_balance_loss(w, cover), expected)
    assert not torch.allclose(segment_balance_loss(w, cover), balance_loss(w, cover))
    # the mixture loss uses it when asked, and a single horizon has no term
    out, target = _output(torch.zeros(3, 3, 6, 2), w, cover), torch.zeros(3, 6, 2)
    _, info = mixture_loss(out, target, balance_weight=1.0, balance="segments")
    assert info["horizon_balance"] == pytest.approx(float(expected))
    one = HorizonLayout((4,), 0).cover
    assert float(segment_balance_loss(torch.ones(2, 1, 4), one)) == 0.0
    # padded steps are left out of a segment's usage
    valid = torch.ones(3, 6, dtype=torch.bool)
    valid[0, 1] = False
    masked = segment_balance_loss(w, cover, valid)
    w2 = w.clone()
    w2[0, :, 1] = torch.tensor([1.0, 0.0, 0.0])
    torch.testing.assert_close(segment_balance_loss(w2, cover, valid), masked)


def test_moh_balance_switch_in_the_configs():
    from vla.policies.himoe import HiMoEConfig
    from vla.policies.mode import MoDEConfig

    assert MoDEConfig.from_preset("moh_cpu").moh_balance == "global"  # the original, kept at the cpu size
    assert MoDEConfig.from_preset("paper").moh_balance == "segments" == HiMoEConfig.from_preset("paper").moh_balance
    with pytest.raises(Exception, match="moh_balance"):
        MoDEConfig.from_preset("cpu", moh_balance="per_step")
