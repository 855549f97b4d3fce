"""MoDE with a mixture of horizons: config checks, the one-pass denoiser, equivalence with one horizon,
expert caching, dynamic inference through predict_plan / select_action / the eval planner, checkpoints."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.policies.mode.helpers import make_batch, sharpen_routers, stats_for, tiny_config
from vla.cli.train import moh_settings
from vla.policies import PolicyError
from vla.policies.mode import MoDEConfig, MoDEPolicy
from vla.policies.modules.horizons import DEFAULT_HORIZONS, dynamic_horizon
from vla.policies.policy import Policy
from vla.policies.runtime import PolicyPlanner

HORIZONS = (2, 4, 6)


def moh_policy(horizons=HORIZONS, seed: int = 0, **overrides) -> MoDEPolicy:
    torch.manual_seed(seed)
    cfg = tiny_config(**{**MoDEConfig.moh_overrides(horizons), **overrides})
    return MoDEPolicy(cfg, stats_for(cfg))


def test_config_switch_and_validation():
    cfg = tiny_config(**MoDEConfig.moh_overrides())
    assert cfg.horizons == DEFAULT_HORIZONS == tuple(range(3, 31, 3)) and cfg.chunk_size == 30
    assert cfg.action_attention == "full" and cfg.dynamic_ratio is None
    assert tiny_config().horizons is None and tiny_config().action_attention == "causal"  # the paper's MoDE
    with pytest.raises(PolicyError, match="max"):
        tiny_config(horizons=(2, 4), action_attention="full", chunk_size=6)
    with pytest.raises(PolicyError, match="full"):
        tiny_config(horizons=(2, 6), chunk_size=6)  # causal attention: every horizon would agree
    with pytest.raises(PolicyError, match="dynamic_ratio"):
        tiny_config(dynamic_ratio=1.2)
    with pytest.raises(PolicyError, match="action_attention"):
        tiny_config(action_attention="sideways")
    assert moh_settings("mode", "2-6:2") == {"horizons": (2, 4, 6), "action_attention": "full", "chunk_size": 6}
    assert moh_settings("mode")["horizons"] == DEFAULT_HORIZONS


def test_training_step_and_inspectable_outputs():
    policy = moh_policy()
    batch = make_batch(policy.config, 3)
    batch["action_is_pad"][0, 4:] = True
    loss, info = policy(batch)
    loss.backward()
    assert torch.isfinite(loss)
    assert {"fused_loss", "horizon_loss", "horizon_balance", "balance_loss"} <= set(info)
    assert policy.moh.gate.weight.grad is not None and policy.moh.gate.weight.grad.abs().sum() > 0
    policy.eval()
    chunk = policy.predict_chunk(make_batch(policy.config, 2, with_action=False))
    assert chunk.shape == (2, 6, 4)
    trace = policy.last_horizons
    assert len(trace.weights) == policy.config.num_sampling_steps
    assert trace.per_horizon[0].shape == (2, 3, 6, 4) and trace.disagreement.shape == (2, 6)
    torch.testing.assert_close(trace.weights[-1].sum(1), torch.ones(2, 6))


def test_one_horizon_reproduces_the_unwrapped_policy():
    for attention in ("full", "causal"):
        plain = MoDEPolicy(tiny_config(action_attention=attention), stats_for(tiny_config()))
        wrapped = moh_policy(horizons=(6,), action_attention=attention)
        missing = wrapped.load_state_dict(plain.state_dict(), strict=False)
        assert sorted(missing.missing_keys) == [
            "moh.gate.bias",
            "moh.gate.weight",
            "moh.gate_noise.bias",
            "moh.gate_noise.weight",
        ]
        plain.eval(), wrapped.eval()
        obs = make_batch(plain.config, 2, with_action=False)
        noise = torch.randn(2, 6, 4, generator=torch.Generator().manual_seed(1))
        torch.testing.assert_close(wrapped.predict_chunk(obs, noise=noise), plain.predict_chunk(obs, noise=noise))
        batch = make_batch(plain.config, 2)
        torch.manual_seed(5)
        _, ref = plain(batch)
        torch.manual_seed(5)
        _, got = wrapped(batch)
        assert got["fused_loss"] == pytest.approx(ref["diffusion_loss"], rel=1e-5)
        assert got["horizon_loss"] == pytest.approx(ref["diffusion_loss"], rel=1e-5)


def test_full_attention_changes_the_plain_denoiser_but_causal_keeps_it():
    causal = MoDEPolicy(tiny_config(n_layers=1), stats_for(tiny_config())).eval()
    full = MoDEPolicy(tiny_config(n_layers=1, action_attention="full"), stats_for(tiny_config())).eval()
    full.load_state_dict(causal.state_dict())
    x, ctx = torch.randn(1, 6, 4), torch.randn(1, 3, 64)
    nc = torch.zeros(1)
    a, b = causal.transformer(x, nc, ctx)[0], full.transformer(x, nc, ctx, attn_mask=full._plain_mask())[0]
    torch.testing.assert_close(a[:, -1], b[:, -1], atol=1e-5, rtol=1e-5)  # one layer: the last token sees the same
    assert not torch.allclose(a[:, 0], b[:, 0], atol=1e-4), "with full attention step 0 sees later steps"


def test_a_horizon_segment_is_isolated_inside_the_mode_denoiser():
    policy = moh_policy().eval()
    lay = policy.moh.layout
    ctx = policy.encode_observations(make_batch(policy.config, 1, with_action=False))
    seq = torch.randn(1, lay.n_action_tokens, 4)
    nc = torch.full((1,), 0.3)

    def run(s):
        return lay.split(policy.transformer(s, nc, ctx, positions=lay.positions, attn_mask=lay.attention_mask())[0])

    base, poked = run(seq), seq.clone()
    poked[:, 2:6] = torch.randn(1, 4, 4) * 5  # the horizon-4 segment
    moved = run(poked)
    torch.testing.assert_close(moved[:, 0], base[:, 0])
    torch.testing.assert_close(moved[:, 2], base[:, 2])
    assert not torch.allclose(moved[:, 1], base[:, 1])


def test_expert_caching_works_with_horizons():
    policy = moh_policy().eval()
    sharpen_routers(policy)
    obs = make_batch(policy.config, 2, with_action=False)
    noise = torch.randn(2, 6, 4, generator=torch.Generator().manual_seed(2))
    ref = policy.predict_chunk(obs, noise=noise)
    policy.cache_experts()
    torch.testing.assert_close(policy.predict_chunk(obs, noise=noise), ref, atol=1e-5, rtol=1e-5)
    assert policy.cache_builds == 1


def test_dynamic_inference_through_predict_plan_select_action_and_the_planner():
    policy = moh_policy(horizons=(2, 4, 6, 8, 10, 12), dynamic_min_steps=2, dynamic_stop_cover=1).eval()
    obs = make_batch(policy.config, 3, with_action=False)
    assert not policy.decides_horizon
    chunk, n = policy.predict_plan(obs)
    assert n.tolist() == [policy.config.n_action_steps] * 3
    policy.set_dynamic_horizon(1.3)
    assert policy.decides_horizon
    chunk, n = policy.predict_plan(obs)
    expected = dynamic_horizon(policy.last_horizons.disagreement, policy.moh.layout.cover_count, 1.3, 5, 2, 1)
    assert n.tolist() == expected.tolist() and chunk.shape == (3, 12, 4)
    assert ((n >= 2) & (n <= 10)).all(), "never into steps covered by a single horizon"
    assert torch.equal(policy.last_horizons.n_exec, n)
    # the deploy loop: one plan queues the fewest steps any row chose
    policy.reset()
    state = {"observation.images.front": obs["observation.images.front"][:, 0], "task": ""}
    state["observation.state"] = obs["observation.state"][:, 0]
    policy.select_action(state)
    queued = len(policy._action_queue) + 1
    assert queued == int(policy.last_horizons.n_exec.min())
    # the eval planner passes the ratio through and lets the policy decide
    plain = moh_policy(horizons=(2, 4, 6, 8, 10, 12), dynamic_min_steps=2, dynamic_stop_cover=1)
    planner = PolicyPlanner(plain, replan_steps=3)
    assert not planner.decides_horizon and planner.describe()["replan_steps"] == 3
    planner = PolicyPlanner(plain, replan_steps=3, dynamic_horizon=1.3)
    rows = {
        "observation.images.front": np.zeros((2, 1, 32, 32, 3), np.uint8),
        "observation.state": np.zeros((2, 1, 5), np.float32),
        "task": ["", ""],
    }
    plan = planner.plan(rows)
    assert plan.n_exec.tolist() == plain.last_horizons.n_exec.tolist()
    assert planner.describe()["replan_steps"] == "policy-decided" and planner.describe()["dynamic_horizon"] == 1.3
    with pytest.raises(PolicyError, match="mixture-of-horizons"):
        PolicyPlanner(MoDEPolicy(tiny_config()), dynamic_horizon=1.2)


def test_checkpoint_round_trip_keeps_the_gate(tmp_path):
    policy = moh_policy().eval()
    with torch.no_grad():
        policy.moh.gate.weight.normal_()
    policy.save_pretrained(tmp_path / "ckpt")
    loaded = Policy.from_pretrained(tmp_path / "ckpt").eval()
    assert loaded.config == policy.config and loaded.config.horizons == HORIZONS
    obs = make_batch(policy.config, 1, with_action=False)
    noise = torch.randn(1, 6, 4)
    torch.testing.assert_close(loaded.predict_chunk(obs, noise=noise), policy.predict_chunk(obs, noise=noise))


def test_cli_switches_exist():
    from typer.testing import CliRunner

    from vla.cli import app

    runner = CliRunner()
    train_help = runner.invoke(app, ["train", "--help"], terminal_width=200).output
    eval_help = runner.invoke(app, ["eval", "libero", "--help"], terminal_width=200).output
    assert "--moh" in train_help and "--horizons" in train_help
    assert "--dynamic-horizon" in eval_help


def test_moh_cpu_preset_is_the_cpu_model_with_three_horizons():
    """`moh_cpu` is the cpu preset plus a mixture of horizons 5/10/15: nothing else of the model changes, so a
    comparison against the cpu preset isolates the mixture."""
    moh = MoDEConfig.from_preset("moh_cpu", state_dim=8, action_dim=7, camera_keys=())
    cpu = MoDEConfig.from_preset("cpu", state_dim=8, action_dim=7, camera_keys=())
    assert moh.horizons == (5, 10, 15) and moh.chunk_size == 15 and moh.action_attention == "full"
    assert moh == cpu.replace(**MoDEConfig.moh_overrides((5, 10, 15)), dynamic_stop_cover=0)


def test_moh_cpu_dynamic_inference_can_run_past_the_first_five_steps():
    """With three horizons the default stop cover (5) would stop every plan at dynamic_min_steps; the
    preset's 0 lets agreeing horizons run the chunk to its end."""
    from vla.policies.modules.horizons import dynamic_horizon

    moh = MoDEConfig.from_preset("moh_cpu", state_dim=8, action_dim=7, camera_keys=())
    cover = torch.tensor([3] * 5 + [2] * 5 + [1] * 5)
    agree = torch.tensor([[1.0] * 5 + [0.5] * 5 + [0.0] * 5])  # later steps agree more than the first five
    n = dynamic_horizon(agree, cover, 1.3, moh.dynamic_window, moh.dynamic_min_steps, moh.dynamic_stop_cover)
    assert int(n) == 15
    n_default = dynamic_horizon(agree, cover, 1.3, moh.dynamic_window, moh.dynamic_min_steps, 5)
    assert int(n_default) == 5
    policy = MoDEPolicy(moh, stats_for(moh))
    loss, _ = policy(make_batch(moh, 2))
    assert torch.isfinite(loss)
