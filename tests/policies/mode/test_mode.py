"""MoDE policy: presets, shapes, attention structure, checkpoints, action queue, data contract, overfitting."""

from __future__ import annotations

import json

import pytest
import torch

from tests.policies.mode.helpers import (
    CAM_A,
    CAM_B,
    make_batch,
    make_policy,
    stats_for,
    tiny_config,
)
from vla.policies import PolicyError, available_policies, get_policy
from vla.policies import make_policy as registry_make_policy
from vla.policies.mode import MoDEConfig, MoDEPolicy
from vla.policies.modules.conditioning import camera_frames
from vla.policies.modules.moe import MoELayer, SwiGLU
from vla.policies.policy import Policy
from vla.policies.pretrained import NORMALIZATION_FILE

# --- config and presets ------------------------------------------------------------------------------


def test_paper_preset_defaults_and_parameter_counts():
    cfg = MoDEConfig.from_preset("paper", camera_keys=(CAM_A, CAM_B), state_dim=None)
    assert (cfg.width, cfg.n_heads, cfg.n_layers, cfg.n_experts, cfg.top_k) == (1024, 8, 12, 4, 2)
    assert (cfg.ffn_mult, cfg.router_hidden_mult, cfg.balance_weight, cfg.chunk_size) == (4, 2, 0.01, 10)
    assert (cfg.attn_dropout, cfg.goal_dropout, cfg.sigma_data, cfg.sigma_min, cfg.sigma_max) == (
        0.3,
        0.1,
        0.5,
        0.001,
        80.0,
    )
    assert cfg.num_sampling_steps == 10 and cfg.use_moe
    with torch.device("meta"):  # no memory, no compute: just the structure
        policy = MoDEPolicy(cfg)
    expert = policy.transformer.blocks[0].ffn.experts[0]
    assert expert.w_in.weight.shape == (2 * 4096, 1024) and expert.w_out.weight.shape == (1024, 4096)
    router = policy.transformer.blocks[0].ffn.router.mlp
    assert (router[0].in_features, router[0].out_features, router[2].out_features) == (1024, 2048, 4)
    assert expert.w_in.bias is not None and expert.w_out.bias is None  # the authors' experts: input bias only
    counts = policy.parameter_counts()
    per_expert = 1024 * 8192 + 8192 + 4096 * 1024
    assert counts["experts"] == 12 * 4 * per_expert
    assert 0.6e9 < counts["total"] < 0.75e9  # ~0.6-0.7B like the paper / authors' code
    assert 0.3e9 < counts["active"] < 0.45e9  # about half active
    assert counts["active"] - counts["active_cached"] == counts["routers"]


def test_cpu_preset_and_dense_switch():
    cfg = MoDEConfig.from_preset("cpu", state_dim=8)
    assert cfg.width <= 256 and cfg.n_layers == 4 and (cfg.n_experts, cfg.top_k) == (4, 2)
    moe = MoDEPolicy(cfg)
    dense = MoDEPolicy(cfg.replace(use_moe=False))
    assert all(isinstance(b.ffn, MoELayer) for b in moe.transformer.blocks)
    assert all(isinstance(b.ffn, SwiGLU) for b in dense.transformer.blocks)
    mc, dc = moe.parameter_counts(), dense.parameter_counts()
    assert dc["experts"] == 0 and dc["total"] == dc["active"]
    per_expert = sum(p.numel() for p in moe.transformer.blocks[0].ffn.experts[0].parameters())
    assert mc["total"] - dc["total"] == cfg.n_layers * (3 * per_expert) + mc["routers"]
    # the dense baseline trains and predicts through the same code, without balance loss
    dcfg = tiny_config(use_moe=False)
    policy = make_policy(dcfg)
    loss, info = policy(make_batch(dcfg))
    assert torch.isfinite(loss) and "balance_loss" not in info
    with pytest.raises(PolicyError, match="MoE"):
        policy.cache_experts()


def test_config_validation_and_serialisation():
    with pytest.raises(PolicyError, match="unknown mode preset"):
        MoDEConfig.from_preset("huge")
    with pytest.raises(PolicyError, match="unknown mode config fields"):
        MoDEConfig.from_preset("cpu", widht=3)
    with pytest.raises(PolicyError, match="divisible"):
        MoDEConfig.from_preset("cpu", width=100, n_heads=8)
    with pytest.raises(PolicyError, match="top_k"):
        MoDEConfig.from_preset("cpu", top_k=5)
    with pytest.raises(PolicyError, match="n_action_steps"):
        MoDEConfig.from_preset("cpu", n_action_steps=11)
    cfg = tiny_config(camera_keys=(CAM_A, CAM_B))
    again = MoDEConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg and isinstance(again.camera_keys, tuple) and isinstance(again.image_size, tuple)
    with pytest.raises(AttributeError):
        cfg.width = 3  # frozen


def test_registry():
    assert "mode" in available_policies()
    assert get_policy("mode") == (MoDEConfig, MoDEPolicy)
    policy = registry_make_policy("mode", "cpu", state_dim=3, camera_keys=())
    assert isinstance(policy, MoDEPolicy) and policy.config.state_dim == 3
    with pytest.raises(PolicyError, match="unknown policy"):
        get_policy("nope")


def test_check_features_names_every_mismatch():
    cfg = tiny_config(camera_keys=(CAM_A, CAM_B), state_dim=5, action_dim=4)
    ok = {CAM_A: (48, 64, 3), CAM_B: (3, 32, 32), "observation.state": (5,), "action": (4,)}
    cfg.check_features(ok)
    bad = {CAM_A: (48, 64, 3), "observation.state": (6,), "action": (4,)}
    with pytest.raises(PolicyError) as err:
        cfg.check_features(bad)
    msg = str(err.value)
    assert CAM_B in msg and "observation.state" in msg and "(6,)" in msg and "(5,)" in msg
    goal_cfg = tiny_config(goal_type="image")
    with pytest.raises(PolicyError, match="goal_image"):
        goal_cfg.check_features({CAM_A: (32, 32, 3), "observation.state": (5,), "action": (4,)})


# --- shapes and structure ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides",
    [
        {"camera_keys": (CAM_A,), "state_dim": None},
        {"camera_keys": (CAM_A, CAM_B), "state_dim": 5},
        {"camera_keys": (), "state_dim": 5},
        {"camera_keys": (CAM_A,), "state_dim": 5, "goal_type": "image"},
        {"camera_keys": (CAM_A, CAM_B), "state_dim": 5, "n_obs": 2},
    ],
    ids=["one_cam", "two_cams_state", "state_only", "goal_image", "history"],
)
def test_forward_and_predict_shapes(overrides):
    cfg = tiny_config(**overrides)
    policy = make_policy(cfg)
    batch = make_batch(cfg, batch_size=3)
    loss, info = policy(batch)
    assert loss.ndim == 0 and torch.isfinite(loss)
    assert {"loss", "diffusion_loss", "balance_loss"} <= set(info) and all(isinstance(v, float) for v in info.values())
    loss.backward()
    trained = [n for n, p in policy.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0]
    assert any(n.startswith("obs_encoder.goal") for n in trained)
    if cfg.camera_keys:
        assert any(n.startswith("obs_encoder.cameras") for n in trained)
    policy.eval()
    chunk = policy.predict_chunk(make_batch(cfg, batch_size=3, with_action=False))
    assert chunk.shape == (3, cfg.chunk_size, cfg.action_dim) and torch.isfinite(chunk).all()


def test_wrong_observation_shapes_fail_clearly():
    cfg = tiny_config()
    policy = make_policy(cfg)
    batch = make_batch(cfg)
    batch["observation.state"] = batch["observation.state"][..., :3]
    with pytest.raises(PolicyError, match=r"observation\.state"):
        policy(batch)
    batch = make_batch(cfg)
    batch[CAM_A] = batch[CAM_A][:, 0]  # missing the n_obs dimension
    with pytest.raises(PolicyError, match=CAM_A):
        policy(batch)


def test_attention_is_causal_and_noise_conditioned():
    cfg = tiny_config()
    policy = make_policy(cfg).eval()
    net = policy.transformer
    n_ctx = 1 + cfg.n_obs_tokens
    context = torch.randn(2, n_ctx, cfg.width)
    x = torch.randn(2, cfg.chunk_size, cfg.action_dim)
    c = torch.full((2,), 0.1)
    out, routings = net(x, c, context)
    j = 3
    x2 = x.clone()
    x2[:, j] += 1.0
    out2, _ = net(x2, c, context)
    torch.testing.assert_close(out[:, :j], out2[:, :j])  # earlier action tokens cannot see later ones
    assert not torch.allclose(out[:, j:], out2[:, j:])
    ctx2 = context.clone()
    ctx2[:, 0] += 1.0  # the goal token comes before every action token
    assert not torch.allclose(net(x, c, ctx2)[0][:, 0], out[:, 0])
    # the noise level changes every output, and routing depends on nothing else
    assert not torch.allclose(net(x, torch.full((2,), -0.5), context)[0], out)
    _, routings2 = net(torch.randn_like(x), c, torch.randn_like(context))
    for r1, r2 in zip(routings, routings2, strict=True):
        assert torch.equal(r1.indices, r2.indices) and torch.equal(r1.weights, r2.weights)


def test_goal_dropout_replaces_the_goal():
    cfg = tiny_config()
    policy = make_policy(cfg)
    batch = make_batch(cfg)
    enc = policy.obs_encoder
    images = camera_frames(batch, cfg.camera_keys, cfg.n_obs, cfg.image_size)
    state = batch["observation.state"]
    g1, g2 = torch.randn(2, cfg.language_dim), torch.randn(2, cfg.language_dim)
    drop = torch.zeros(2, dtype=torch.bool)
    ctx1, _ = enc(images, g1, state, drop)
    ctx2, _ = enc(images, g2, state, drop)
    torch.testing.assert_close(ctx1, ctx2)
    ctx3, _ = enc(images, g2, state, ~drop)
    assert not torch.allclose(ctx1, ctx3)


# --- checkpoints and the action queue ----------------------------------------------------------------------


def test_save_load_round_trip_gives_identical_outputs(tmp_path):
    cfg = tiny_config(camera_keys=(CAM_A, CAM_B))
    policy = make_policy(cfg)
    policy.train()
    for _ in range(2):  # move the weights away from init
        loss, _ = policy(make_batch(cfg))
        loss.backward()
        with torch.no_grad():
            for p in policy.parameters():
                if p.grad is not None:
                    p -= 0.01 * p.grad
    policy.eval()
    batch = make_batch(cfg, with_action=False)
    noise = torch.randn(2, cfg.chunk_size, cfg.action_dim)
    before = policy.predict_chunk(batch, noise=noise)
    path = policy.save_pretrained(tmp_path / "ckpt")
    # README.md: the model card the Hub layout writes
    assert {p.name for p in path.iterdir()} == {"config.json", "model.safetensors", NORMALIZATION_FILE, "README.md"}
    for loader in (MoDEPolicy.from_pretrained, Policy.from_pretrained):
        loaded = loader(path).eval()
        assert isinstance(loaded, MoDEPolicy) and loaded.config == cfg
        torch.testing.assert_close(loaded.predict_chunk(batch, noise=noise), before, rtol=0, atol=0)
    # normalisation travels with the checkpoint: raw units out
    norm = json.loads((path / NORMALIZATION_FILE).read_text())
    assert norm["action"]["mode"] == "min_max"


def test_from_pretrained_rejects_non_checkpoints(tmp_path):
    with pytest.raises(PolicyError, match="not a policy checkpoint"):
        MoDEPolicy.from_pretrained(tmp_path)


def test_select_action_queue_and_reset():
    cfg = tiny_config(n_action_steps=3, n_obs=2)
    policy = make_policy(cfg).eval()
    calls = []
    real = policy.predict_chunk

    def spy(batch, **kw):
        calls.append(batch)
        return real(batch, **kw)

    policy.predict_chunk = spy  # type: ignore[method-assign]
    frame = make_batch(cfg, batch_size=2, with_action=False)
    obs = {CAM_A: frame[CAM_A][:, 0], "observation.state": frame["observation.state"][:, 0], "task": ""}
    actions = [policy.select_action(obs) for _ in range(7)]
    assert len(calls) == 3  # steps 0, 3, 6 plan; the others pop the queue
    assert all(a.shape == (2, cfg.action_dim) for a in actions)
    # the first plan saw the first frame repeated n_obs times (like padded training windows)
    assert calls[0][CAM_A].shape == (2, 2, 3, 40, 40) and torch.equal(calls[0][CAM_A][:, 0], calls[0][CAM_A][:, 1])
    # the queue holds the first n_action_steps of each chunk, in order
    torch.manual_seed(5)
    policy.reset()
    calls.clear()
    torch.manual_seed(5)
    expected = real(policy._with_history(obs))
    policy.reset()
    torch.manual_seed(5)
    got = torch.stack([policy.select_action(obs) for _ in range(3)], dim=1)
    torch.testing.assert_close(got, expected[:, :3])
    policy.reset()
    assert not policy._action_queue and not policy._obs_history
    policy.select_action(obs)
    assert len(calls) == 2  # a reset forces a new plan


# --- learning ---------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_cpu_preset_overfits_a_tiny_dataset():
    """The CPU preset learns a state -> action-chunk mapping from four demonstrations."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    n, s_dim, a_dim, horizon = 4, 4, 3, 10
    state = torch.rand(n, 1, s_dim, generator=g) * 2 - 1
    t = torch.linspace(0, 1, horizon)
    unit = torch.stack([torch.sin(3 * t[:, None] * (1 + state[i, 0, :a_dim]) + state[i, 0, a_dim]) for i in range(n)])
    action = 5 * unit + 2  # raw units: the policy's normaliser maps them to [-1, 1]
    stats = {
        "observation.state": {"mean": state.mean((0, 1)).tolist(), "std": state.std((0, 1)).tolist()},
        "action": {"min": [-3.0] * a_dim, "max": [7.0] * a_dim},
    }
    cfg = MoDEConfig.from_preset(
        "cpu", camera_keys=(), state_dim=s_dim, action_dim=a_dim, attn_dropout=0.0, goal_dropout=0.0
    )
    policy = MoDEPolicy(cfg, stats)
    steps, rep = 250, 4
    opt = torch.optim.AdamW(policy.parameters(), lr=3e-3, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps, pct_start=0.1)
    batch = {
        "observation.state": state.repeat(rep, 1, 1),
        "action": action.repeat(rep, 1, 1),
        "action_is_pad": torch.zeros(n * rep, horizon, dtype=torch.bool),
        "task": [""] * (n * rep),
    }
    losses = []
    for _ in range(steps):
        loss, info = policy(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        losses.append(info["diffusion_loss"])
    first, last = sum(losses[:20]) / 20, sum(losses[-20:]) / 20
    assert last < 0.2 * first, (first, last)
    policy.eval()
    pred = policy.predict_chunk({"observation.state": state}, generator=torch.Generator().manual_seed(1))
    err = (pred - action).abs()
    baseline = (action - action.mean(0)).abs().mean()  # best prediction that ignores the state
    assert err.mean() < 0.25 * baseline, (err.mean(), baseline)
    # raw units; the chunk spans about [-3, 7] (normalised: 3% mean, 8% 95th-percentile error is typical)
    assert err.mean() < 0.3 and err.flatten().quantile(0.95) < 0.75, (err.mean(), err.flatten().quantile(0.95))


def test_stats_helper_matches_config():
    cfg = tiny_config(state_dim=None, camera_keys=(CAM_A,))
    assert set(stats_for(cfg)) == {"action"}
    policy = MoDEPolicy(cfg, stats_for(cfg))
    raw = torch.tensor([[-2.0, 0.5, 3.0, 3.0]])
    torch.testing.assert_close(policy.normalize("action", raw), torch.tensor([[-1.0, 0.0, 1.0, 1.0]]))
