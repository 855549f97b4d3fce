"""The HiMoE policy: presets and parameter counts, the interface, padded slots, native layouts,
routing inspection, the Mixture-of-Horizons wrapper, the evaluation planner and the CLI switches."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from tests.policies.himoe.helpers import (
    CAM,
    EEF_SLOTS,
    JOINT_SLOTS,
    STATE_SLOTS,
    fixed_noise,
    make_batch,
    make_policy,
    make_slot_batch,
    native_frames,
    slot_config,
    tiny_config,
)
from vla.cli.train import moh_settings
from vla.datasets import slots as slotlib
from vla.policies import PolicyError, available_policies, get_policy
from vla.policies.embodiment import EmbodimentTable
from vla.policies.himoe import HiMoEConfig, HiMoEPolicy
from vla.policies.himoe.configuration_himoe import AUTHORS, PAPER_PATTERN
from vla.policies.modules.hier_moe import ActionSpaceMoE, DenseMLP, HBMoE
from vla.policies.policy import Policy
from vla.policies.pretrained import EMBODIMENTS_FILE
from vla.policies.routing import LayerRouting
from vla.policies.runtime import PolicyPlanner


def test_paper_preset_defaults_and_parameter_counts():
    cfg = HiMoEConfig.from_preset("paper", camera_keys=(CAM, "observation.images.wrist"), state_dim=24, action_dim=24)
    assert cfg == HiMoEConfig(camera_keys=cfg.camera_keys, state_dim=24, action_dim=24, **AUTHORS)
    assert cfg.dense_kind == "geglu" and cfg.moh_balance == "segments"
    assert cfg.layer_pattern == PAPER_PATTERN and cfg.n_layers == 18
    kinds = cfg.layer_kinds
    assert kinds[:2] == kinds[16:] == ("action_space",) * 2
    assert kinds[2:6] == kinds[12:16] == ("hb",) * 4 and kinds[6:12] == ("dense",) * 6
    assert (cfg.as_experts, cfg.as_hidden, cfg.as_top_k, cfg.hb_experts, cfg.hb_hidden, cfg.hb_top_k) == (
        3, 4096, 1, 32, 1024, 4,
    )  # fmt: skip
    assert (cfg.supcon_weight, cfg.supcon_temperature, cfg.balance_weight) == (0.002, 0.1, 0.001)
    assert (cfg.chunk_size, cfg.num_steps, cfg.time_sampler, cfg.dense_hidden) == (10, 10, "beta", 4096)
    with torch.device("meta"):  # no memory: count only
        policy = HiMoEPolicy(cfg)
    counts = policy.parameter_counts()
    blocks = policy.transformer.blocks
    assert [type(b.ffn) for b in blocks[:2]] == [ActionSpaceMoE] * 2 and isinstance(blocks[8].ffn, DenseMLP)
    assert isinstance(blocks[3].ffn, HBMoE) and blocks[3].ffn.shared is not None
    # experts: 4 AS layers x 3 x (3 * 1024 * 4096) + 8 HB layers x 32 x (3 * 1024 * 1024)
    assert counts["experts"] == 4 * 3 * 3 * 1024 * 4096 + 8 * 32 * 3 * 1024 * 1024
    assert 1.1e9 < counts["total"] < 1.3e9 and 0.35e9 < counts["active"] < 0.45e9
    assert counts["active"] == counts["total"] - counts["experts"] + (4 * 1 * 3 * 1024 * 4096 + 8 * 4 * 3 * 1024**2)


def test_cpu_preset_registry_and_validation():
    cfg = HiMoEConfig.from_preset("cpu")
    assert set("ahd") <= set(cfg.layer_pattern) and cfg.n_layers <= 4
    assert "himoe" in available_policies() and get_policy("himoe") == (HiMoEConfig, HiMoEPolicy)
    assert HiMoEConfig.from_dict(cfg.to_dict()) == cfg
    for bad, match in [
        ({"layer_pattern": "axd"}, "layer_pattern"),
        ({"hb_top_k": 40}, "hb_top_k"),
        ({"time_sampler": "logit"}, "time_sampler"),
        ({"as_router_input": "name"}, "as_router_input"),
        ({"horizons": (2, 4)}, "max"),
        ({"backbone": "clip"}, "backbone"),
    ]:
        with pytest.raises(PolicyError, match=match):
            tiny_config(**bad)


def test_hf_vlm_without_a_path_raises_a_clear_error():
    with pytest.raises(PolicyError, match=r"backbone_path.*local directory"):
        tiny_config(backbone="hf_vlm")


@pytest.mark.parametrize("overrides", [{}, {"state_dim": None}, {"camera_keys": ()}, {"time_sampler": "pi0_approx"}])
def test_forward_and_predict_shapes(overrides):
    policy = make_policy(tiny_config(**overrides))
    batch = make_batch(policy.config, 3)
    loss, info = policy(batch)
    loss.backward()
    assert torch.isfinite(loss) and {"flow_loss", "supcon_loss", "balance_loss", "loss"} <= set(info)
    router = policy.transformer.blocks[0].ffn.router.proj.weight
    assert router.grad is not None and router.grad.abs().sum() > 0
    policy.eval()
    assert policy.predict_chunk(make_batch(policy.config, 2, with_action=False)).shape == (2, 6, 4)


def test_save_load_round_trip_select_action_and_reset(tmp_path):
    policy = make_policy(slot_config()).eval()
    batch = make_slot_batch(policy.config, [0, 1], with_action=False)
    noise = fixed_noise(policy.config, 2)
    before = policy.predict_chunk(batch, noise=noise)
    policy.save_pretrained(tmp_path / "ckpt")
    loaded = Policy.from_pretrained(tmp_path / "ckpt").eval()
    assert isinstance(loaded, HiMoEPolicy) and loaded.config == policy.config
    assert torch.equal(loaded.predict_chunk(batch, noise=noise), before)
    assert loaded.embodiments == policy.embodiments and loaded.embodiments.names == ("eef_arm", "joint_arm")
    assert loaded.embodiments.layout("joint_arm").action_slots == JOINT_SLOTS


def test_the_embodiment_table_is_explicit_and_older_checkpoints_still_have_it(tmp_path):
    policy = make_policy(slot_config())
    table = policy.embodiments
    assert table is not None and table.slots["observation.state"] == STATE_SLOTS
    assert make_policy(tiny_config()).embodiments is None  # one robot: no table
    ckpt = policy.save_pretrained(tmp_path / "ckpt")
    assert json.loads((ckpt / EMBODIMENTS_FILE).read_text()) == table.to_json()
    (ckpt / EMBODIMENTS_FILE).unlink()  # written before the table had its own file
    assert Policy.from_pretrained(ckpt).embodiments == table
    renamed = EmbodimentTable(("arm_a", "arm_b"), table.slots)
    policy.set_normalization(policy.normalizer, renamed)  # an explicit table wins over the normaliser's names
    assert policy.embodiments == renamed
    assert Policy.from_pretrained(policy.save_pretrained(tmp_path / "again")).embodiments == renamed

    native = make_policy(tiny_config(n_action_steps=3)).eval()
    obs = {CAM: torch.randint(0, 256, (2, 3, 40, 40), dtype=torch.uint8), "observation.state": torch.randn(2, 5)}
    calls = []
    original = native.predict_chunk
    native.predict_chunk = lambda b, **kw: calls.append(1) or original(b, **kw)
    actions = [native.select_action({**obs, "task": ""}) for _ in range(4)]
    assert all(a.shape == (2, 4) for a in actions) and len(calls) == 2  # re-plans after 3 actions
    native.reset()
    native.select_action({**obs, "task": ""})
    assert len(calls) == 3


def test_loss_on_padded_slots_and_steps_is_exactly_zero():
    policy = make_policy(slot_config())
    batch = make_slot_batch(policy.config, [0, 1, 1])
    batch["action_is_pad"][1, 4:] = True
    real = batch["action_slot_mask"][:, None, :] & ~batch["action_is_pad"][:, :, None]
    captured = {}
    original = policy.transformer.action_out.forward

    def keep(h):
        out = original(h)
        out.retain_grad()
        captured["v"] = out
        return out

    policy.transformer.action_out.forward = keep
    torch.manual_seed(3)
    loss, _ = policy(batch)
    loss.backward()
    grad = captured["v"].grad
    assert torch.all(grad[~real] == 0) and grad[real].abs().sum() > 0
    # values at padded slots do not matter, bit for bit (padded chunk steps are excluded from the loss
    # above, but stay inputs: the sampler fills them with the episode's last action)
    unused = ~batch["action_slot_mask"][:, None, :].expand_as(real)
    changed = {**batch, "action": batch["action"].clone()}
    changed["action"][unused] = torch.randn(int(unused.sum())) * 100
    torch.manual_seed(3)
    loss_a = policy(batch)[0]
    torch.manual_seed(3)
    loss_b = policy(changed)[0]
    assert torch.equal(loss_a, loss_b)


def test_predictions_zero_padded_slots_and_come_back_in_native_layouts():
    policy = make_policy(slot_config()).eval()
    batch = make_slot_batch(policy.config, [0, 1, 0], with_action=False)
    del batch["action_slot_mask"], batch["state_slot_mask"]  # inference: the masks come from the normaliser
    chunk = policy.predict_chunk(batch, noise=fixed_noise(policy.config, 3))
    unused = ~policy.slot_mask("action", {}, batch["embodiment_id"], 24)
    assert torch.all(chunk[unused[:, None, :].expand_as(chunk)] == 0)
    native = policy.predict_native(batch, noise=fixed_noise(policy.config, 3))
    assert [a.shape for a in native] == [(6, 7), (6, 6), (6, 7)]
    for row, (arr, slots) in enumerate(zip(native, (EEF_SLOTS, JOINT_SLOTS, EEF_SLOTS), strict=True)):
        assert np.array_equal(slotlib.to_slots(arr, slots), chunk[row].numpy())  # native -> slots round trip
    # a robot's native state (not in slots) is placed into its slots by embodiment
    eef_only = make_slot_batch(policy.config, [0, 0], seed=5, with_action=False)
    native_state = eef_only["observation.state"][..., [8, 9, 10, 11]]
    as_slots = policy.predict_chunk(eef_only, noise=fixed_noise(policy.config, 2))
    as_native = policy.predict_chunk(
        {**eef_only, "observation.state": native_state}, noise=fixed_noise(policy.config, 2)
    )
    assert torch.allclose(as_slots, as_native, atol=1e-6)


def test_action_space_routing_depends_only_on_the_mask_and_is_inspectable():
    policy = make_policy(slot_config(as_experts=3)).eval()
    with torch.no_grad():
        for block in policy.transformer.blocks:
            if isinstance(block.ffn, ActionSpaceMoE):
                block.ffn.router.proj.weight.normal_(std=3.0)
    batch = make_slot_batch(policy.config, [0, 1, 0, 1])
    records = policy.inspect_routing(batch, torch.full((4,), 0.5))
    assert all(isinstance(r, LayerRouting) for r in records)
    kinds = [r.kind for r in records]
    assert kinds == ["action_space", "token", "action_space"]
    t = 1 + policy.config.chunk_size
    for r in records:
        n_exp = 3 if r.kind == "action_space" else policy.config.hb_experts
        assert r.weights.shape == (4, t, n_exp)
    choice = records[0].weights.argmax(-1)
    assert bool((choice == choice[:, :1]).all())  # one choice per sequence
    assert torch.equal(choice[0], choice[2]) and torch.equal(choice[1], choice[3])  # same mask, same expert
    levels, name = policy.routing_levels()
    assert name == "t" and levels.shape == (policy.config.num_steps,)


def test_one_horizon_wrapper_equals_the_plain_head_and_moh_trains():
    plain = make_policy(slot_config(), seed=0).eval()
    wrapped = make_policy(slot_config(horizons=(6,)), seed=0).eval()
    missing = wrapped.load_state_dict(plain.state_dict(), strict=False).missing_keys
    assert missing and all(k.startswith("moh.") for k in missing)
    batch = make_slot_batch(plain.config, [0, 1], with_action=False)
    noise = fixed_noise(plain.config, 2)
    assert torch.allclose(wrapped.predict_chunk(batch, noise=noise), plain.predict_chunk(batch, noise=noise), atol=1e-6)
    assert len(wrapped.last_horizons) == plain.config.num_steps  # fused at every Euler step

    cfg = slot_config(**HiMoEConfig.moh_overrides((2, 4, 6)))
    assert cfg.horizons == (2, 4, 6) and cfg.chunk_size == 6
    moh = make_policy(cfg).train()
    train_batch = make_slot_batch(cfg, [0, 1, 1])
    train_batch["action_is_pad"][0, 3:] = True
    loss, info = moh(train_batch)
    loss.backward()
    assert {"fused_loss", "horizon_loss", "horizon_balance", "supcon_loss", "balance_loss"} <= set(info)
    assert moh.moh.gate.weight.grad.abs().sum() > 0
    moh.eval()
    out = moh.predict_chunk(make_slot_batch(cfg, [1], with_action=False))
    assert out.shape == (1, 6, 24) and moh.last_horizons.per_horizon[0].shape == (1, 3, 6, 24)
    assert moh_settings("himoe", "2-6:2") == {"horizons": (2, 4, 6), "chunk_size": 6, "n_action_steps": 6}
    assert moh_settings("mode", "2-6:2")["action_attention"] == "full"  # MoDE's switch is unchanged


def test_works_behind_the_evaluation_planner():
    policy = make_policy(tiny_config())
    planner = PolicyPlanner(policy)
    plan = planner.plan(native_frames(policy.config, 3))
    assert plan.actions.shape == (3, 6, 4) and np.isfinite(plan.actions).all()
    assert plan.n_exec.tolist() == [6, 6, 6] and planner.describe()["type"] == "himoe"


def test_wrong_inputs_fail_clearly():
    policy = make_policy(tiny_config())
    batch = make_batch(policy.config, 2)
    with pytest.raises(PolicyError, match="action should be"):
        policy({**batch, "action": batch["action"][:, :3]})
    with pytest.raises(PolicyError, match="missing camera"):
        policy({k: v for k, v in batch.items() if k != CAM})
    with pytest.raises(PolicyError, match=r"observation\.state should be"):
        policy({**batch, "observation.state": batch["observation.state"][:, 0]})


def test_hf_vlm_backbone_plugs_in(tmp_path):
    from vla.testing.vlm import build_tiny_paligemma

    cfg = slot_config(backbone="hf_vlm", backbone_path=str(build_tiny_paligemma(tmp_path / "vlm")))
    policy = make_policy(cfg)
    assert policy.cond_proj.in_features == policy.backbone.out_dim
    batch = make_slot_batch(cfg, [0, 1])
    batch["task"] = ["pick up the red block", "open the drawer"]
    loss, _ = policy(batch)
    loss.backward()
    assert torch.isfinite(loss) and policy.cond_proj.weight.grad.abs().sum() > 0
    policy.eval()
    noise = fixed_noise(cfg, 2)
    chunk = policy.predict_chunk(batch, noise=noise)
    policy.save_pretrained(tmp_path / "ckpt")
    # the frozen VLM is not copied into the checkpoint: it is reloaded from backbone_path
    saved = load_file(str(tmp_path / "ckpt" / "model.safetensors"))
    assert not any(k.startswith("backbone.model.") for k in saved) and "cond_proj.weight" in saved
    assert torch.equal(Policy.from_pretrained(tmp_path / "ckpt").eval().predict_chunk(batch, noise=noise), chunk)
    tuned = make_policy(slot_config(backbone="hf_vlm", backbone_path=cfg.backbone_path, backbone_freeze=False))
    assert any(k.startswith("backbone.model.") for k in tuned.state_dict())  # fine-tuned weights are kept
    with pytest.raises(RuntimeError, match="Missing key"):  # other missing weights still fail loudly
        policy.load_state_dict({k: v for k, v in policy.state_dict().items() if k != "cond_proj.weight"})


def test_dynamic_inference_with_a_mixture_of_horizons():
    from vla.policies.modules.horizons import dynamic_horizon

    hs = (2, 4, 6, 8, 10, 12)
    cfg = tiny_config(**HiMoEConfig.moh_overrides(hs), dynamic_min_steps=2, dynamic_stop_cover=1)
    with pytest.raises(PolicyError, match="dynamic_ratio needs a mixture"):
        tiny_config(dynamic_ratio=1.2)
    policy = make_policy(cfg).eval()
    batch = make_batch(cfg, 3, with_action=False)
    chunk, n = policy.predict_plan(batch, noise=fixed_noise(cfg, 3))
    assert not policy.decides_horizon and n.tolist() == [cfg.n_action_steps] * 3
    policy.set_dynamic_horizon(1.3)
    assert policy.decides_horizon
    chunk, n = policy.predict_plan(batch, noise=fixed_noise(cfg, 3))
    assert len(policy.last_horizons) == cfg.num_steps  # the disagreement is summed over every Euler step
    summed = policy.last_horizons.disagreement
    assert n.tolist() == dynamic_horizon(summed, policy.moh.layout.cover_count, 1.3, 5, 2, 1).tolist()
    assert torch.equal(policy.last_horizons.n_exec, n)
    assert all(2 <= k <= 12 for k in n.tolist()) and chunk.shape == (3, 12, 4)
    plan = PolicyPlanner(make_policy(cfg), dynamic_horizon=1.3).plan(native_frames(cfg, 2))
    assert plan.actions.shape == (2, 12, 4) and all(2 <= k <= 12 for k in plan.n_exec.tolist())
    policy.reset()
    obs = {k: v[:1, 0] for k, v in make_batch(cfg, 1, with_action=False).items() if k in cfg.observation_keys}
    first = policy.select_action({**obs, "task": ""})
    assert first.shape == (1, 4) and len(policy._action_queue) >= 1
