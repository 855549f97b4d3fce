"""MoE layer: routing semantics, top-k selection, balance loss, dispatch, expert fusion."""

from __future__ import annotations

import pytest
import torch

from vla.policies.modules.moe import (
    FusedSwiGLU,
    MoELayer,
    NoiseRouter,
    Routing,
    SwiGLU,
    TokenRouter,
    drop_idle_expert_grads,
    experts_used,
    keep_idle_experts,
    load_balancing_loss,
    select_experts,
)


def _layer(router_kind: str = "noise", dim: int = 16, n_experts: int = 4, top_k: int = 2) -> MoELayer:
    torch.manual_seed(0)
    router = NoiseRouter(dim, n_experts) if router_kind == "noise" else TokenRouter(dim, n_experts)
    # Larger router weights than the training init, so experts are clearly preferred.
    for p in router.parameters():
        torch.nn.init.normal_(p, std=0.5)
    return MoELayer(dim, 2 * dim, n_experts, top_k, router)


def _reference(layer: MoELayer, x: torch.Tensor, routing: Routing) -> torch.Tensor:
    """Dense computation: every expert on every token, weighted by the chosen gates."""
    idx, w = routing.indices, routing.weights
    if idx.dim() == 2:
        idx = idx[:, None].expand(*x.shape[:2], idx.shape[-1])
        w = w[:, None].expand(*x.shape[:2], w.shape[-1])
    all_out = torch.stack([e(x) for e in layer.experts], dim=-2)  # (B, T, E, d)
    gathered = all_out.gather(-2, idx[..., None].expand(*idx.shape, x.shape[-1]))
    return (gathered * w[..., None]).sum(-2)


def test_noise_router_ignores_tokens():
    layer = _layer("noise").eval()
    c = torch.randn(3, 16)
    x1, x2 = torch.randn(3, 5, 16), torch.randn(3, 5, 16) * 10
    _, r1 = layer(x1, c)
    _, r2 = layer(x2, c)
    assert torch.equal(r1.indices, r2.indices) and torch.equal(r1.weights, r2.weights)
    assert r1.indices.shape == (3, 2)  # one decision per sequence, shared by its tokens
    # ... but the noise embedding does change the choice
    many = layer.route(torch.randn(64, 16) * 3)
    assert len({tuple(sorted(i.tolist())) for i in many.indices}) > 1


def test_token_router_depends_on_tokens():
    layer = _layer("token").eval()
    x = torch.randn(2, 32, 16)
    _, routing = layer(x, x)
    assert routing.indices.shape == (2, 32, 2)
    assert len({tuple(sorted(i.tolist())) for i in routing.indices.reshape(-1, 2)}) > 1


@pytest.mark.parametrize("kind", ["noise", "token"])
def test_dispatch_matches_dense_reference(kind):
    layer = _layer(kind).eval()
    x = torch.randn(3, 7, 16)
    route_in = torch.randn(3, 16) if kind == "noise" else x
    y, routing = layer(x, route_in)
    torch.testing.assert_close(y, _reference(layer, x, routing), rtol=1e-5, atol=1e-6)
    assert torch.allclose(routing.weights.sum(-1), torch.ones(()))  # renormalised top-k


def test_topk_deterministic_in_eval_sampled_in_train():
    layer = _layer()
    c = (0.1 * torch.randn(1, 16)).expand(400, 16)  # a mildly peaked router: every expert has a chance
    layer.eval()
    r = layer.route(c)
    assert (r.indices == r.indices[0]).all()
    assert torch.equal(r.indices[0], r.probs[0].topk(2).indices)
    layer.train()
    torch.manual_seed(1)
    r = layer.route(c)
    sets = [tuple(sorted(i.tolist())) for i in r.indices]
    assert len(set(sets)) > 1  # sampled: not always the same pair
    assert all(len(set(s)) == 2 for s in sets)  # without replacement
    # sampling frequencies follow the router probabilities: the most likely expert is chosen most
    counts = torch.bincount(r.indices.reshape(-1), minlength=4)
    assert counts[r.probs[0].argmax()] > counts[r.probs[0].argmin()]


def test_select_experts_without_renormalisation_keeps_probabilities():
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0]])
    r = select_experts(logits, 2, sample=False, renormalize=False)
    p = logits.softmax(-1)
    assert r.indices.tolist() == [[0, 1]]
    torch.testing.assert_close(r.weights, p[:, :2])


def test_balance_loss_values_and_gradient():
    n = 4
    uniform = Routing(torch.arange(n).repeat(10)[:, None], torch.ones(4 * 10, 1), torch.full((40, n), 1 / n))
    assert load_balancing_loss(uniform).item() == pytest.approx(1.0)
    collapsed = Routing(torch.zeros(40, 1, dtype=torch.long), torch.ones(40, 1), torch.eye(n)[[0] * 40])
    assert load_balancing_loss(collapsed).item() == pytest.approx(float(n))
    # the gradient lowers the overloaded experts' probabilities and raises the idle ones'
    logits = torch.tensor([[3.0, 1.0, 0.0, 0.0]], requires_grad=True)
    routing = select_experts(logits, 2, sample=False)
    assert sorted(routing.indices[0].tolist()) == [0, 1]
    load_balancing_loss(routing).backward()
    assert logits.grad[0, 0] > 0 and logits.grad[0, 1] > 0
    assert logits.grad[0, 2] < 0 and logits.grad[0, 3] < 0
    # and a few descent steps undo the collapse
    opt = torch.optim.SGD([logits], lr=5.0)
    before = load_balancing_loss(select_experts(logits, 2, sample=False)).item()
    for _ in range(10):
        opt.zero_grad()
        load_balancing_loss(select_experts(logits, 2, sample=False)).backward()
        opt.step()
    assert logits.softmax(-1)[0, 0] < 0.5
    assert load_balancing_loss(select_experts(logits, 2, sample=False)).item() < before


def test_layer_validates_arguments():
    with pytest.raises(ValueError, match="top_k"):
        MoELayer(8, 16, 4, 5, NoiseRouter(8, 4))
    with pytest.raises(ValueError, match="outputs"):
        MoELayer(8, 16, 4, 2, NoiseRouter(8, 3))


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("fold", [False, True])
def test_fused_experts_equal_weighted_sum(bias, fold):
    torch.manual_seed(0)
    experts = [SwiGLU(16, 24, bias=bias) for _ in range(3)]
    if bias:
        for e in experts:
            torch.nn.init.normal_(e.w_in.bias)
            torch.nn.init.normal_(e.w_out.bias)
    gates = torch.tensor([0.5, 0.3, 0.2])
    x = torch.randn(2, 5, 16)
    ref = sum(g * e(x) for g, e in zip(gates, experts, strict=True))
    if fold:
        fused = FusedSwiGLU(experts, gates.tolist())
        y = fused(x)
    else:
        fused = FusedSwiGLU(experts)
        y = fused(x, fused.prepare(gates))
        with pytest.raises(ValueError, match="prepare"):
            fused(x)
    torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-5)
    assert fused.num_params == 3 * (16 * 48 + 24 * 16)


@pytest.mark.parametrize(
    "dtype,tol", [("bfloat16", 0.02), ("int8", 0.03), ("int8_dynamic", 0.1), ("int8_residual", 0.03)]
)
@pytest.mark.parametrize("fold", [False, True])
def test_low_precision_fused_experts_stay_close(dtype, tol, fold):
    torch.manual_seed(0)
    experts = [SwiGLU(64, 128) for _ in range(2)]
    gates = torch.tensor([0.6, 0.4])
    x = torch.randn(4, 64)
    ref = sum(g * e(x) for g, e in zip(gates, experts, strict=True))
    low = FusedSwiGLU(experts, gates.tolist() if fold else None, dtype=dtype)
    y = low(x) if fold else low(x, low.prepare(gates))
    assert y.dtype == torch.float32
    assert (y - ref).norm() / ref.norm() < tol
    assert low.nbytes == low.num_params * (2 if dtype == "bfloat16" else 1)


def test_residual_int8_recovers_activation_precision():
    """int8_residual removes the activation-quantisation error: it lands at weight-only int8 accuracy."""
    torch.manual_seed(0)
    experts = [SwiGLU(256, 512) for _ in range(2)]
    gates = torch.tensor([0.5, 0.5])
    x = torch.randn(14, 256) * torch.linspace(0.2, 3.0, 256)  # uneven features, like real activations
    ref = sum(g * e(x) for g, e in zip(gates, experts, strict=True))

    def err(dtype):
        f = FusedSwiGLU(experts, dtype=dtype)
        return ((f(x, f.prepare(gates)) - ref).norm() / ref.norm()).item()

    assert err("int8_residual") < 0.5 * err("int8_dynamic")
    assert err("int8_residual") < 1.5 * err("int8")


def test_idle_experts_join_the_graph_with_bit_identical_output_and_lose_their_grads_when_idle_everywhere():
    layer = _layer("noise", top_k=1)
    x = torch.randn(1, 5, 16)  # one sequence, routed per sequence: one expert busy, three idle
    r = layer.route(torch.randn(1, 16))
    routing = Routing(r.indices, r.weights.detach(), r.probs.detach())  # two backward passes below
    skipped = layer.dispatch(x, routing)
    skipped.sum().backward()
    busy = {e for e, ex in enumerate(layer.experts) if ex.w_in.weight.grad is not None}
    assert busy == {int(routing.indices)}
    layer.zero_grad(set_to_none=True)

    layers = keep_idle_experts(layer)
    assert layers == [layer]
    kept = layer.dispatch(x, routing)
    assert torch.equal(kept, skipped)
    kept.sum().backward()
    assert all(ex.w_in.weight.grad is not None for ex in layer.experts)
    assert all(float(layer.experts[e].w_in.weight.grad.abs().sum()) == 0 for e in range(4) if e not in busy)
    used = experts_used(layers)
    assert used.tolist() == [float(e in busy) for e in range(4)]
    assert drop_idle_expert_grads(layers, used) == 3  # as if idle on every process
    assert {e for e, ex in enumerate(layer.experts) if ex.w_in.weight.grad is not None} == busy
    assert layer.experts_used is None
    with torch.no_grad():  # inference skips idle experts as before
        layer.dispatch(x, routing)
    assert layer.experts_used is None
