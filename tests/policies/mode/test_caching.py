"""Expert caching: identical outputs, nothing but the fused experts runs, dedupe, invalidation."""

from __future__ import annotations

import pytest
import torch

from tests.policies.mode.helpers import CAM_A, CAM_B, make_batch, make_policy, sharpen_routers, tiny_config


@pytest.fixture
def setup():
    cfg = tiny_config(camera_keys=(CAM_A, CAM_B), n_layers=3, num_sampling_steps=10)
    policy = make_policy(cfg).eval()
    sharpen_routers(policy)  # expert choice varies with the noise level, as in a trained model
    batch = make_batch(cfg, batch_size=3, with_action=False)  # batch > 1: the authors' cache missed here
    noise = torch.randn(3, cfg.chunk_size, cfg.action_dim, generator=torch.Generator().manual_seed(0))
    return policy, batch, noise


@pytest.mark.parametrize("fold", ["scale", "weights"])
@pytest.mark.parametrize("steps", [3, 5, 10])
def test_cached_equals_uncached(setup, steps, fold):
    policy, batch, noise = setup
    ref = policy.predict_chunk(batch, num_steps=steps, noise=noise)
    cache = policy.cache_experts(fold=fold, num_steps=steps)
    assert cache.key.num_steps == steps and len(cache.plan) == steps
    out = policy.predict_chunk(batch, num_steps=steps, noise=noise)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    assert policy.expert_cache is cache  # used, not rebuilt


def test_cached_path_runs_no_router_and_no_unused_expert(setup):
    policy, batch, noise = setup
    cache = policy.cache_experts()
    calls = {"router": 0, "expert": 0}

    def count(kind):
        def hook(*_):
            calls[kind] += 1

        return hook

    handles = []
    for block in policy.transformer.blocks:
        handles.append(block.ffn.router.register_forward_hook(count("router")))
        handles += [e.register_forward_hook(count("expert")) for e in block.ffn.experts]
    policy.predict_chunk(batch, noise=noise)
    assert calls == {"router": 0, "expert": 0}
    policy.clear_expert_cache()
    policy.predict_chunk(batch, noise=noise)
    assert calls["router"] == 10 * 3 and calls["expert"] == 10 * 3 * 2  # uncached: routers + top-2 experts
    for h in handles:
        h.remove()
    assert cache.fingerprint  # the cache recorded which weights it was built from


def test_fused_experts_are_deduplicated(setup):
    policy, _, _ = setup
    cache = policy.cache_experts()
    distinct = {(layer, experts) for step in cache.routes for layer, (experts, _) in enumerate(step)}
    assert cache.num_fused == len(distinct)
    assert cache.num_fused < 10 * 3  # fewer copies than (step, layer) pairs: the authors' count
    assert len(distinct) > 3  # the choice does vary with the noise level here
    assert sum(cache.distinct_per_layer()) == cache.num_fused
    # every (step, layer) entry points to the copy for its own expert set
    for step, entries in zip(cache.routes, cache.plan, strict=True):
        for layer, ((experts, _), entry) in enumerate(zip(step, entries, strict=True)):
            assert entry.fused is cache.fused[(layer, experts)]
    folded = policy.cache_experts(fold="weights")  # weights folded in: one copy per distinct gate vector
    assert folded.num_fused >= cache.num_fused


def test_cache_is_rebuilt_when_steps_schedule_or_weights_change(setup):
    policy, batch, noise = setup
    policy.cache_experts()
    builds = policy.cache_builds
    policy.predict_chunk(batch, noise=noise)
    assert policy.cache_builds == builds  # same schedule: reused

    # another step count
    ref5 = _uncached(policy, batch, noise, steps=5)
    out5 = policy.predict_chunk(batch, num_steps=5, noise=noise)
    assert policy.cache_builds == builds + 1 and policy.expert_cache.key.num_steps == 5
    torch.testing.assert_close(out5, ref5, rtol=1e-5, atol=1e-5)

    # another schedule (the config is frozen: a new config is a new schedule)
    policy.config = policy.config.replace(sigma_schedule="karras")
    ref_k = _uncached(policy, batch, noise, steps=5)
    out_k = policy.predict_chunk(batch, num_steps=5, noise=noise)
    assert policy.cache_builds == builds + 2 and policy.expert_cache.key.settings.schedule == "karras"
    torch.testing.assert_close(out_k, ref_k, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(out_k, out5)

    # new weights (an optimizer step, in place)
    with torch.no_grad():
        for block in policy.transformer.blocks:
            block.ffn.experts[0].w_out.weight.mul_(2.0)
            block.ffn.router.mlp[2].bias.add_(torch.tensor([3.0, 0.0, 0.0, -3.0]))
    ref_w = _uncached(policy, batch, noise, steps=5)
    out_w = policy.predict_chunk(batch, num_steps=5, noise=noise)
    assert policy.cache_builds == builds + 3
    torch.testing.assert_close(out_w, ref_w, rtol=1e-5, atol=1e-5)

    # moving the model drops the fused copies
    policy.to(torch.float32)
    assert policy.expert_cache is None
    policy.predict_chunk(batch, num_steps=5, noise=noise)
    assert policy.cache_builds == builds + 4


def test_cache_is_not_used_in_training_mode(setup):
    policy, batch, noise = setup
    policy.cache_experts()
    policy.train()
    calls = []
    handle = policy.transformer.blocks[0].ffn.router.register_forward_hook(lambda *a: calls.append(1))
    policy.predict_chunk(batch, noise=noise)  # training mode: routing is sampled, the cache would be wrong
    handle.remove()
    assert len(calls) == policy.config.num_sampling_steps


@pytest.mark.parametrize(
    "dtype,tol", [("bfloat16", 1e-3), ("int8", 3e-3), ("int8_dynamic", 1e-2), ("int8_residual", 3e-3)]
)
def test_low_precision_cache_stays_close(setup, dtype, tol):
    policy, batch, noise = setup
    ref = policy.predict_chunk(batch, noise=noise)
    cache = policy.cache_experts(dtype=dtype)
    out = policy.predict_chunk(batch, noise=noise)
    assert cache.dtype == dtype and not torch.equal(out, ref)
    assert ((out - ref).norm() / ref.norm()).item() < tol


def test_cache_rejects_unknown_options(setup):
    policy, _, _ = setup
    with pytest.raises(ValueError, match="dtype"):
        policy.cache_experts(dtype="float8")
    with pytest.raises(ValueError, match="fold"):
        policy.cache_experts(fold="sideways")


def _uncached(policy, batch, noise, steps):
    request, cache = policy._cache_request, policy._expert_cache
    policy._cache_request = None
    try:
        return policy.predict_chunk(batch, num_steps=steps, noise=noise)
    finally:
        policy._cache_request, policy._expert_cache = request, cache
