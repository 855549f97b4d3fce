"""HiMoE's layer kinds: the action-space router and AS-MoE, the contrastive routing loss, HB-MoE with a
shared expert and the per-sequence balance loss, the dense MLP."""

from __future__ import annotations

import pytest
import torch

from vla.policies.modules.hier_moe import (
    ActionSpaceMoE,
    ActionSpaceRouter,
    DenseMLP,
    HBMoE,
    action_space_input,
    action_space_labels,
    sequence_balance_loss,
    supcon_loss,
)
from vla.policies.modules.moe import Routing


def masks() -> torch.Tensor:
    m = torch.zeros(4, 24, dtype=torch.bool)
    m[:2, :7] = True  # two sequences of one robot
    m[2:, 8:14] = True  # two of another
    return m


def test_action_space_router_is_a_bias_free_linear_map_of_the_mask():
    router = ActionSpaceRouter(24, 3)
    assert router.proj.bias is None
    x = action_space_input(masks(), None)
    assert torch.equal(router(x), x @ router.proj.weight.T)
    assert torch.equal(router(torch.zeros(1, 24)), torch.zeros(1, 3))  # no bias: the mask alone decides
    labels = action_space_labels(x)
    assert labels[0] == labels[1] and labels[2] == labels[3] and labels[0] != labels[2]


def test_richer_action_space_id_separates_robots_with_the_same_mask():
    same = torch.ones(2, 24, dtype=torch.bool)
    ids = torch.tensor([0, 3])
    x = action_space_input(same, ids, "mask_id", n_ids=4)
    assert x.shape == (2, 28) and torch.equal(x[:, :24], torch.ones(2, 24))
    assert action_space_labels(x).unique().numel() == 2  # the mask alone would give one label
    assert action_space_labels(action_space_input(same, ids)).unique().numel() == 1
    with pytest.raises(ValueError, match="max_embodiments"):
        action_space_input(same, torch.tensor([0, 4]), "mask_id", n_ids=4)
    with pytest.raises(ValueError, match="not in"):
        action_space_input(same, ids, "name")


def test_as_moe_is_top1_with_the_raw_router_probability_as_weight():
    torch.manual_seed(0)
    layer = ActionSpaceMoE(8, 16, 3, route_dim=24)
    with torch.no_grad():
        layer.router.proj.weight.normal_()
    x = torch.randn(4, 5, 8)
    route = action_space_input(masks(), None)[:, None, :].expand(-1, 5, -1)
    y, routing, logits = layer(x, route)
    assert routing.indices.shape == (4, 5, 1)
    top = logits.softmax(-1).max(-1)
    assert torch.allclose(routing.weights[..., 0], top.values)  # not renormalised to 1
    assert bool((routing.weights < 1).all())
    expert = layer.moe.experts[int(routing.indices[0, 0, 0])]
    assert torch.allclose(y[0, 0], top.values[0, 0] * expert(x[0, 0]), atol=1e-6)
    # every token of a sequence shares the routing (the input is the sequence's mask)
    assert bool((routing.indices == routing.indices[:, :1]).all())


def test_supcon_is_low_when_action_spaces_route_apart_and_high_when_mixed():
    labels = torch.tensor([0, 0, 0, 1, 1, 1])
    apart = torch.tensor([[1.0, 0, 0]] * 3 + [[0, 1.0, 0]] * 3)
    mixed = torch.tensor([[1.0, 0, 0], [0, 1.0, 0]] * 3)
    low, high = supcon_loss(apart, labels, 0.1), supcon_loss(mixed, labels, 0.1)
    assert float(low) == pytest.approx(torch.log(torch.tensor(2.0)).item(), abs=1e-3)  # log(#positives)
    assert float(high) > float(low) + 3
    feats = torch.randn(6, 3, requires_grad=True)
    supcon_loss(feats, labels).backward()
    assert feats.grad is not None and feats.grad.abs().sum() > 0
    none = supcon_loss(feats, torch.arange(6))  # no anchor has a positive
    assert float(none.detach()) == 0.0 and none.requires_grad
    big = supcon_loss(torch.randn(3000, 3), torch.randint(0, 2, (3000,)), max_items=256)
    assert torch.isfinite(big)


def test_hb_moe_renormalises_top_k_and_adds_the_shared_expert():
    torch.manual_seed(0)
    layer = HBMoE(8, 4, n_experts=6, top_k=2, shared_hidden=5)
    x = torch.randn(3, 4, 8)
    y, routing = layer(x)
    assert routing.indices.shape == (3, 4, 2) and routing.probs.shape == (3, 4, 6)
    assert torch.allclose(routing.weights.sum(-1), torch.ones(3, 4))
    assert torch.allclose(y, layer.moe.dispatch(x, routing) + layer.shared(x))
    no_shared = HBMoE(8, 4, 6, 2, shared=False)
    assert no_shared.shared is None and no_shared(x)[0].shape == x.shape


def test_sequence_balance_loss_is_one_when_each_sequence_balances():
    e, t = 4, 8
    probs = torch.full((2, t, e), 1 / e)
    balanced = Routing(torch.arange(t).remainder(e).view(1, t, 1).expand(2, t, 1), torch.ones(2, t, 1), probs)
    assert float(sequence_balance_loss(balanced)) == pytest.approx(1.0)
    onehot = torch.zeros(2, t, e)
    onehot[..., 0] = 1
    collapsed = Routing(torch.zeros(2, t, 1, dtype=torch.long), torch.ones(2, t, 1), onehot)
    assert float(sequence_balance_loss(collapsed)) == pytest.approx(e)
    # balanced over the batch but not within each sequence: the per-sequence loss sees it
    idx = torch.cat([torch.zeros(1, t, 1), torch.ones(1, t, 1)]).long()
    p = torch.zeros(2, t, e)
    p[0, :, 0] = p[1, :, 1] = 1
    per_seq = sequence_balance_loss(Routing(idx, torch.ones(2, t, 1), p))
    assert float(per_seq) == pytest.approx(e)
    valid = torch.ones(2, t, dtype=torch.bool)
    valid[:, t // 2 :] = False
    assert torch.isfinite(sequence_balance_loss(balanced, valid))


def test_dense_mlp():
    mlp = DenseMLP(8, 32)
    assert mlp(torch.randn(2, 3, 8)).shape == (2, 3, 8)


def test_dense_geglu_is_the_authors_bias_free_gated_gelu_tanh():
    import torch.nn.functional as F

    from vla.policies.himoe import HiMoEConfig, HiMoEPolicy
    from vla.policies.modules.hier_moe import DenseMLP

    torch.manual_seed(0)
    mlp = DenseMLP(8, 16, gated=True)
    assert mlp.w_in.bias is None and mlp.w_out.bias is None
    assert mlp.w_in.weight.shape == (32, 8) and mlp.w_out.weight.shape == (8, 16)
    x = torch.randn(3, 5, 8)
    value, gate = x @ mlp.w_in.weight[:16].T, x @ mlp.w_in.weight[16:].T
    expected = (value * F.gelu(gate, approximate="tanh")) @ mlp.w_out.weight.T
    torch.testing.assert_close(mlp(x), expected)
    plain = DenseMLP(8, 16)
    assert plain.w_in.bias is not None and plain.w_in.weight.shape == (16, 8)  # the original GELU MLP
    # the paper preset's dense layers are GeGLU of width 4096; the cpu preset keeps the GELU MLP
    with torch.device("meta"):
        paper = HiMoEPolicy(HiMoEConfig.from_preset("paper", state_dim=8, action_dim=7))
    dense = [b.ffn for b in paper.transformer.blocks if b.kind == "dense"]
    assert len(dense) == 6 and all(d.gated and d.w_out.in_features == 4096 and d.w_in.bias is None for d in dense)
    cpu = HiMoEPolicy(HiMoEConfig.from_preset("cpu", state_dim=8, action_dim=7))
    assert not any(b.ffn.gated for b in cpu.transformer.blocks if b.kind == "dense")
