"""Router-decoupled specialisation (`vla export`): the exported checkpoint holds fewer experts and acts
exactly as the full model (torch.equal) for the embodiment / sampling schedule it was exported for."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from tests.policies.himoe import helpers as himoe
from tests.policies.mode import helpers as mode
from vla.cli import app
from vla.errors import PolicyError
from vla.policies.himoe import HiMoEPolicy
from vla.policies.mode import MoDEPolicy
from vla.policies.mode.caching import step_routes
from vla.policies.modules.hier_moe import ActionSpaceMoE
from vla.policies.policy import Policy
from vla.policies.pretrained import CONFIG_FILE, DATA_SPEC_FILE, load_pretrained
from vla.policies.runtime import PolicyPlanner
from vla.policies.specialise import export_specialised

ROBOTS = ("eef_arm", "joint_arm")  # himoe.two_robot_normalizer's embodiments, ids 0 and 1


# --- builders -------------------------------------------------------------------------------------------


def two_robot_himoe() -> HiMoEPolicy:
    """A 24-slot HiMoE with 3 experts per AS-MoE layer and routers with real preferences, so the two robots
    select different experts (as after training with the contrastive routing loss)."""
    policy = himoe.make_policy(himoe.slot_config(as_experts=3)).eval()
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for block in policy.transformer.blocks:
            if isinstance(block.ffn, ActionSpaceMoE):
                block.ffn.router.proj.weight.copy_(torch.randn(block.ffn.router.proj.weight.shape, generator=g))
    return policy


def as_choice(policy: HiMoEPolicy, eid: int) -> list[int]:
    """The expert each AS-MoE layer of the full model gives a robot (top-1)."""
    cfg = policy.config
    batch = himoe.make_slot_batch(cfg, [eid], with_action=False)
    records = []
    enc = policy.encode(policy._to_device(batch))
    x = himoe.fixed_noise(cfg, 1)
    policy.velocity(enc, x, torch.full((1,), 0.5), records)
    return [int(r.routing.indices[0, 0, 0]) for r in records if r.kind == "action_space"]


def planned_mode(sharpness: float = 1.0) -> MoDEPolicy:
    cfg = mode.tiny_config(n_layers=3, num_sampling_steps=10)
    policy = mode.make_policy(cfg).eval()
    mode.sharpen_routers(policy, sharpness)  # the expert choice changes with the noise level, as in a trained model
    return policy


def assert_same_actions(planned: MoDEPolicy, full: MoDEPolicy, rows: int) -> None:
    """Bit for bit at batch 1 (the plan's gate weights are the router's at batch 1); at batch > 1 the full model's
    own router output can differ from its batch-1 output in the last float bit, so there a tight tolerance."""
    batch, noise = mode_inputs(full, rows)
    got, want = planned.predict_chunk(batch, noise=noise), full.predict_chunk(batch, noise=noise)
    if rows == 1:
        assert torch.equal(got, want)
    else:
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def mode_inputs(policy: MoDEPolicy, rows: int) -> tuple[dict, torch.Tensor]:
    cfg = policy.config
    batch = mode.make_batch(cfg, batch_size=rows, with_action=False)
    noise = torch.randn(rows, cfg.chunk_size, cfg.action_dim, generator=torch.Generator().manual_seed(0))
    return batch, noise


# --- HiMoE: one embodiment --------------------------------------------------------------------------------


@pytest.mark.parametrize("eid", [0, 1])
def test_himoe_specialised_acts_exactly_as_the_full_model_for_its_embodiment(eid):
    full = two_robot_himoe()
    assert as_choice(full, 0) != as_choice(full, 1)  # the robots do use different experts
    special = copy.deepcopy(full)
    spec = special.specialise(ROBOTS[eid])
    assert spec["experts_per_layer"] == [[e] for e in as_choice(full, eid)]
    assert spec["experts_kept"] == 2 and spec["experts_total"] == 6
    cfg = full.config
    for rows in (1, 3):
        batch = himoe.make_slot_batch(cfg, [eid] * rows, with_action=False)
        noise = himoe.fixed_noise(cfg, rows)
        assert torch.equal(special.predict_chunk(batch, noise=noise), full.predict_chunk(batch, noise=noise))
    # 2 of 3 experts gone in both AS-MoE layers: 4 experts of w_in (2*h x d) + w_out (d x h)
    per_expert = 3 * cfg.as_hidden * cfg.width
    assert full.num_parameters() - special.num_parameters() == 4 * per_expert
    assert special.parameter_counts()["experts"] == full.parameter_counts()["experts"] - 4 * per_expert


def test_himoe_specialised_refuses_another_embodiment_with_one_clear_error():
    special = two_robot_himoe()
    special.specialise("eef_arm")
    batch = himoe.make_slot_batch(special.config, [0, 1], with_action=False)
    with pytest.raises(PolicyError, match=r"exported for embodiment 'eef_arm' only.*'joint_arm'"):
        special.predict_chunk(batch, noise=himoe.fixed_noise(special.config, 2))


def test_himoe_export_loads_through_from_pretrained_and_the_planner(tmp_path):
    full = two_robot_himoe()
    full.save_pretrained(tmp_path / "full")
    (tmp_path / "full" / DATA_SPEC_FILE).write_text("{}")  # copied along: evaluation reads it
    summary = export_specialised(tmp_path / "full", tmp_path / "so", embodiment="joint_arm")
    assert summary.after["total"] < summary.before["total"]
    assert (tmp_path / "so" / DATA_SPEC_FILE).exists() and not (tmp_path / "so.partial").exists()
    saved = json.loads((tmp_path / "so" / CONFIG_FILE).read_text())
    assert saved["specialised_embodiment"] == "joint_arm" and len(saved["as_kept_experts"]) == 2

    loaded = Policy.from_pretrained(tmp_path / "so").eval()
    assert isinstance(loaded, HiMoEPolicy) and loaded.num_parameters() == summary.after["total"]
    held = [len(b.ffn.moe.experts) for b in loaded.transformer.blocks if isinstance(b.ffn, ActionSpaceMoE)]
    assert held == [1, 1]  # only the kept experts were built and loaded
    batch = himoe.make_slot_batch(full.config, [1, 1], with_action=False)
    noise = himoe.fixed_noise(full.config, 2)
    assert torch.equal(loaded.predict_chunk(batch, noise=noise), full.predict_chunk(batch, noise=noise))

    # the runtime of eval / deploy / serve: native observations in, native actions out, as the full model
    frames = himoe.native_frames(full.config, 2)
    frames["observation.state"] = frames["observation.state"][..., : len(himoe.STATE_SLOTS[1])]
    reference = PolicyPlanner.load(tmp_path / "full", embodiment="joint_arm")
    planner = PolicyPlanner.load(tmp_path / "so")  # no embodiment named: the one it was exported for
    torch.manual_seed(0)  # the same initial noise for both
    want = reference.plan(frames).actions
    torch.manual_seed(0)
    got = planner.plan(frames).actions
    assert got.shape == (2, full.config.chunk_size, len(himoe.JOINT_SLOTS)) and np.array_equal(got, want)
    assert planner.describe()["specialised"]["embodiment"] == "joint_arm"
    with pytest.raises(PolicyError, match=r"exported for embodiment 'joint_arm' only.*'eef_arm'"):
        PolicyPlanner.load(tmp_path / "so", embodiment="eef_arm")


def test_himoe_single_embodiment_exports_without_a_name(tmp_path):
    full = himoe.make_policy(himoe.tiny_config(as_experts=3)).eval()
    with pytest.raises(PolicyError, match="trained on one robot"):
        copy.deepcopy(full).specialise("so101")
    special = copy.deepcopy(full)
    assert special.specialise()["experts_kept"] == 2
    batch, noise = himoe.make_batch(full.config, 2, with_action=False), himoe.fixed_noise(full.config, 2)
    assert torch.equal(special.predict_chunk(batch, noise=noise), full.predict_chunk(batch, noise=noise))


def test_a_dropped_expert_chosen_anyway_is_an_error_not_a_silent_difference():
    """Rows whose slot mask differs from the exported embodiment's (a hand-made batch) pick dropped experts."""
    special = two_robot_himoe()
    assert as_choice(special, 0) != as_choice(special, 1)  # top-1: joint_arm needs an expert eef_arm does not
    special.specialise("eef_arm")
    batch = himoe.make_slot_batch(special.config, [1], with_action=False)
    batch["embodiment_id"] = torch.tensor([0])  # claims eef_arm, carries joint_arm's mask
    with pytest.raises(PolicyError, match="dropped"):
        special.predict_chunk(batch, noise=himoe.fixed_noise(special.config, 1))


# --- MoDE: the per-step expert plan ------------------------------------------------------------------------


def test_mode_plan_acts_exactly_as_the_full_model_and_runs_no_router():
    full = planned_mode()
    planned = copy.deepcopy(full)
    spec = planned.specialise(expert_plan=True)
    cfg = planned.config
    assert spec["steps"] == 10 and len(cfg.expert_plan) == 10 and len(cfg.expert_plan_gates[0]) == 3
    assert all(b.ffn.router is None for b in planned.transformer.blocks)
    for rows in (1, 3):
        assert_same_actions(planned, full, rows)
    # the plan is what the routers choose: the expert cache reads the same routes either way
    assert planned.plan_routes(10) == full.cache_experts().routes
    assert full.parameter_counts()["total"] - planned.parameter_counts()["total"] == full.parameter_counts()["routers"]


def test_mode_plan_drops_experts_no_step_uses():
    full = planned_mode(sharpness=0.2)  # no gate weight underflows to 0 (a tie top-k could break either way)
    with torch.no_grad():  # expert 3 of every layer never wins: the plan needs only three experts per layer
        for block in full.transformer.blocks:
            block.ffn.router.mlp[-1].weight[3] = 0.0
            block.ffn.router.mlp[-1].bias[3] = -1e30
    planned = copy.deepcopy(full)
    spec = planned.specialise(expert_plan=True)
    assert all(3 not in kept for kept in spec["experts_per_layer"])
    assert spec["experts_kept"] < spec["experts_total"]
    assert planned.parameter_counts()["experts"] < full.parameter_counts()["experts"]
    for rows in (1, 2):
        assert_same_actions(planned, full, rows)


def test_mode_plan_refuses_another_schedule_and_training():
    planned = planned_mode()
    planned.specialise(expert_plan=True)
    batch, noise = mode_inputs(planned, 1)
    with pytest.raises(PolicyError, match=r"exported for 10 sampling steps.*asked for 4 steps"):
        planned.predict_chunk(batch, num_steps=4, noise=noise)
    with pytest.raises(PolicyError, match="inference only"):
        planned.train()(mode.make_batch(planned.config, 2))


def test_mode_plan_export_loads_through_from_pretrained_the_planner_and_the_cache(tmp_path):
    full = planned_mode()
    full.save_pretrained(tmp_path / "full")
    summary = export_specialised(tmp_path / "full", tmp_path / "plan", expert_plan=True)
    assert summary.specialisation["kind"] == "expert_plan" and summary.after["routers"] == 0
    loaded = load_pretrained(tmp_path / "plan").eval()
    assert isinstance(loaded, MoDEPolicy)
    # config.json holds the routers' choices and gate weights exactly (floats survive the JSON round trip)
    assert loaded.plan_routes(10) == step_routes(full.transformer, full.edm, 10)
    for rows in (1, 2):
        assert_same_actions(loaded, full, rows)
    # the fused expert cache is built from the plan (no router left to ask) and matches the full model's cache
    batch, noise = mode_inputs(full, 1)
    loaded.cache_experts()
    full.cache_experts()
    torch.testing.assert_close(loaded.predict_chunk(batch, noise=noise), full.predict_chunk(batch, noise=noise))

    frames = himoe.native_frames(full.config, 1)
    reference, planner = PolicyPlanner.load(tmp_path / "full"), PolicyPlanner.load(tmp_path / "plan")
    torch.manual_seed(0)  # the same initial noise for both
    want = reference.plan(frames).actions
    torch.manual_seed(0)
    assert np.array_equal(planner.plan(frames).actions, want)
    assert planner.describe()["specialised"]["steps"] == 10


# --- the command --------------------------------------------------------------------------------------------


def test_vla_export_command_and_its_errors(tmp_path):
    runner = CliRunner()
    planned_mode().save_pretrained(tmp_path / "mode")
    ok = runner.invoke(app, ["export", str(tmp_path / "mode"), "--expert-plan", "--out", str(tmp_path / "p")])
    assert ok.exit_code == 0, ok.output
    assert "routers parameters" in ok.output and "10-step plan" in ok.output
    again = runner.invoke(app, ["export", str(tmp_path / "mode"), "--expert-plan", "--out", str(tmp_path / "p")])
    assert again.exit_code != 0 and "already exists" in str(again.exception)
    for args, message in (
        ([], "--expert-plan"),
        (["--embodiment", "so101"], "noise level"),
    ):
        bad = runner.invoke(app, ["export", str(tmp_path / "mode"), *args, "--out", str(tmp_path / "q")])
        assert isinstance(bad.exception, PolicyError) and message in str(bad.exception)
    two_robot_himoe().save_pretrained(tmp_path / "himoe")
    for args, message in (([], "eef_arm, joint_arm"), (["--embodiment", "koch"], "'koch'")):
        bad = runner.invoke(app, ["export", str(tmp_path / "himoe"), *args, "--out", str(tmp_path / "q")])
        assert isinstance(bad.exception, PolicyError) and message in str(bad.exception)
    assert not (tmp_path / "q").exists()
